"""Zero-shot name classification from the text embeddings in the store (experiment 3.5).

A zero-shot classifier is just a linear model (open_clip ``zero_shot_classifier.py``): one text
vector per name, so ``decision_function(X) = normalize(X) @ coef_.T + intercept_`` exactly as for
a trained linear probe. ``coef_`` is ``logit_scale * W^T`` where ``W`` (D, C) holds the
name vectors:

- one template: the L2-normalised text embedding of that prompt;
- ``"ensemble"``: the mean of the L2-normalised embeddings over the templates, renormalised.

CLIP logits are ``logit_scale * cos``; SigLIP logits are ``logit_scale * cos + logit_bias`` with
the model's own scale and bias kept (its per-pair probability is ``sigmoid(logit)``:
:meth:`ZeroShotClassifier.pair_proba`). ``predict_proba`` is the softmax over names of the logits,
a distribution over the names for the shared metrics; its argmax equals the sigmoid's.


Text encoders carry a strong name-frequency prior (frequent web names win). Prior correction,
fitted on **validation** images only (never test), removes it from the decision:

- ``"mean-logit"``: subtract each name's mean logit over the validation images (no labels used);
- ``"fit-bias"``: fit one additive bias per name maximising the validation log-likelihood (which
  absorbs the text prior and puts the validation name frequencies in its place), then subtract
  the log of those validation frequencies (Laplace-smoothed): what is left is the face evidence
  with a uniform prior over names.

As for the linear probe, :meth:`ZeroShotClassifier.predict_proba` is the model's own softmax
(its logit scale and bias, no prior correction): forced choice and calibration use it.
:meth:`~ZeroShotClassifier.decision_function` (and :meth:`~ZeroShotClassifier.predict_proba_adjusted`)
carry the correction, and :meth:`~ZeroShotClassifier.predict` follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.exceptions import NotFittedError

# The template sets live beside the text embeddings they produce (facestore.text), so that the
# stored prompts and the probes' names for them cannot drift apart.
from facestore.text import NAME_TAILORED_TEMPLATES, PLAN_TEMPLATES, TEMPLATE_SETS  # noqa: F401 (re-exported)
from probes.covariates import ProtocolOptions
from probes.errors import ProbeConfigError

if TYPE_CHECKING:
    from probes.names import NameTask

PRIOR_CORRECTIONS = ("none", "mean-logit", "fit-bias")


def _normalize(a: np.ndarray, axis: int = -1) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=axis, keepdims=True), 1e-12)


def class_vectors(embeddings: np.ndarray, *, templates: list[str] | tuple[str, ...], template: str | int = "ensemble"
                  ) -> np.ndarray:
    """``(C, D)`` unit name vectors from text embeddings ``(C, T, D)``.

    ``template`` is ``"ensemble"`` (mean of normalised vectors over templates, renormalised),
    a template index, or the template string itself.
    """
    E = np.asarray(embeddings)
    if E.ndim != 3 or E.shape[1] != len(templates):
        raise ProbeConfigError(f"text embeddings must be (names, templates={len(templates)}, dim), got {E.shape}")
    if template == "ensemble":
        return _normalize(_normalize(E).mean(axis=1))
    if isinstance(template, (int, np.integer)):
        if not 0 <= template < len(templates):
            raise ProbeConfigError(f"template index {template} out of range; {len(templates)} templates exist")
        return _normalize(E[:, int(template)])
    if template in templates:
        return _normalize(E[:, list(templates).index(template)])
    raise ProbeConfigError(f"unknown template {template!r}; use 'ensemble', an index, or one of {list(templates)}")


class ZeroShotClassifier:
    """Zero-shot classifier over names from stored text embeddings; a linear model at heart.

    Parameters
    ----------
    template : ``"ensemble"``, a template index or a template string.
    prior_correction : ``"none"``, ``"mean-logit"`` or ``"fit-bias"`` (fitted on validation images).
    bias_l2 : L2 penalty on the per-name biases of ``"fit-bias"`` (keeps names absent from
        validation at zero).

    ``y_val`` are names or indices into the text embeddings' names.
    ``fit(text, X_val=None, y_val=None)`` takes a ``TextEmbeddings`` (``names``, ``templates``,
    ``embeddings`` (C, T, D), ``logit_scale``, ``logit_bias``) from ``store.text_embeddings``.
    """

    def __init__(self, template: str | int = "ensemble", *, prior_correction: str = "none",
                 bias_l2: float = 1e-3) -> None:
        self.template = template
        self.prior_correction = prior_correction
        self.bias_l2 = bias_l2

    def fit(self, text, X_val=None, y_val=None) -> ZeroShotClassifier:
        """Build ``coef_`` / ``intercept_`` from ``text``; fit the prior correction on validation."""
        if self.prior_correction not in PRIOR_CORRECTIONS:
            raise ProbeConfigError(f"prior_correction must be one of {PRIOR_CORRECTIONS}, got {self.prior_correction!r}")
        W = class_vectors(text.embeddings, templates=list(text.templates), template=self.template)
        scale = float(text.logit_scale)
        bias = 0.0 if text.logit_bias is None else float(text.logit_bias)
        self.classes_ = np.asarray(list(text.names))
        self.templates_ = list(text.templates)
        self.logit_scale_ = scale
        self.logit_bias_ = None if text.logit_bias is None else bias
        self.kind_ = "clip" if text.logit_bias is None else "siglip"
        self.coef_ = (scale * W).astype(np.float32)  # (C, D), as sklearn linear models
        self.intercept_ = np.full(len(self.classes_), bias, dtype=np.float64)
        self.prior_offset_ = np.zeros(len(self.classes_), dtype=np.float64)
        self.n_features_in_ = W.shape[1]
        if self.prior_correction != "none":
            if X_val is None:
                raise ProbeConfigError(f"prior_correction={self.prior_correction!r} needs validation images (X_val)")
            self.prior_offset_ = self._fit_prior(X_val, y_val)
            self.intercept_ = self.intercept_ + self.prior_offset_
        return self

    def _raw_logits(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ProbeConfigError(f"X must be (n, {self.n_features_in_}) image embeddings of the text model's space, "
                             f"got {X.shape}")
        return _normalize(X).astype(np.float32) @ self.coef_.T + np.full(len(self.classes_), self.logit_bias_ or 0.0)

    def _fit_prior(self, X_val, y_val) -> np.ndarray:
        logits = self._raw_logits(X_val).astype(np.float64)
        if self.prior_correction == "mean-logit":
            return -(logits.mean(axis=0) - logits.mean())
        if y_val is None:
            raise ProbeConfigError("prior_correction='fit-bias' needs validation labels (y_val)")
        y_val = np.asarray(y_val)
        if np.issubdtype(y_val.dtype, np.integer):  # label indices into classes_
            if y_val.min() < 0 or y_val.max() >= len(self.classes_):
                raise ProbeConfigError(f"validation label indices must be in [0, {len(self.classes_)})")
            y_idx = y_val.astype(np.int64)
        else:
            pos = {c: i for i, c in enumerate(self.classes_)}
            try:
                y_idx = np.array([pos[v] for v in y_val], dtype=np.int64)
            except KeyError as e:
                raise ProbeConfigError(f"validation label {e.args[0]!r} is not among the text embeddings' names") from None
        # logits + b fit the validation images *with* their name frequencies; removing those
        # frequencies leaves the prior-free decision (adding b alone would add the prior).
        b = _fit_class_biases(logits, y_idx, l2=self.bias_l2)
        C = len(self.classes_)
        log_prior_val = np.log((np.bincount(y_idx, minlength=C) + 1.0) / (len(y_idx) + C))
        out = b - log_prior_val
        return out - out.mean()

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("this ZeroShotClassifier is not fitted yet; call fit(text_embeddings) first")

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n, C)``: ``normalize(X) @ coef_.T + intercept_`` (scale, bias and prior correction)."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ProbeConfigError(f"X must be (n, {self.n_features_in_}), got {X.shape}")
        return (_normalize(X).astype(np.float32) @ self.coef_.T).astype(np.float64) + self.intercept_

    def raw_logits(self, X) -> np.ndarray:
        """The model's own logits ``(n, C)``: scale and bias, no prior correction."""
        return self.decision_function(X) - self.prior_offset_

    def predict_proba(self, X) -> np.ndarray:
        """The model's own softmax over names (no prior correction; columns follow ``classes_``)."""
        return _softmax(self.raw_logits(X))

    def predict_proba_adjusted(self, X) -> np.ndarray:
        """Softmax of :meth:`decision_function`: the prior-corrected probabilities."""
        return _softmax(self.decision_function(X))

    def pair_proba(self, X) -> np.ndarray:
        """The model's own per-pair probability: ``sigmoid(logit)`` for SigLIP, the softmax for CLIP."""
        if self.kind_ == "clip":
            return self.predict_proba(X)
        return 1.0 / (1.0 + np.exp(-self.raw_logits(X)))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def score(self, X, y) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def params(self) -> dict:
        self._check_fitted()
        return {"template": self.template if isinstance(self.template, str) else self.templates_[int(self.template)],
                "templates": self.templates_, "prior_correction": self.prior_correction, "kind": self.kind_,
                "logit_scale": self.logit_scale_, "logit_bias": self.logit_bias_, "bias_l2": self.bias_l2}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _fit_class_biases(logits: np.ndarray, y_idx: np.ndarray, *, l2: float) -> np.ndarray:
    """Per-class additive biases maximising ``mean log softmax(logits + b)[y] - l2 * |b|^2`` (convex)."""
    import torch

    z = torch.from_numpy(logits)
    y = torch.from_numpy(y_idx.astype(np.int64))
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z + b, y) + l2 * (b * b).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = b.detach().numpy()
    return out - out.mean()


@dataclass(frozen=True)
class TextEmbeddingsArrays:
    """A stand-in for the store's ``TextEmbeddings`` built from arrays (tests, notebooks)."""

    names: tuple[str, ...]
    templates: tuple[str, ...]
    embeddings: np.ndarray
    logit_scale: float
    logit_bias: float | None = None


@dataclass(frozen=True)
class ZeroShotConfig(ProtocolOptions):
    """One zero-shot experiment (recorded in config.json).

    ``controls``, ``control_permutations``, ``foils``, ``allow_incomplete``: as
    :class:`~probes.linear_experiment.LinearConfig`'s. Nothing is trained, so the within-stratum
    null shuffles the TEST names across test identities within each value over the fixed
    predictions, and "from the face" is the value of the predicted name.
    """

    model: str
    view: str | None = None
    template_set: str = "plan"
    template: str = "ensemble"
    prior_correction: str = "none"
    names: str | NameTask = "all"
    min_images: int = 0
    n_boot: int = 1000
    random_state: int = 0


def _task_text(text, task_names):
    """The text embeddings restricted to (and ordered as) the task's names."""
    pos = {n: i for i, n in enumerate(text.names)}
    missing = [n for n in task_names if n not in pos]
    if missing:
        raise ProbeConfigError(
            f"{len(missing)} task names have no text embedding (e.g. {missing[:5]}); rebuild the text embeddings "
            "after syncing the index (`facestore text`)")
    rows = [pos[n] for n in task_names]
    return TextEmbeddingsArrays(names=tuple(task_names), templates=tuple(text.templates),
                                embeddings=np.asarray(text.embeddings)[rows], logit_scale=text.logit_scale,
                                logit_bias=text.logit_bias)


def experiment_name(config: ZeroShotConfig) -> str:
    """The default experiment (folder) name of a zero-shot config."""
    from probes.knn import task_slug

    tag = "" if config.prior_correction == "none" else f"_{config.prior_correction}"
    return f"{config.model}_zeroshot_{config.template_set}-{config.template}{tag}_{task_slug(config.names)}"


def _has_text_tower(model: str) -> bool | None:
    """Whether the registry model has a text tower (None: not a registry name, e.g. an imported group)."""
    from facestore.models.registry import get_spec

    try:
        return bool(get_spec(model).text)
    except LookupError:  # ModelNotFoundError: an imported group with its own name
        return None


def no_text_reason(model: str, template_set: str) -> str:
    """Why a zero-shot experiment cannot run; suggests ``facestore text`` only for text models."""
    has_text = _has_text_tower(model)
    if has_text:
        return f"no text embeddings {template_set!r} for {model}; add them with: facestore text STORE --model {model}"
    if has_text is None:
        return (f"no text embeddings {template_set!r} for {model}, and {model} is not a registry model, so "
                "`facestore text` cannot make them; zero-shot needs a model with a text tower")
    return (f"{model} has no text tower (registry spec text=False): zero-shot cannot run on it; "
            "it needs an image-text model such as clip-vit-b-32 or siglip-base")


def run_zeroshot(store, *, config: ZeroShotConfig, split, out, experiment: str | None = None,
            seed_group: str | None = None) -> dict:
    """Experiment 3.5: zero-shot names from stored text embeddings, evaluated on the test rows once.

    The prior correction is fitted on the validation rows; every single template and the
    ensemble are also scored on validation (``extra.per_template_val``) so that a template can be
    chosen without touching test.
    """
    import time

    from probes import covariates as cv
    from probes.data import load_xy
    from probes.evaluation import config_record, finish_experiment
    from probes.metrics import balanced_accuracy, top_k_indices
    from probes.names import resolve_names

    kinds = cv.foil_kinds(config.foils, config.controls)
    cv.check_controls(store, config.controls, kinds if config.forced_choice else ())
    t0 = time.perf_counter()
    task = resolve_names(store, config.names, min_images=config.min_images)
    kw = dict(view=config.view, split=split, names=task, allow_incomplete=config.allow_incomplete)
    tr, va, te = (load_xy(store, config.model, subset=s, **kw) for s in ("train", "val", "test"))
    try:
        stored_text = store.text_embeddings(config.model, config.template_set)
    except LookupError as e:
        # The store's own hint is `facestore text --model M`, which fails for a model without a
        # text tower (pixels-32, an imported group): say what zero-shot needs instead.
        if _has_text_tower(config.model):
            raise
        raise type(e)(no_text_reason(config.model, config.template_set)) from None
    text = _task_text(stored_text, task.names)
    template = int(config.template) if str(config.template).isdigit() else config.template
    clf = ZeroShotClassifier(template, prior_correction=config.prior_correction).fit(text, va.X, va.y)
    scores = clf.decision_function(te.X)
    per_template = {}
    for t in ["ensemble", *range(len(text.templates))]:
        c = ZeroShotClassifier(t, prior_correction=config.prior_correction).fit(text, va.X, va.y)
        per_template[t if t == "ensemble" else text.templates[t]] = balanced_accuracy(va.y, c.decision_function(va.X).argmax(1))
    t_fit = time.perf_counter() - t0
    trainval_y = np.concatenate([tr.y, va.y])
    extra = {"per_template_val_balanced_accuracy": per_template, "kind": clf.kind_,
             "logit_scale": clf.logit_scale_, "logit_bias": clf.logit_bias_,
             "prior_offset": clf.prior_offset_.tolist(), "prior_fitted_on": "val" if config.prior_correction != "none" else None}
    if config.forced_choice:
        from probes.forced_choice import forced_choice_report

        # The model's own probabilities (no prior correction). Its null shuffles test names across
        # identities over them: exact here, since the classifier never saw a training name.
        rows = cv.stack_subsets(tr, va, te)
        extra["forced_choice"] = forced_choice_report(
            clf.predict_proba(te.X), te.y, train_labels=trainval_y, groups=te.groups, seed=config.random_state,
            null_repeats=config.null_repeats, foil_kinds=kinds,
            name_values=cv.foil_values(store, kinds, names=task.names, y=rows["y"], rows=rows["rows"],
                                       subset=rows["subset"]))
    experiment = experiment or experiment_name(config)
    log = [f"zero-shot {experiment}: {clf.kind_} scale {clf.logit_scale_:.4g} bias {clf.logit_bias_}, "
           f"templates {config.template_set}/{config.template}, prior correction {config.prior_correction}"]
    controls, t_controls = None, 0.0
    if config.controls:
        pred = top_k_indices(scores, k=1)[:, 0]
        controls, t_controls = cv.run_controls(
            store, covariates=config.controls, factory=None, names=task.names,
            observed=balanced_accuracy(te.y, pred), n_permutations=config.control_permutations,
            n_boot=config.n_boot, seed=config.random_state, fixed_predictions=pred,
            refits="nothing (zero-shot trains nothing): the test names are shuffled across test identities within "
                   "each value over the fixed predictions; from the face = the value of the predicted name",
            log=log.append, **cv.stack_subsets(tr, va, te))
    cfg = {"family": "zeroshot", "experiment": experiment, **config_record(config), "view": te.view,
           "name_task": task.info(), "probe": clf.params()}
    extra["seed_group"] = seed_group  # the multi-seed experiment this run belongs to (probes compare)
    from probes.linear_experiment import accepts_probabilities

    kwargs = {"probabilities": clf.predict_proba(te.X)} if accepts_probabilities() else {}
    return finish_experiment(
        out, experiment=experiment, scores=scores, y_true=te.y, names=task.names, image_ids=te.image_ids,
        groups=te.groups, train_labels=trainval_y, config=cfg, split_info=split.info(), store_path=store.path,
        model_spec=store.model_spec(config.model), timings={"fit_s": t_fit, "controls_s": t_controls},
        name_task=task, n_boot=config.n_boot, seed=config.random_state, extra=extra, log=log, controls=controls,
        incomplete=cv.incomplete_reasons(tr, va, te), **kwargs)
