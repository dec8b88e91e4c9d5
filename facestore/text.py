"""Name x template text embeddings for zero-shot probes, stored next to the image vectors.

For every name of the store's index and every template (default: the plan's five), the text
``template.format(name)`` is encoded with the model's text tower, unnormalised, into the joint
space of the image view used for zero-shot. The ``(C, T, D)`` array is written with the model's
own logit scale and bias (``probes.zeroshot`` normalises, averages over templates and scores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facestore.errors import FacestoreError, TemplateError  # TemplateError: importable from here too

#: The plan's five prompt templates (experiment 3.5), in its order.
PLAN_TEMPLATES: tuple[str, ...] = (
    "a photo of a person named {}",
    "a face photo of someone called {}",
    "{}, a common first name",
    "this person's name is {}",
    "a portrait of {}",
)

#: Prompts that say the name is the pictured person's *first* name, not a celebrity's full name.
NAME_TAILORED_TEMPLATES: tuple[str, ...] = (
    "a photo of a person whose first name is {}",
    "a close-up face photo of someone named {}",
    "a headshot of a person called {}",
    "my first name is {}",
    "a passport photo of {}",
    "hi, my name is {}",
)

#: Built-in template sets, by the name they are stored under (``--template-set``).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "plan": PLAN_TEMPLATES,
    "name-tailored": NAME_TAILORED_TEMPLATES,
}


@dataclass(frozen=True)
class TextReport:
    """What :func:`build_text_embeddings` stored."""

    model: str
    template_set: str
    n_names: int
    templates: tuple[str, ...]
    dim: int
    logit_scale: float
    logit_bias: float | None
    runtime: dict[str, Any]

    def summary(self) -> str:
        bias = "none" if self.logit_bias is None else f"{self.logit_bias:.4g}"
        return (f"{self.model}: stored text embeddings {self.n_names} names x {len(self.templates)} templates "
                f"x {self.dim} as template set {self.template_set!r} (logit scale {self.logit_scale:.4g}, bias {bias})")


def read_templates(path: str | os.PathLike) -> tuple[str, ...]:
    """Templates from a text file: one per line, each with one ``{}`` for the name; ``#`` lines are comments."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TemplateError(f"cannot read templates file {path}: {e.strerror or e}") from None
    templates = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return check_templates(templates, source=str(path))


def check_templates(templates: Sequence[str], *, source: str = "templates") -> tuple[str, ...]:
    """Validate templates: non-empty, unique, each with exactly one ``{}`` slot for the name."""
    templates = tuple(templates)
    if not templates:
        raise TemplateError(f"{source}: no templates; give at least one line like 'a photo of a person named {{}}'")
    for t in templates:
        if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
            raise TemplateError(f"{source}: template {t!r} must contain exactly one '{{}}' where the name goes "
                                "and no other braces")
    dupes = sorted({t for t in templates if templates.count(t) > 1})
    if dupes:
        raise TemplateError(f"{source}: duplicate templates {dupes}; list each once")
    return templates


def build_text_embeddings(
    store: Any,
    model: str,
    *,
    templates: Sequence[str] | None = None,
    template_set: str = "plan",
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> TextReport:
    """Encode every name x template with ``model``'s text tower and store it as ``template_set``.

    ``store`` is a path or an open store; the names are the store index's names (label order).
    ``templates`` defaults to the built-in set named ``template_set`` (:data:`TEMPLATE_SETS`:
    the plan's five, or ``name-tailored``). Writing the same set again replaces it.
    """
    from facestore.models import get_spec, load_encoder
    from facestore.models.base import TextTowerError
    from facestore.store.store import Store, open_store

    spec = get_spec(model)
    if not spec.text:
        raise TextTowerError(model)
    if templates is None:
        if template_set not in TEMPLATE_SETS:
            raise TemplateError(
                f"no built-in template set {template_set!r} (built in: {', '.join(TEMPLATE_SETS)}); "
                "pass --templates FILE to store your own under that name"
            )
        templates = TEMPLATE_SETS[template_set]
    templates = check_templates(templates)
    st = store if isinstance(store, Store) else open_store(store, mode="a")
    names = list(st.index.names)
    if not names:
        raise FacestoreError(f"store {store} has no names in its index; build it with `facestore build` first")
    encoder = load_encoder(model, weights=None if weights is None else os.fspath(weights), device=device)
    texts = [t.format(n) for n in names for t in templates]  # name-major: reshapes to (C, T)
    parts = [np.asarray(encoder.encode_text(texts[i:i + batch_size]), dtype=np.float32)
             for i in range(0, len(texts), batch_size)]
    emb = np.concatenate(parts, axis=0)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise FacestoreError(f"{model}: the text tower returned shape {emb.shape} for {len(texts)} texts; "
                             "a bug in its family module")
    if not np.isfinite(emb).all():
        raise FacestoreError(f"{model}: the text tower returned NaN/inf values; check the weights")
    emb = emb.reshape(len(names), len(templates), -1)
    params = encoder.text_logit_params()
    scale = float(params["logit_scale"])
    bias = None if params.get("logit_bias") is None else float(params["logit_bias"])
    with st.lock(model, owner=f"facestore text (pid {os.getpid()})"):
        st.write_text_embeddings(model, template_set=template_set, names=names, templates=list(templates),
                                 embeddings=emb, logit_scale=scale, logit_bias=bias, spec=encoder.resolved_spec())
    return TextReport(model=model, template_set=template_set, n_names=len(names), templates=templates,
                      dim=int(emb.shape[2]), logit_scale=scale, logit_bias=bias, runtime=encoder.runtime())
