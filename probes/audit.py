"""Identity-leak audit and pseudo-identities.

A random image-level split on real faces gave top-1 0.249 (kNN 0.343) against 0.080 (kNN 0.066)
identity-disjoint: the same person in train and test is memorised. The audit measures how much
of that can be happening in a given split, under a face-identity model (ArcFace, or any model):

- for each test image, its nearest training neighbour: the share whose similarity exceeds a
  same-person ``threshold`` (a test face that has a near-duplicate person in train);
- kNN accuracy on test with the usual neighbours and again with same-identity neighbours
  excluded (same known identity when the store has identities, and any neighbour above the
  threshold: a likely same person). A large drop means the kNN score leans on leaked people.

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


def identity_leak_audit(X_train, X_test, *, y_train, y_test, threshold: float, identities_train=None,
                        identities_test=None, k: int = 20, search_k: int = 200,
                        temperature: float = DEFAULT_TEMPERATURE, device: str = "auto") -> dict:
    """Leak statistics of a train/test split under one embedding (cosine similarity).

    ``y_*`` are name indices; ``threshold`` is the same-person cosine similarity of the model.
    ``search_k`` neighbours are fetched once so that ``k`` remain after exclusions.
    Returns a JSON-able dict.
    """
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.asarray(y_test, dtype=np.int64)
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
        "threshold": float(threshold), "k": int(k), "search_k": int(search_k), "temperature": float(temperature),
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
        out["share_test_identities_in_train"] = float(np.mean(np.isin(id_te, id_tr)))
        out["share_nearest_same_identity"] = float(np.mean(same[:, 0]))
        out["knn_accuracy_excluding_same_identity"] = _knn_accuracy(
            labels_nb, res.similarities, ~same, y_test, n_classes=n_classes, k=k, temperature=temperature)
        out["knn_accuracy_excluding_same_identity_and_above_threshold"] = _knn_accuracy(
            labels_nb, res.similarities, ~same & below, y_test, n_classes=n_classes, k=k, temperature=temperature)
    return out


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


def run_audit(store, *, model: str, split, out, threshold: float, view: str | None = None, names: str = "all",
              min_images: int = 0, k: int = 20, search_k: int = 200, temperature: float = DEFAULT_TEMPERATURE,
              device: str = "auto", n_boot: int = 1000, seed: int = 0, experiment: str | None = None) -> dict:
    """Identity-leak audit of ``split`` under ``model`` (a face-identity model such as ``arcface-r50``).

    "Training" is train+val (what final probes are fitted on). The result folder's predictions
    are the leak-free kNN (neighbours above the threshold and of the same identity excluded);
    ``summary["extra"]["audit"]`` holds the leak statistics.
    """
    import time

    from probes.data import load_xy
    from probes.evaluation import finish_experiment
    from probes.knn import task_slug
    from probes.names import resolve_names

    t0 = time.perf_counter()
    task = resolve_names(store, names, min_images=min_images)
    kw = dict(view=view, split=split, names=task)
    tv = load_xy(store, model, subset="trainval", **kw)
    te = load_xy(store, model, subset="test", **kw)
    # The dataset's identities audit the split even when the split itself was image level.
    id_all = store.index.identities
    id_tv = None if id_all is None else np.asarray(id_all)[tv.rows]
    id_te = None if id_all is None else np.asarray(id_all)[te.rows]
    audit = identity_leak_audit(tv.X, te.X, y_train=tv.y, y_test=te.y, threshold=threshold, identities_train=id_tv,
                                identities_test=id_te, k=k, search_k=search_k, temperature=temperature, device=device)
    scores = leak_free_scores(tv.X, te.X, y_train=tv.y, n_classes=len(task.names), threshold=threshold,
                              identities_train=id_tv, identities_test=id_te, k=k, search_k=search_k,
                              temperature=temperature, device=device)
    t_audit = time.perf_counter() - t0
    experiment = experiment or f"{model}_audit_{task_slug(names)}"
    warnings = []
    if audit["share_nearest_above_threshold"] > 0.05:
        warnings.append(f"{audit['share_nearest_above_threshold']:.1%} of test images have a training neighbour above "
                        f"the same-person threshold {threshold}: possible identity leakage")
    cfg = {"family": "audit", "experiment": experiment, "model": model, "view": te.view, "names": names,
           "min_images": min_images, "name_task": task.info(),
           "probe": {"threshold": threshold, "k": k, "search_k": search_k, "temperature": temperature,
                     "database": "train+val", "predictions": "kNN without same-identity or above-threshold neighbours"}}
    return finish_experiment(
        out, experiment=experiment, scores=scores, y_true=te.y, names=task.names, image_ids=te.image_ids,
        groups=te.groups, train_labels=tv.y, config=cfg, split_info=split.info(), store_path=store.path,
        model_spec=store.model_spec(model), timings={"audit_s": t_audit}, name_task=task.spec, n_boot=n_boot,
        seed=seed, warnings=warnings, extra={"audit": audit},
        log=[f"audit {experiment}: share above threshold {audit['share_nearest_above_threshold']:.4f}, "
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
