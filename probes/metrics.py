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
    "ECE_BINS",
    "accuracy",
    "as_probabilities",
    "balanced_accuracy",
    "brier_score",
    "calibration_metrics",
    "chance_levels",
    "expected_calibration_error",
    "label_cv",
    "evaluate_model",
    "headline_metrics",
    "macro_f1",
    "negative_log_likelihood",
    "prediction_cv",
    "prediction_entropy",
    "reliability_table",
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


def label_cv(y_true, *, n_classes: int) -> float:
    """The prediction CV of a perfect classifier: std / mean of the TRUE test-label counts.

    A prediction CV is only "too high" relative to this: when the test names are themselves
    skewed (a Zipf-like name distribution), even perfect predictions have a large CV.
    """
    return prediction_cv(y_true, n_classes=n_classes)


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


# --------------------------------------------------------------------------- calibration

ECE_BINS = 15  # Guo et al. 2017 ("On calibration of modern neural networks") use 15 equal-width bins.
_PROB_TOL = 1e-4  # rows summing to 1 within this are taken as probabilities (float32 round-off)
_LOG_FLOOR = 1e-15  # p(true name) is floored here so that one zero does not make the NLL infinite


def as_probabilities(scores) -> tuple[np.ndarray, str]:
    """``(P, source)``: ``scores`` as (n, C) probabilities, and how they were obtained.

    ``source`` is ``"scores"`` when every row is non-negative and sums to 1 (within 1e-4), else
    ``"softmax(scores)"`` (logits, cosine similarities, vote shares with empty rows).
    """
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim != 2:
        raise ValueError(f"scores must be (n, C), got shape {S.shape}")
    if np.all(S >= 0) and np.allclose(S.sum(axis=1), 1.0, atol=_PROB_TOL, rtol=0):
        return S, "scores"
    Z = S - S.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True), "softmax(scores)"


def _check_proba(y_true, proba) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64)
    P = np.asarray(proba, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != y.size:
        raise ValueError(f"probabilities must be (n, C) with one row per label; got {P.shape} for {y.size} labels")
    if y.size == 0:
        raise NotEnoughDataError("no test rows to evaluate; check the split and the name task")
    if y.min() < 0 or y.max() >= P.shape[1]:
        raise ValueError(f"labels must be indices into the {P.shape[1]} columns")
    return y, P


def negative_log_likelihood(y_true, proba) -> float:
    """Mean -log p(true name), with p floored at 1e-15 (sklearn's ``log_loss`` on the same rows)."""
    y, P = _check_proba(y_true, proba)
    return float(-np.mean(np.log(np.clip(P[np.arange(y.size), y], _LOG_FLOOR, 1.0))))


def brier_score(y_true, proba) -> float:
    """Multi-class Brier score: mean over rows of sum_c (p_c - 1[y = c])^2, in [0, 2]
    (Brier 1950; sklearn's multi-class ``brier_score_loss``)."""
    y, P = _check_proba(y_true, proba)
    sq = (P**2).sum(axis=1) - 2 * P[np.arange(y.size), y] + 1.0
    return float(np.mean(sq))


def _confidence_bins(y_true, proba, n_bins: int):
    """Per equal-width, right-closed confidence bin ((m-1)/M, m/M]: row count, sum of
    correctness (argmax == true name) and sum of top-1 confidence, and the number of rows."""
    y, P = _check_proba(y_true, proba)
    conf = P.max(axis=1)
    correct = (P.argmax(axis=1) == y).astype(np.float64)
    # A confidence of exactly 0 (impossible for a probability row) goes to bin 0.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    return count, np.bincount(idx, weights=correct, minlength=n_bins), np.bincount(idx, weights=conf,
                                                                                  minlength=n_bins), y.size


def expected_calibration_error(y_true, proba, *, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE (Guo et al. 2017): rows binned by confidence max_c p_c into ``n_bins``
    equal-width bins ((m-1)/M, m/M]; sum over bins of |bin share| * |accuracy - mean confidence|,
    where a row is correct when its argmax is the true name."""
    _, acc, cs, n = _confidence_bins(y_true, proba, n_bins)
    return float(np.abs(acc - cs).sum() / n)


def reliability_table(y_true, proba, *, n_bins: int = ECE_BINS) -> dict:
    """The reliability diagram's data, in the bins of :func:`expected_calibration_error`.

    Per equal-width confidence bin ((m-1)/M, m/M]: ``count`` rows, their ``confidence`` (mean
    max_c p_c) and ``accuracy`` (share whose argmax is the true name); empty bins hold None.
    Sum over bins of count * |accuracy - confidence| / n is exactly the ECE, so a report can
    draw the diagram from summary.json without the probabilities.
    """
    count, acc, cs, _ = _confidence_bins(y_true, proba, n_bins)
    nz = count > 0
    return {
        "edges": [float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)],
        "count": [int(c) for c in count],
        "confidence": [float(cs[i] / count[i]) if nz[i] else None for i in range(n_bins)],
        "accuracy": [float(acc[i] / count[i]) if nz[i] else None for i in range(n_bins)],
    }


def calibration_metrics(y_true, proba, *, source: str) -> dict:
    """NLL, ECE (15 bins), Brier and the reliability table of ``proba``; ``source`` says where
    the probabilities came from."""
    return {
        "nll": negative_log_likelihood(y_true, proba),
        "ece": expected_calibration_error(y_true, proba),
        "ece_bins": ECE_BINS,
        "brier": brier_score(y_true, proba),
        "reliability": reliability_table(y_true, proba),
        "source": source,
    }
