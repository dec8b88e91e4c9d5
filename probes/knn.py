"""FAISS k-nearest-neighbour classification on L2-normalised embeddings (the kNN sanity check).

The protocol follows DINO / dinov2 ``eval/knn.py``: cosine similarity (inner product of
L2-normalised vectors), **one** search for the largest k, then temperature-weighted votes
``exp(sim / T)`` for every k in ``ks`` from that single search. :func:`run_knn` chooses k and T
on validation (train rows as the database, validation rows as the queries), then scores the
test rows once with train+validation as the database at the chosen values only. k and T are
recorded in every result (lightly once changed its default T silently and broke reproductions).

The search runs on a faiss GPU index when faiss was built with GPUs and one is visible, on
``IndexFlatIP`` on the CPU otherwise; which one actually ran is logged and returned.

>>> probe = KNNProbe(ks=(10, 20), temperature=0.07).fit(X_train, names_train)   # doctest: +SKIP
>>> scores = probe.decision_functions(X_test)        # {10: (n, C), 20: (n, C)}  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import NotFittedError

from probes.covariates import ProtocolOptions
from probes.errors import ProbeConfigError

if TYPE_CHECKING:
    from probes.names import NameTask

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
DEFAULT_TEMPERATURES = (0.02, 0.07, 0.2)
VOTE_SMOOTHING = 1e-3  # added to vote shares before a log-loss, so a name no neighbour had is not -inf
DEVICES = ("auto", "cpu", "cuda")


def l2_normalize(X: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (what faiss wants)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X / np.maximum(norms, eps), dtype=np.float32)


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_search_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a faiss GPU index can be built, else ``"cpu"``.

    Asking for ``"cuda"`` without a GPU faiss is an error rather than a silent CPU fallback.
    """
    if device not in DEVICES:
        raise ProbeConfigError(f"device must be one of {DEVICES}, got {device!r}")
    gpu = faiss_gpu_available()
    if device == "cuda" and not gpu:
        from facestore.errors import DeviceError

        raise DeviceError(
            "device='cuda' was asked for the kNN search but this faiss build has no GPU support or sees "
            "no GPU; install the 'gpu' extra (faiss-gpu-cu12) or pass device='cpu'"
        )
    if device == "auto":
        return "cuda" if gpu else "cpu"
    return device


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours of each query: similarities (descending) and database row indices."""

    similarities: np.ndarray  # (n_queries, k) float32
    indices: np.ndarray  # (n_queries, k) int64
    device: str  # where the search actually ran: "cpu" or "cuda"


def knn_search(
    database: np.ndarray,
    queries: np.ndarray,
    *,
    k: int,
    device: str = "auto",
    exclude_self: bool = False,
    normalize: bool = True,
) -> SearchResult:
    """Exact inner-product search of ``queries`` against ``database`` (cosine when normalised).

    ``exclude_self=True`` is for a query set that *is* the database (row i of ``queries`` is row i
    of ``database``): one extra neighbour is searched and the query's own row is dropped, by
    index rather than by position so that duplicate vectors cannot hide it.
    """
    import faiss

    if k < 1:
        raise ProbeConfigError(f"k must be >= 1, got {k}")
    db = l2_normalize(database) if normalize else np.ascontiguousarray(database, dtype=np.float32)
    q = l2_normalize(queries) if normalize else np.ascontiguousarray(queries, dtype=np.float32)
    if db.ndim != 2 or q.ndim != 2 or db.shape[1] != q.shape[1]:
        raise ProbeConfigError(f"database {db.shape} and queries {q.shape} must be 2-D with the same width")
    if exclude_self and len(db) != len(q):
        raise ProbeConfigError(
            f"exclude_self=True needs the query set to be the database (same rows); got {len(q)} queries "
            f"for {len(db)} database rows"
        )
    n_avail = len(db) - (1 if exclude_self else 0)
    if k > n_avail:
        raise ProbeConfigError(f"k={k} exceeds the {n_avail} database rows available to each query; lower k")
    resolved = resolve_search_device(device)
    index = faiss.IndexFlatIP(db.shape[1])
    if resolved == "cuda":
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    index.add(db)
    k_search = k + 1 if exclude_self else k
    sims, idx = index.search(q, k_search)
    log.info("kNN search: %d queries x %d database rows, k=%d, faiss %s index", len(q), len(db), k,
             "GPU" if resolved == "cuda" else "CPU IndexFlatIP")
    if exclude_self:
        own = idx == np.arange(len(q))[:, None]
        # Rows where the query is not among its own k+1 neighbours (ties with duplicates): drop the last.
        own[~own.any(axis=1), -1] = True
        keep = ~own
        sims = sims[keep].reshape(len(q), k)
        idx = idx[keep].reshape(len(q), k)
    return SearchResult(similarities=sims.astype(np.float32), indices=idx.astype(np.int64), device=resolved)


def weighted_votes(
    neighbor_labels: np.ndarray,
    similarities: np.ndarray,
    *,
    n_classes: int,
    k: int,
    temperature: float = DEFAULT_TEMPERATURE,
) -> np.ndarray:
    """Class scores from the first ``k`` neighbours: sum of ``exp(sim / T)`` per class, normalised.

    Rows sum to one, so they can be read as probabilities over the classes.
    """
    if temperature <= 0:
        raise ProbeConfigError(f"temperature must be > 0, got {temperature}")
    labels = neighbor_labels[:, :k]
    # Subtracting the row's top similarity leaves the normalised votes unchanged and avoids overflow.
    sims = similarities[:, :k].astype(np.float64)
    w = np.exp((sims - sims[:, :1]) / temperature)
    scores = np.zeros((len(labels), n_classes), dtype=np.float64)
    np.add.at(scores, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), w.ravel())
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


class KNNProbe:
    """Weighted kNN classifier, scikit-learn style, that reports several k from one search.

    Parameters
    ----------
    ks : the k values reported; the search fetches ``max(ks)`` neighbours once.
    k : the k that ``predict`` / ``predict_proba`` use (default 20, usually the best in DINO).
    temperature : T of the ``exp(sim / T)`` vote weights.
    device : ``"auto"``, ``"cpu"`` or ``"cuda"`` for the faiss index.
    """

    def __init__(self, ks=DEFAULT_KS, *, k: int = 20, temperature: float = DEFAULT_TEMPERATURE,
                 device: str = "auto") -> None:
        self.ks = ks
        self.k = k
        self.temperature = temperature
        self.device = device

    def fit(self, X, y) -> KNNProbe:
        """Store the L2-normalised training vectors and their labels (names or ints)."""
        ks = tuple(int(k) for k in self.ks)
        if not ks or min(ks) < 1:
            raise ProbeConfigError(f"ks must be positive integers, got {self.ks!r}")
        if self.k not in ks:
            raise ProbeConfigError(f"k={self.k} must be one of ks={ks}")
        X = np.asarray(X)
        y = np.asarray(y)
        if len(X) != len(y):
            raise ProbeConfigError(f"X has {len(X)} rows but y has {len(y)} labels")
        self.ks_ = tuple(sorted(set(ks)))
        self.classes_, self.y_index_ = np.unique(y, return_inverse=True)
        self.X_ = l2_normalize(X)
        self.n_features_in_ = X.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "X_"):
            raise NotFittedError("this KNNProbe is not fitted yet; call fit(X, y) first")

    def search(self, X, *, exclude_self: bool = False) -> SearchResult:
        """One search for ``max(ks_)`` neighbours (capped at the training set size)."""
        self._check_fitted()
        k_max = min(max(self.ks_), len(self.X_) - (1 if exclude_self else 0))
        result = knn_search(self.X_, X, k=k_max, device=self.device, exclude_self=exclude_self)
        self.search_device_ = result.device
        return result

    def decision_functions(self, X, *, exclude_self: bool = False) -> dict[int, np.ndarray]:
        """``{k: (n, n_classes) vote shares}`` for every k in ``ks_``, all from one search.

        ``exclude_self=True`` when ``X`` is the training set itself (leave-one-out).
        """
        result = self.search(X, exclude_self=exclude_self)
        labels = self.y_index_[result.indices]
        return {
            k: weighted_votes(labels, result.similarities, n_classes=len(self.classes_),
                              k=min(k, labels.shape[1]), temperature=self.temperature)
            for k in self.ks_
        }

    def predict_proba(self, X) -> np.ndarray:
        """Vote shares at ``k`` (columns follow ``classes_``)."""
        return self.decision_functions(X)[self.k]

    def decision_function(self, X) -> np.ndarray:
        return self.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """Predicted labels (names) at ``k``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y) -> float:
        """Top-1 accuracy at ``k``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def params(self) -> dict:
        """k values and T: recorded in every result."""
        return {"ks": list(self.ks_ if hasattr(self, "ks_") else self.ks), "k": self.k,
                "temperature": self.temperature, "device": self.device,
                "search_device": getattr(self, "search_device_", None), "metric": "cosine (IndexFlatIP on L2-normalised)"}


def task_slug(names) -> str:
    """A folder-safe form of a name-task spec (a file path becomes its stem); a within-value
    :class:`~probes.names.NameTask` gives its base task's (the folder adds ``_within-COV-VALUE``)."""
    from pathlib import Path

    from probes.names import NameTask

    if isinstance(names, NameTask):
        names = names.base or names.spec
    return names if names == "all" or names.startswith("top") else Path(names).stem


@dataclass(frozen=True)
class KNNConfig(ProtocolOptions):
    """One kNN experiment (recorded in config.json).

    ``k`` / ``temperature`` None: chosen on validation among ``ks`` / ``temperatures``; a value
    fixes it. ``null_repeats`` with ``forced_choice``: the database names shuffled across
    identities that many times (a refit of kNN is a relabelling of the same search).
    ``controls``, ``control_permutations``, ``foils``, ``allow_incomplete``: as
    :class:`~probes.linear_experiment.LinearConfig`'s; each within-stratum refit repeats the
    validation choice of k and T.
    """

    model: str
    view: str | None = None
    names: str | NameTask = "all"
    min_images: int = 0
    ks: tuple[int, ...] = DEFAULT_KS
    k: int | None = None
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    temperature: float | None = None
    device: str = "auto"
    n_boot: int = 1000
    random_state: int = 0


class SelectedKNN:
    """The kNN probe as :mod:`probes.controls` refits it: ``fit(X, y, X_val=, y_val=)`` chooses k
    and T on validation (train rows the database) exactly as :func:`run_knn`, then makes train +
    validation the database; ``predict_proba`` gives the vote shares over ``classes``."""

    def __init__(self, *, classes, ks, temperatures, device: str = "auto") -> None:
        self.classes = np.asarray(classes)
        self.ks = tuple(ks)
        self.temperatures = tuple(temperatures)
        self.device = device

    def fit(self, X, y, *, X_val, y_val) -> SelectedKNN:
        lookup = {c: i for i, c in enumerate(self.classes.tolist())}
        yi = np.array([lookup[s] for s in np.asarray(y).tolist()], dtype=np.int64)
        yv = np.array([lookup[s] for s in np.asarray(y_val).tolist()], dtype=np.int64)
        k, T, _ = select_k_and_temperature(X, yi, X_val, yv, n_classes=self.classes.size, ks=self.ks,
                                           temperatures=self.temperatures, device=self.device)
        self.k_, self.temperature_ = k, T
        self.probe_ = KNNProbe((k,), k=k, temperature=T, device=self.device).fit(
            np.concatenate([np.asarray(X), np.asarray(X_val)]), np.concatenate([yi, yv]))
        self.classes_ = self.classes
        return self

    def predict_proba(self, X) -> np.ndarray:
        votes = self.probe_.predict_proba(X)
        return _widen(votes, self.probe_.classes_, self.classes.size)


def experiment_name(config: KNNConfig) -> str:
    """The default experiment (folder) name of a kNN config."""
    return f"{config.model}{'-' + config.view if config.view else ''}_knn_{task_slug(config.names)}"


def _widen(scores: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Vote columns follow the labels present in the database; widen to every task name."""
    wide = np.zeros((len(scores), n_classes))
    wide[:, classes] = scores
    return wide


def select_k_and_temperature(train_X, train_y, val_X, val_y, *, n_classes: int, ks, temperatures,
                             device: str = "auto") -> tuple[int, float, list[dict]]:
    """``(k, T, table)``: k and T chosen on validation (train rows as the database).

    Selection as the linear probe's (:func:`probes.linear_path.select`): the validation balanced
    accuracy, values within one standard error tied, ties broken by the class-balanced log-loss of
    the (smoothed) vote shares. ``table`` holds every (k, T) with its validation metrics.
    """
    from probes.linear_path import select, validation_metrics

    probe = KNNProbe(tuple(ks), k=max(ks), temperature=1.0, device=device).fit(train_X, train_y)
    result = probe.search(val_X)
    labels = probe.y_index_[result.indices]
    rows = []
    for T in temperatures:
        for k in probe.ks_:
            votes = weighted_votes(labels, result.similarities, n_classes=len(probe.classes_),
                                   k=min(k, labels.shape[1]), temperature=T)
            P = (_widen(votes, probe.classes_, n_classes) + VOTE_SMOOTHING) / (1 + n_classes * VOTE_SMOOTHING)
            rows.append({"k": int(k), "temperature": float(T),
                         **validation_metrics(np.log(P), np.asarray(val_y), "balanced_accuracy")})
    best = rows[select(rows, "balanced_accuracy")]
    return best["k"], best["temperature"], rows


def run_knn(store, *, config: KNNConfig, split, out, experiment: str | None = None,
            seed_group: str | None = None) -> dict:
    """The kNN probe on one split: k and T chosen on validation, then train+val is the database
    and test the queries, scored once at the chosen values (``summary["extra"]["selection"]``
    holds the validation table of every (k, T))."""
    from probes import covariates as cv
    from probes import stats
    from probes.data import load_xy
    from probes.evaluation import config_record, finish_experiment
    from probes.metrics import balanced_accuracy, top_k_indices
    from probes.names import resolve_names
    from probes.supcon import check_encoder_split

    check_encoder_split(store, config.model, split)
    kinds = cv.foil_kinds(config.foils, config.controls)
    cv.check_controls(store, config.controls, kinds if config.forced_choice else ())
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    kw = dict(view=config.view, split=split, names=task, allow_incomplete=config.allow_incomplete)
    tr = load_xy(store, config.model, subset="train", **kw)
    va = load_xy(store, config.model, subset="val", **kw)
    te = load_xy(store, config.model, subset="test", **kw)
    t_load = time.perf_counter() - t0
    C = len(task.names)
    ks = tuple(int(k) for k in ([config.k] if config.k is not None else config.ks))
    temps = tuple(float(t) for t in ([config.temperature] if config.temperature is not None else config.temperatures))
    if not ks or min(ks) < 1 or not temps or min(temps) <= 0:
        raise ProbeConfigError(f"ks must be positive integers and temperatures > 0, got {ks} and {temps}")
    t1 = time.perf_counter()
    k, T, table = select_k_and_temperature(tr.X, tr.y, va.X, va.y, n_classes=C, ks=ks, temperatures=temps,
                                           device=config.device)
    t_select = time.perf_counter() - t1
    tv_y = np.concatenate([tr.y, va.y])
    probe = KNNProbe((k,), k=k, temperature=T, device=config.device).fit(np.concatenate([tr.X, va.X]), tv_y)
    t2 = time.perf_counter()
    result = probe.search(te.X)
    labels = probe.y_index_[result.indices]
    scores = _widen(weighted_votes(labels, result.similarities, n_classes=len(probe.classes_), k=k, temperature=T),
                    probe.classes_, C)
    t_search = time.perf_counter() - t2
    chosen = "chosen on validation" if (config.k is None or config.temperature is None) else "fixed in the config"
    extra = {"selection": table, "k": k, "temperature": T, "k_and_temperature": chosen,
             "selection_database": "train", "selection_queries": "val", "search_device": probe.search_device_,
             "database": "train+val", "queries": "test"}
    rows = cv.stack_subsets(tr, va, te)
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        groups = None if tr.groups is None else np.concatenate([tr.groups, va.groups])
        null_probas, null_labels = [], []
        for i in range(config.null_repeats):
            # Refitting kNN on shuffled names is relabelling its database: the search is reused.
            y_perm = stats.shuffle_names_across_identities(tv_y, groups, seed=config.random_state + i)
            votes = weighted_votes(y_perm[result.indices], result.similarities, n_classes=C, k=k, temperature=T)
            null_probas.append(votes)
            null_labels.append(y_perm)
        extra["forced_choice"] = forced_choice_report(
            scores, te.y, train_labels=tv_y, groups=te.groups, seed=config.random_state,
            null_probas=null_probas or None, null_train_labels=null_labels or None, foil_kinds=kinds,
            name_values=cv.foil_values(store, kinds, names=task.names, y=rows["y"], rows=rows["rows"],
                                       subset=rows["subset"]))
    experiment = experiment or experiment_name(config)
    log = [f"kNN {experiment}: k={k} T={T} {chosen} (validation balanced accuracy over {len(table)} (k, T)); "
           f"{len(tr) + len(va)} database rows, {len(te)} queries, faiss {probe.search_device_}"]
    controls, t_controls = None, 0.0
    if config.controls:
        controls, t_controls = cv.run_controls(
            store, covariates=config.controls,
            factory=lambda classes: SelectedKNN(classes=classes, ks=ks, temperatures=temps, device=config.device),
            names=task.names, observed=balanced_accuracy(te.y, top_k_indices(scores, k=1)[:, 0]),
            n_permutations=config.control_permutations, n_boot=config.n_boot, seed=config.random_state,
            refits="the validation choice of k and T (train as the database), then train+validation as the database",
            log=log.append, **rows)
    cfg = {"family": "knn", "experiment": experiment, **config_record(config),
           "view": te.view, "name_task": task.info(), "probe": {**probe.params(), "chosen_on": chosen}}
    extra["seed_group"] = seed_group  # the multi-seed experiment this run belongs to (probes compare)
    return finish_experiment(
        out, experiment=experiment, scores=scores, y_true=te.y, names=task.names, image_ids=te.image_ids,
        groups=te.groups, train_labels=tv_y, config=cfg, split_info=split.info(), store_path=store.path,
        model_spec=store.model_spec(config.model),
        timings={"load_s": t_load, "select_s": t_select, "search_s": t_search, "controls_s": t_controls},
        name_task=task, n_boot=config.n_boot, seed=config.random_state, extra=extra, log=log, controls=controls,
        incomplete=cv.incomplete_reasons(tr, va, te))
