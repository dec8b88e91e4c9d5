"""Experiment 3.4: SupCon-trained ResNet-50 encoder, then a linear probe (priority 4).

Purpose: the plan's recipe: a timm ResNet-50 + projector trained with the supervised
contrastive loss on the train split's images, so that same-name faces are pulled together;
the encoder's pooled features are then probed like any other model.
Expected (plan): no number given; it must beat the ImageNet ResNet-50 starting point and the
CLIP baseline (13.9% / ~3% top-1) to be worth the GPU hours. Train it on the same split the
probe uses, or test identities leak into the encoder.
Command: probes supcon --store S --train-encoder --checkpoint ckpt/ (GPU job), then
  facestore build --data DATA --store S --model supcon-resnet50 --weights ckpt/, then
  probes track3 --store S --out results/ --only supcon
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="supcon", family="linear", models=("supcon-resnet50",), view="embedding", group="plan", plan_ref="3.4",
    how_to_add="probes supcon --store S --train-encoder --checkpoint CKPT, then "
               "facestore build --data DATA --store S --model supcon-resnet50 --weights CKPT",
    doc=__doc__,
)
