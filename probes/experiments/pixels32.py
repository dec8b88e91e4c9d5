"""Sanity check: linear probe on the weight-free pixels-32 baseline (the chip at 32x32 RGB).

Purpose: how much name signal plain colour and layout carry (skin tone, hair colour,
background, image statistics). Any encoder that does not beat it has learned nothing about
faces that matters for names; a high score here points at demographics or capture
conditions, the first suspects for any signal (Kramer and Jones 2015).
Expected: above chance on real faces is plausible (demographics); clearly below the encoders.
Command: facestore build --data DATA --store S --model pixels-32, then
  probes track3 --store S --out results/ --only pixels32
"""

from probes.experiments.spec import Experiment

CONFIG = Experiment(
    name="pixels32", family="linear", models=("pixels-32",), view="pixels", group="sanity",
    how_to_add="facestore build --data DATA --store S --model pixels-32 (no weights, runs anywhere)",
    doc=__doc__,
)
