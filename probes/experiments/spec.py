"""The frozen record every Track 3 experiment is declared with.

An :class:`Experiment` is data: which probe family runs on which stored models, with which
overrides of the family's config. :mod:`probes.track3` turns it into the family's own config
(``LinearConfig``, ``KNNConfig``, ``EnsembleConfig``, ``SupConConfig``, ``ZeroShotConfig``) and
calls the family's ``run_*`` function, which writes the plan's result folder. The docstring of
the module that declares an experiment (its ``doc``) says its purpose, the plan's expected result
and the command that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("linear", "knn", "ensemble", "supcon", "zeroshot")
GROUPS = ("plan", "variant", "sanity")


@dataclass(frozen=True)
class Experiment:
    """One Track 3 experiment.

    ``name`` is the folder stem: results go to ``track3_{name}_{task}`` (one folder per name
    task, ``-seed{k}`` appended with several seeds). ``models`` are store model groups; an
    experiment whose models are missing from the store is skipped with ``how_to_add`` as the
    remedy. Ensembles run when at least ``min_models`` of their models are present (0: all).
    ``names`` fixes the name tasks (``None``: the tasks given to ``probes track3 --names``).
    ``options`` override fields of the family's config (for ``supcon``, fields of the head's
    ``SupConHeadConfig`` too). ``template_set`` is the stored text-embedding set a zero-shot
    experiment needs.
    """

    name: str
    family: str
    models: tuple[str, ...]
    group: str
    plan_ref: str = ""
    view: str | None = None
    names: tuple[str, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    min_models: int = 0
    template_set: str | None = None
    how_to_add: str = ""
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"experiment {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        if self.group not in GROUPS:
            raise ValueError(f"experiment {self.name!r}: group {self.group!r} is not one of {GROUPS}")
        if not self.models:
            raise ValueError(f"experiment {self.name!r} names no model")
        if self.family == "ensemble" and len(self.models) < 2:
            raise ValueError(f"ensemble experiment {self.name!r} needs at least two models, got {self.models}")
        if self.family != "ensemble" and len(self.models) != 1:
            raise ValueError(f"{self.family} experiment {self.name!r} takes exactly one model, got {self.models}")
        if self.family == "zeroshot" and not self.template_set:
            raise ValueError(f"zero-shot experiment {self.name!r} needs a template_set")
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"experiment name {self.name!r} must be letters, digits and underscores")

    @property
    def summary(self) -> str:
        """The first line of the declaring module's docstring."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else self.name

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)
