"""Identity-leak audit and pseudo-identities.

A random image-level split on real faces gave top-1 0.249 (kNN 0.343) against 0.080 (kNN 0.066)
identity-disjoint: the same person in train and test is memorised. The audit measures how much
of that can be happening in a given split, under a face-identity model (ArcFace, or any model):

- **the headline**, when identities are known (the dataset's, or the pseudo-identities the
  split was made from): the share of test identities that also have training images. 0 for an
  identity-disjoint split; any other value is leakage, whatever the embedding says;
- **the nearest-neighbour analysis**: for each test image its nearest training neighbour, and the
  share whose similarity reaches a same-person ``threshold``. The threshold calibrates itself
  from the training split (:func:`calibrate_threshold`): for sampled training images, the
  similarity of the nearest training image of *another* identity; the threshold is its 99th
  percentile, so about 1% of test images of people absent from training reach it. The share
  above it is compared with that 1% (a leak is suspected above 5 times it, and above 5%);
- kNN accuracy on test with the usual neighbours and again with same-identity neighbours
  excluded (same known identity when the store has identities, and any neighbour above the
  threshold: a likely same person). A large drop means the kNN score leans on leaked people.

Without any identities the threshold must be given (``--threshold``).

For datasets without identity labels, :func:`pseudo_identities` clusters images into people: the
connected components of the kNN graph whose edges have similarity >= ``threshold``. They are
saved in the store (``store.save_identities``) so that ``probes split --by pseudo-identity:<name>``
can make a person-disjoint split.
"""

from __future__ import annotations

import logging

import numpy as np

from probes.errors import ProbeConfigError
from probes.knn import DEFAULT_TEMPERATURE, knn_search

log = logging.getLogger(__name__)


def _knn_accuracy(labels_nb, sims, valid, y_query, *, n_classes, k, temperature) -> float:
    """Top-1 accuracy of temperature-weighted votes over the first ``k`` *valid* neighbours."""
    scores = _knn_scores(labels_nb, sims, valid, n_classes=n_classes, k=k, temperature=temperature)
    has_any = scores.sum(axis=1) > 0
    # A query with no valid neighbour left cannot be answered: it counts as wrong.
    return float(np.mean((np.argmax(scores, axis=1) == y_query) & has_any))


def _knn_scores(labels_nb, sims, valid, *, n_classes, k, temperature) -> np.ndarray:
    """Vote shares over the first ``k`` valid neighbours (rows of zeros when none is left)."""
    # Push invalid neighbours to the end of each row (stable), then vote with the first k valid ones.
    order = np.argsort(~valid, axis=1, kind="stable")
    labels = np.take_along_axis(labels_nb, order, axis=1)[:, :k]
    s = np.take_along_axis(sims, order, axis=1)[:, :k]
    ok = np.take_along_axis(valid, order, axis=1)[:, :k]
    w = np.where(ok, np.exp((s - s.max(axis=1, keepdims=True)) / temperature), 0.0)
    scores = np.zeros((len(labels), n_classes))
    np.add.at(scores, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), w.ravel())
    total = scores.sum(axis=1, keepdims=True)
    return np.divide(scores, total, out=np.zeros_like(scores), where=total > 0)


CALIBRATION_QUANTILE = 0.99
LEAK_FACTOR = 5.0  # a leak is suspected when the share above the threshold exceeds 5x its expected rate
LEAK_MIN_SHARE = 0.05  # ... and 5% of the test images


def _first_true(mask: np.ndarray) -> np.ndarray:
    """Column of the first True per row, -1 where a row has none."""
    idx = np.argmax(mask, axis=1)
    return np.where(mask.any(axis=1), idx, -1)


def _quantiles(v: np.ndarray) -> dict:
    if v.size == 0:
        return {}
    return {str(q): float(np.quantile(v, q)) for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)}


def calibrate_threshold(X, identities, *, quantile: float = CALIBRATION_QUANTILE, k: int = 100,
                        max_queries: int = 20000, seed: int = 0, device: str = "auto") -> dict:
    """The same-person cosine threshold of an embedding, from labelled (training) images.

    Rule: for up to ``max_queries`` sampled images, the similarity of the nearest image of a
    DIFFERENT identity among the ``k`` nearest; the threshold is its ``quantile`` (0.99): only 1%
    of images whose person is absent reach it. Also reported: the nearest SAME-identity
    similarities and the share of them at or above the threshold (how often a present person is
    caught). Returns a JSON-able dict with ``threshold`` and ``rule``.
    """
    if not 0.5 <= quantile < 1:
        raise ProbeConfigError(f"quantile must be in [0.5, 1), got {quantile}")
    ids = np.asarray(identities).astype(str)
    X = np.asarray(X)
    n = len(X)
    if n < 3 or np.unique(ids).size < 2:
        raise ProbeConfigError(f"calibrating the threshold needs >= 3 images of >= 2 identities, got {n} images of "
                               f"{np.unique(ids).size}; pass --threshold")
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if n <= max_queries else np.sort(rng.choice(n, max_queries, replace=False))
    res = knn_search(X, X[rows], k=min(k + 1, n), device=device)
    not_self = res.indices != rows[:, None]
    same_id = ids[res.indices] == ids[rows][:, None]
    fd, fs = _first_true(~same_id), _first_true(same_id & not_self)
    r = np.arange(rows.size)
    diff_nn = res.similarities[r[fd >= 0], fd[fd >= 0]]
    same_nn = res.similarities[r[fs >= 0], fs[fs >= 0]]
    if diff_nn.size == 0:
        raise ProbeConfigError(f"no image has another identity among its {k} nearest neighbours; raise k or pass --threshold")
    threshold = float(np.quantile(diff_nn, quantile))
    return {
        "threshold": threshold,
        "rule": (f"the {quantile:.0%} quantile of the nearest different-identity similarity over {rows.size} "
                 f"training images: about {1 - quantile:.0%} of test images of people absent from training reach it"),
        "quantile": float(quantile),
        "expected_share_without_leak": float(1 - quantile),
        "n_queries": int(rows.size),
        "k": int(k),
        "n_without_other_identity_in_k": int(np.sum(fd < 0)),
        "different_identity_nearest": _quantiles(diff_nn),
        "same_identity_nearest": _quantiles(same_nn),
        "same_identity_nearest_at_or_above_threshold": float(np.mean(same_nn >= threshold)) if same_nn.size else None,
    }


def identity_leak_audit(X_train, X_test, *, y_train, y_test, threshold: float | None = None, identities_train=None,
                        identities_test=None, k: int = 20, search_k: int = 200,
                        temperature: float = DEFAULT_TEMPERATURE, device: str = "auto",
                        quantile: float = CALIBRATION_QUANTILE) -> dict:
    """Leak statistics of a train/test split under one embedding (cosine similarity).

    ``y_*`` are name indices; ``threshold`` is the same-person cosine similarity of the model,
    calibrated on the training images and their identities (:func:`calibrate_threshold`) when
    None. ``search_k`` neighbours are fetched once so that ``k`` remain after exclusions.
    Returns a JSON-able dict whose ``headline`` says whether a leak is suspected and why.
    """
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.asarray(y_test, dtype=np.int64)
    calibration = None
    if threshold is None:
        if identities_train is None:
            raise ProbeConfigError("no identities to calibrate the same-person threshold on: pass threshold "
                                   "(--threshold T, a cosine similarity of this model)")
        calibration = calibrate_threshold(X_train, identities_train, quantile=quantile, device=device)
        threshold = calibration["threshold"]
    if not -1.0 <= threshold <= 1.0:
        raise ProbeConfigError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    search_k = min(max(search_k, k), len(X_train))
    res = knn_search(X_train, X_test, k=search_k, device=device)
    nearest = res.similarities[:, 0]
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    labels_nb = y_train[res.indices]
    all_valid = np.ones_like(res.indices, dtype=bool)
    below = res.similarities < threshold
    acc_all = _knn_accuracy(labels_nb, res.similarities, all_valid, y_test, n_classes=n_classes, k=k,
                            temperature=temperature)
    acc_below = _knn_accuracy(labels_nb, res.similarities, below, y_test, n_classes=n_classes, k=k,
                              temperature=temperature)
    out = {
        "threshold": float(threshold), "threshold_source": "calibrated" if calibration else "given",
        "calibration": calibration, "k": int(k), "search_k": int(search_k), "temperature": float(temperature),
        "search_device": res.device, "n_test": int(len(y_test)), "n_train": int(len(y_train)),
        "share_nearest_above_threshold": float(np.mean(nearest >= threshold)),
        "nearest_similarity_quantiles": {str(q): float(np.quantile(nearest, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
        "knn_accuracy": acc_all,
        "knn_accuracy_excluding_above_threshold": acc_below,
        "share_queries_without_neighbours_after_threshold_exclusion": float(np.mean((~below).all(axis=1))),
    }
    if identities_train is not None and identities_test is not None:
        id_tr = np.asarray(identities_train).astype(str)
        id_te = np.asarray(identities_test).astype(str)
        same = id_tr[res.indices] == id_te[:, None]
        uniq_te = np.unique(id_te)
        out["share_test_identities_in_train"] = float(np.mean(np.isin(uniq_te, id_tr)))
        out["n_test_identities"] = int(uniq_te.size)
        out["share_test_images_identity_in_train"] = float(np.mean(np.isin(id_te, id_tr)))
        out["share_nearest_same_identity"] = float(np.mean(same[:, 0]))
        out["knn_accuracy_excluding_same_identity"] = _knn_accuracy(
            labels_nb, res.similarities, ~same, y_test, n_classes=n_classes, k=k, temperature=temperature)
        out["knn_accuracy_excluding_same_identity_and_above_threshold"] = _knn_accuracy(
            labels_nb, res.similarities, ~same & below, y_test, n_classes=n_classes, k=k, temperature=temperature)
    out["headline"] = _headline(out)
    return out


def _headline(a: dict) -> dict:
    """Leak suspected, and why: known identities first, then the nearest-neighbour share."""
    reasons = []
    shared = a.get("share_test_identities_in_train")
    if shared:
        reasons.append(f"{shared:.1%} of the {a['n_test_identities']} test identities also have training images")
    expected = (a["calibration"] or {}).get("expected_share_without_leak")
    limit = max(LEAK_FACTOR * expected, LEAK_MIN_SHARE) if expected is not None else LEAK_MIN_SHARE
    above = a["share_nearest_above_threshold"]
    if above > limit:
        reasons.append(f"{above:.1%} of test images have a training neighbour at or above the same-person threshold "
                       f"{a['threshold']:.3f} (expected without leak: "
                       + (f"{expected:.1%}" if expected is not None else "unknown, threshold given")
                       + f"; limit {limit:.1%})")
    return {"share_test_identities_in_train": shared, "share_nearest_above_threshold": above,
            "expected_share_without_leak": expected, "limit": limit, "leak_suspected": bool(reasons),
            "reasons": reasons}


def pseudo_identities(X, *, threshold: float, k: int = 10, device: str = "auto", prefix: str = "pid") -> np.ndarray:
    """Person labels ``(N,)`` (strings) from connected components of the thresholded kNN graph.

    Each image is linked to those of its ``k`` nearest neighbours with cosine similarity
    ``>= threshold``; links are symmetric. An image with no such neighbour is its own person.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    X = np.asarray(X)
    n = len(X)
    if n < 2:
        raise ProbeConfigError(f"pseudo-identities need at least two images, got {n}")
    if not -1.0 <= threshold <= 1.0:
        raise ProbeConfigError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    res = knn_search(X, X, k=min(k, n - 1), device=device, exclude_self=True)
    rows = np.repeat(np.arange(n), res.indices.shape[1])
    cols = res.indices.ravel()
    keep = res.similarities.ravel() >= threshold
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (rows[keep], cols[keep])), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    log.info("pseudo-identities: %d images -> %d components at threshold %.3f (k=%d)", n, n_comp, threshold, k)
    width = len(str(max(n_comp - 1, 0)))
    return np.array([f"{prefix}{c:0{width}d}" for c in comp])


def component_stats(identities: np.ndarray) -> dict:
    """Sizes of the pseudo-identity components (recorded with them)."""
    _, counts = np.unique(np.asarray(identities), return_counts=True)
    return {"n_identities": int(len(counts)), "n_singletons": int(np.sum(counts == 1)),
            "largest": int(counts.max()), "median_size": float(np.median(counts)),
            "images_in_largest_share": float(counts.max() / counts.sum())}


def leak_free_scores(X_train, X_test, *, y_train, n_classes: int, threshold: float, identities_train=None,
                     identities_test=None, k: int = 20, search_k: int = 200,
                     temperature: float = DEFAULT_TEMPERATURE, device: str = "auto") -> np.ndarray:
    """kNN vote shares of test rows using only neighbours below ``threshold`` and of another identity."""
    y_train = np.asarray(y_train, dtype=np.int64)
    search_k = min(max(search_k, k), len(X_train))
    res = knn_search(X_train, X_test, k=search_k, device=device)
    valid = res.similarities < threshold
    if identities_train is not None and identities_test is not None:
        valid &= np.asarray(identities_train).astype(str)[res.indices] != np.asarray(identities_test).astype(str)[:, None]
    return _knn_scores(y_train[res.indices], res.similarities, valid, n_classes=n_classes, k=k, temperature=temperature)


def run_audit(store, *, model: str, split, out, threshold: float | None = None, view: str | None = None,
              names: str = "all", quantile: float = CALIBRATION_QUANTILE,
              min_images: int = 0, k: int = 20, search_k: int = 200, temperature: float = DEFAULT_TEMPERATURE,
              device: str = "auto", n_boot: int = 1000, seed: int = 0, experiment: str | None = None,
              allow_incomplete: bool = False) -> dict:
    """Identity-leak audit of ``split`` under ``model`` (a face-identity model such as ``arcface-r50``).

    "Training" is train+val (what final probes are fitted on). Identities: the dataset's, else
    the pseudo-identities the split was made from; ``threshold`` None calibrates it on them
    (:func:`calibrate_threshold`), which needs identities. The result folder's predictions
    are the leak-free kNN (neighbours above the threshold and of the same identity excluded);
    ``summary["extra"]["audit"]`` holds the leak statistics. ``allow_incomplete`` proceeds on a
    model with rows still pending (recorded in summary.json ``incomplete`` and its warnings).
    """
    import time

    from probes.data import load_xy
    from probes.evaluation import finish_experiment
    from probes.knn import task_slug
    from probes.names import resolve_names

    t0 = time.perf_counter()
    task = resolve_names(store, names, min_images=min_images)
    kw = dict(view=view, split=split, names=task, allow_incomplete=allow_incomplete)
    tv = load_xy(store, model, subset="trainval", **kw)
    te = load_xy(store, model, subset="test", **kw)
    # The dataset's identities audit the split even when the split itself was image level.
    id_all, id_source = store.index.identities, "dataset"
    if id_all is None and split.identity_source not in (None, "identity"):
        id_all, id_source = store.load_identities(split.identity_source)[0], f"pseudo-identities {split.identity_source}"
    if id_all is None:
        id_source = None
        if threshold is None:
            raise ProbeConfigError(
                f"{store.path} has no identities (nor does the split's source) to calibrate the same-person threshold "
                "on: pass --threshold T, or derive pseudo-identities first (`probes identities`)")
    id_tv = None if id_all is None else np.asarray(id_all)[tv.rows]
    id_te = None if id_all is None else np.asarray(id_all)[te.rows]
    audit = identity_leak_audit(tv.X, te.X, y_train=tv.y, y_test=te.y, threshold=threshold, identities_train=id_tv,
                                identities_test=id_te, k=k, search_k=search_k, temperature=temperature, device=device,
                                quantile=quantile)
    audit["identity_source"] = id_source
    threshold = audit["threshold"]
    scores = leak_free_scores(tv.X, te.X, y_train=tv.y, n_classes=len(task.names), threshold=threshold,
                              identities_train=id_tv, identities_test=id_te, k=k, search_k=search_k,
                              temperature=temperature, device=device)
    t_audit = time.perf_counter() - t0
    experiment = experiment or f"{model}_audit_{task_slug(names)}"
    warnings = [f"possible identity leakage: {why}" for why in audit["headline"]["reasons"]]
    cfg = {"family": "audit", "experiment": experiment, "model": model, "view": te.view, "names": names,
           "min_images": min_images, "name_task": task.info(), "allow_incomplete": allow_incomplete,
           "probe": {"threshold": threshold, "threshold_source": audit["threshold_source"], "quantile": quantile,
                     "k": k, "search_k": search_k, "temperature": temperature,
                     "database": "train+val", "predictions": "kNN without same-identity or above-threshold neighbours"}}
    return finish_experiment(
        out, experiment=experiment, scores=scores, y_true=te.y, names=task.names, image_ids=te.image_ids,
        groups=te.groups, train_labels=tv.y, config=cfg, split_info=split.info(), store_path=store.path,
        model_spec=store.model_spec(model), timings={"audit_s": t_audit}, name_task=task.spec, n_boot=n_boot,
        seed=seed, warnings=warnings, extra={"audit": audit},
        incomplete=list(dict.fromkeys(x.incomplete for x in (tv, te) if x.incomplete)),
        control={"kind": "leak audit", "description": "identity-leak audit: kNN without same-person neighbours"},
        log=[f"audit {experiment}: threshold {threshold:.4f} ({audit['threshold_source']}), leak suspected "
             f"{audit['headline']['leak_suspected']}; share above threshold {audit['share_nearest_above_threshold']:.4f}, "
             f"kNN {audit['knn_accuracy']:.4f} -> {audit['knn_accuracy_excluding_above_threshold']:.4f} without "
             "above-threshold neighbours"])


def build_pseudo_identities(store, *, model: str, threshold: float, view: str | None = None, k: int = 10,
                            name: str | None = None, device: str = "auto") -> tuple[str, dict]:
    """Cluster every embedded image of ``model`` into pseudo-identities and save them in the store.

    Rows without an embedding get ``""`` (outside any split by pseudo-identity). Returns the
    saved name (default ``pseudo-<model>-t<threshold>``) and the attrs stored with it; use it
    as ``probes split --by pseudo-identity:<name>``.
    """
    view = view or store.default_view(model)
    X, ids = store.load(model, view)
    labels = pseudo_identities(X, threshold=threshold, k=k, device=device)
    full = np.full(store.n, "", dtype=object)
    full[store.rows_of(ids)] = labels
    name = name or f"pseudo-{model}-t{threshold:g}"
    attrs = {"source": "pseudo-identity", "model": model, "view": view, "threshold": float(threshold), "k": int(k),
             "method": "connected components of the kNN graph (cosine >= threshold)",
             "n_unassigned": int(store.n - len(ids)), **component_stats(labels)}
    store.save_identities(name, full.astype(str), attrs)
    return name, attrs
