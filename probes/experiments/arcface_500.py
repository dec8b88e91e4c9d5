"""Experiment 3.3: ArcFace 500-class linear probe (priority 2).

Purpose: ArcFace embeddings cluster by person, not by name, but the plan asks whether residual
name signal survives when the classifier scales to every name. Runs on the `all` task only
(the plan's 500 names).
Expected (plan): about 12% top-1 on 30 names in Phase 1-3 (more balanced predictions than
CLIP); on 500 names the targets are > 4% top-1 (chance 0.2%) and prediction CV < 0.35.
Command: probes track3 --store S --out results/ --only arcface_500
  (by hand: probes linear --store S --model arcface-r50 --names all --out results/
  --experiment arcface_500_all)
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="arcface_500", family="linear", models=("arcface-r50",), view="embedding", names=("all",),
    group="plan", plan_ref="3.3",
    how_to_add="facestore build --data DATA --store S --model arcface-r50 (needs insightface's buffalo_l pack; "
               "non-commercial licence), or facestore import S --model arcface-r50 --embeddings E.npy --ids IDS",
    doc=__doc__,
)
