"""The notebook-facing top-level API: the names the issues promise import and are the right things."""

from __future__ import annotations

import numpy as np


def test_probes_top_level_names():
    import probes.evaluation  # noqa: F401  (a loaded submodule must not shadow the function)
    from probes import KNNProbe, LinearProbe, LinearSweep, SupConLoss, evaluate, load_xy, make_split

    assert callable(evaluate) and evaluate.__name__ == "run_evaluation"
    assert LinearProbe.__module__ == "probes.linear" and LinearSweep.__module__ == "probes.linear"
    assert load_xy.__module__ == "probes.data" and make_split.__module__ == "probes.splits"
    assert KNNProbe.__module__ == "probes.knn" and SupConLoss.__module__ == "probes.supcon"
    y = np.array([0, 1, 1, 0])
    out = evaluate(np.eye(2)[y], y, names=["a", "b"], train_labels=y, n_boot=50)
    assert out["metrics"]["balanced_accuracy"] == 1.0


def test_facestore_top_level_names(tmp_path):
    import facestore

    s = facestore.create_store(tmp_path / "s.zarr")
    assert facestore.open_store(s.path).n == 0 and facestore.__version__
