"""Pure metric functions shared by every probe family.

Labels are integer indices into the task's name list (``names``); ``n_classes`` is the number
of names in the task, so that names never predicted still count (the plan's prediction CV is
over ALL names). Every function is pure: arrays in, plain Python numbers or dicts out.

Balanced accuracy is the headline number: its chance level is exactly ``1 / C`` whatever the
name frequencies, while top-1 accuracy near chance mostly measures how a probe handles name
frequency. Top-1 is always reported beside its majority and prior-matched baselines.
"""

from __future__ import annotations

import math

import numpy as np

from probes.errors import NotEnoughDataError

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "chance_levels",
    "evaluate_model",
    "headline_metrics",
    "macro_f1",
    "prediction_cv",
    "prediction_entropy",
    "top_k_accuracy",
    "top_k_indices",
]


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of the same length; got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise NotEnoughDataError("no test rows to evaluate; check the split and the name task")
    return y_true, y_pred


def evaluate_model(predictions, true_labels, names) -> dict:
    """The plan's standard evaluation ("Shared Evaluation Code"), made safe for 500 names.

    Same outputs as the plan: ``accuracy``, ``prediction_cv`` (std / mean of predicted-class
    counts over ALL names), ``top5_names`` / ``bottom5_names`` (``(name, f1)`` by F1) and
    ``per_class_report`` (``classification_report(output_dict=True)``). Two deliberate
    differences: the report is computed over every name (``labels=range(len(names))``, so a
    name absent from the test set does not crash it) with ``zero_division=0`` (an unpredicted
    name has F1 0, not a warning), and numbers are plain floats so the dict is JSON-ready.
    """
    from sklearn.metrics import classification_report

    predictions, true_labels = _check(true_labels, predictions)[::-1]
    names = list(names)
    acc = float((predictions == true_labels).mean())
    pred_cv = prediction_cv(predictions, n_classes=len(names))
    report = classification_report(
        true_labels,
        predictions,
        labels=np.arange(len(names)),
        target_names=names,
        output_dict=True,
        zero_division=0,
    )
    report = {
        k: ({kk: float(vv) for kk, vv in v.items()} if isinstance(v, dict) else float(v))
        for k, v in report.items()
    }
    f1_scores = [(name, report[name]["f1-score"]) for name in names]
    f1_scores.sort(key=lambda x: -x[1])
    return {
        "accuracy": acc,
        "prediction_cv": pred_cv,
        "top5_names": f1_scores[:5],
        "bottom5_names": f1_scores[-5:],
        "per_class_report": report,
    }


def accuracy(y_true, y_pred) -> float:
    """Top-1 accuracy."""
    y_true, y_pred = _check(y_true, y_pred)
    return float((y_true == y_pred).mean())


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the names present in ``y_true``; chance is 1/C for a uniform guesser."""
    y_true, y_pred = _check(y_true, y_pred)
    present, inverse = np.unique(y_true, return_inverse=True)
    correct = np.bincount(inverse, weights=(y_true == y_pred), minlength=present.size)
    support = np.bincount(inverse, minlength=present.size)
    return float(np.mean(correct / support))


def macro_f1(y_true, y_pred) -> float:
    """Mean F1 over the names present in ``y_true`` (a name predicted but absent adds nothing)."""
    y_true, y_pred = _check(y_true, y_pred)
    n = int(max(y_true.max(), y_pred.max())) + 1
    tp = np.bincount(y_true[y_true == y_pred], minlength=n).astype(float)
    support = np.bincount(y_true, minlength=n).astype(float)
    predicted = np.bincount(y_pred, minlength=n).astype(float)
    present = support > 0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())


def prediction_cv(y_pred, *, n_classes: int) -> float:
    """Coefficient of variation (std / mean) of predicted counts over all ``n_classes`` names.

    0 when every name is predicted equally often; large when one name dominates (the plan's
    "William dominance"). Computed over ALL names, including never-predicted ones.
    """
    counts = np.bincount(np.asarray(y_pred, dtype=np.int64), minlength=n_classes)
    return float(counts.std() / counts.mean())


def prediction_entropy(y_pred, *, n_classes: int) -> dict:
    """Entropy (nats) of the predicted-label distribution and its ratio to log(C)."""
    counts = np.bincount(np.asarray(y_pred, dtype=np.int64), minlength=n_classes)
    p = counts[counts > 0] / counts.sum()
    h = float(-(p * np.log(p)).sum())
    return {"entropy": h, "normalized_entropy": h / math.log(n_classes) if n_classes > 1 else 0.0}


def top_k_indices(scores, *, k: int = 5) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first, shape (n, min(k, C))."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def top_k_accuracy(y_true, top_k) -> float:
    """Fraction of rows whose true label is among ``top_k`` (n, k) predicted indices."""
    y_true = np.asarray(y_true, dtype=np.int64)
    return float((np.asarray(top_k) == y_true[:, None]).any(axis=1).mean())


def chance_levels(y_true, *, train_labels, n_classes: int) -> dict:
    """The no-information baselines of a test set, using only what the probe saw in training.

    - ``uniform``: 1/C, the expected top-1 and balanced accuracy of a uniform guesser.
    - ``majority``: top-1 of always answering the most frequent TRAINING name.
    - ``prior_matched``: expected top-1 of guessing at random with the training name
      frequencies, sum_c p_train(c) p_test(c) (sum p^2 when train and test match).
    - ``balanced_constant``: balanced accuracy of any constant answer, 1 / (names present in
      the test set); equals ``uniform`` when every name is in the test set.
    - ``best_top1`` / ``best_balanced``: the highest of these for each metric; p-values and
      "significant" compare against them, so answering the majority never looks significant.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    p_train = np.bincount(train_labels, minlength=n_classes) / max(train_labels.size, 1)
    p_test = np.bincount(y_true, minlength=n_classes) / y_true.size
    majority_class = int(np.argmax(p_train))
    uniform = 1.0 / n_classes
    majority = float(p_test[majority_class])
    prior = float((p_train * p_test).sum())
    balanced_constant = 1.0 / int((p_test > 0).sum())
    return {
        "uniform": uniform,
        "majority": majority,
        "majority_name_index": majority_class,
        "prior_matched": prior,
        "balanced_constant": balanced_constant,
        "best_top1": max(uniform, majority, prior),
        "best_balanced": max(uniform, balanced_constant),
    }


def headline_metrics(y_true, y_pred, *, n_classes: int, top5=None) -> dict:
    """Every point metric of a test set: the plan's accuracy and prediction CV, plus
    balanced accuracy (the headline), macro F1, top-5 accuracy (when ``top5`` is given),
    prediction entropy and the number of distinct names predicted."""
    y_true, y_pred = _check(y_true, y_pred)
    out = {
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "prediction_cv": prediction_cv(y_pred, n_classes=n_classes),
        "distinct_predicted": int(np.unique(y_pred).size),
        "n_test": int(y_true.size),
        "n_classes": int(n_classes),
        "n_classes_in_test": int(np.unique(y_true).size),
    }
    if top5 is not None:
        out["top5_accuracy"] = top_k_accuracy(y_true, top5)
    out.update(prediction_entropy(y_pred, n_classes=n_classes))
    return out
