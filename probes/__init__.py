"""probes: linear, SupCon, zero-shot, ensemble and kNN probes on embeddings stored by facestore.

In a notebook::

    from probes import LinearSweep, load_xy, evaluate, make_split
    split = make_split(store, by="identity", seed=0)
    train = load_xy(store, "dinov2-base", split=split, subset="train")
    ...
    probes.controls.covariate_controls(factory, X=X, names=names, covariate=gender, subset=subset, groups=groups)

Names are imported lazily so that ``import probes`` (and ``probes --help``) stays instant.
"""

from __future__ import annotations

__all__ = [
    "KNNProbe",
    "LinearProbe",
    "LinearSweep",
    "SupConLoss",
    "evaluate",
    "evaluate_model",
    "finish_experiment",
    "load_xy",
    "make_split",
    "compare_results",
    "controls",
]

_LAZY = {
    "LinearProbe": ("probes.linear", "LinearProbe"),
    "LinearSweep": ("probes.linear", "LinearSweep"),
    "load_xy": ("probes.data", "load_xy"),
    "make_split": ("probes.splits", "make_split"),
    # ``evaluate(scores, y_true, names=..., groups=..., train_labels=...)``: every metric, nothing written.
    "evaluate": ("probes.evaluation", "run_evaluation"),
    "finish_experiment": ("probes.evaluation", "finish_experiment"),
    "evaluate_model": ("probes.metrics", "evaluate_model"),
    "compare_results": ("probes.compare", "compare_results"),
    "SupConLoss": ("probes.supcon", "SupConLoss"),
    "KNNProbe": ("probes.knn", "KNNProbe"),
    # The covariate controls as a module (``probes.controls.covariate_controls(factory, X=..., ...)``).
    "controls": ("probes.controls", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
