"""Zero-shot: a (D, C) linear model from text embeddings; ensembles, SigLIP scale/bias, prior correction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.zeroshot import (NAME_TAILORED_TEMPLATES, PLAN_TEMPLATES, TEMPLATE_SETS, TextEmbeddingsArrays,
                             ZeroShotClassifier, class_vectors)


def _text(C=5, T=3, D=8, seed=0, bias=None, scale=100.0):
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(C, T, D)) * rng.uniform(0.5, 3, size=(C, T, 1))  # unequal norms
    return TextEmbeddingsArrays(names=tuple(f"n{c}" for c in range(C)), templates=tuple(f"t{t} {{}}" for t in range(T)),
                                embeddings=E.astype(np.float32), logit_scale=scale, logit_bias=bias)


def test_template_sets_are_data():
    assert TEMPLATE_SETS["plan"] == PLAN_TEMPLATES and len(PLAN_TEMPLATES) == 5
    assert all(t.count("{}") == 1 for t in PLAN_TEMPLATES + NAME_TAILORED_TEMPLATES)


def test_ensemble_is_mean_of_normalised_then_renormalised():
    text = _text()
    E = text.embeddings.astype(np.float64)
    unit = E / np.linalg.norm(E, axis=2, keepdims=True)
    ref = unit.mean(1) / np.linalg.norm(unit.mean(1), axis=1, keepdims=True)
    np.testing.assert_allclose(class_vectors(E, templates=text.templates), ref, rtol=1e-6)
    np.testing.assert_allclose(class_vectors(E, templates=text.templates, template=1),
                               unit[:, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown template"):
        class_vectors(E, templates=text.templates, template="nope {}")


def test_clip_and_siglip_logits_follow_the_model():
    X = np.random.default_rng(1).normal(size=(7, 8)).astype(np.float32)
    cos = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ class_vectors(_text().embeddings, templates=_text().templates).T
    clip = ZeroShotClassifier().fit(_text(scale=100.0))
    np.testing.assert_allclose(clip.decision_function(X), 100.0 * cos, rtol=1e-4, atol=1e-4)
    assert clip.kind_ == "clip"
    np.testing.assert_allclose(clip.pair_proba(X), clip.predict_proba(X))
    sig = ZeroShotClassifier().fit(_text(scale=10.0, bias=-12.0))
    np.testing.assert_allclose(sig.decision_function(X), 10.0 * cos - 12.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sig.pair_proba(X), 1 / (1 + np.exp(-(10.0 * cos - 12.0))), rtol=1e-4)
    np.testing.assert_allclose(sig.predict_proba(X).sum(1), 1.0)
    # It is a linear model: decision = normalize(X) @ coef_.T + intercept_.
    assert sig.coef_.shape == (5, 8) and sig.intercept_.shape == (5,)


def _prior_world(seed=0):
    """Text vectors where name 0 is close to every image (a 'frequent web name')."""
    rng = np.random.default_rng(seed)
    C, D = 6, 16
    centres = rng.normal(size=(C, D))
    common = 3.0 * rng.normal(size=D) / np.sqrt(D)  # a direction every image shares
    text = centres.copy()
    text[0] = centres[0] + 2.0 * common
    y = rng.integers(0, C, size=600)
    X = centres[y] + common + 1.0 * rng.normal(size=(600, D))
    T = TextEmbeddingsArrays(names=tuple(f"n{c}" for c in range(C)), templates=("{}",),
                             embeddings=text[:, None, :].astype(np.float32), logit_scale=50.0)
    return T, X[:300], y[:300], X[300:], y[300:]


@pytest.mark.parametrize("correction", ["mean-logit", "fit-bias"])
def test_prior_correction_fitted_on_validation_reduces_the_frequent_name_bias(correction):
    from probes.metrics import balanced_accuracy

    T, Xv, yv, Xt, yt = _prior_world()
    raw = ZeroShotClassifier().fit(T)
    fixed = ZeroShotClassifier(prior_correction=correction).fit(T, Xv, yv)
    share_raw = np.mean(raw.decision_function(Xt).argmax(1) == 0)
    share_fixed = np.mean(fixed.decision_function(Xt).argmax(1) == 0)
    assert share_fixed < share_raw
    assert balanced_accuracy(yt, fixed.decision_function(Xt).argmax(1)) > balanced_accuracy(
        yt, raw.decision_function(Xt).argmax(1))
    with pytest.raises(ValueError, match="needs validation"):
        ZeroShotClassifier(prior_correction=correction).fit(T)


def test_fit_bias_removes_the_name_prior_on_a_face_blind_problem():
    # Faces carry no name; the text encoder favours name 0, validation and test favour name 3.
    from probes.metrics import balanced_accuracy, prediction_cv

    rng = np.random.default_rng(3)
    C, D = 8, 16
    centres = rng.normal(size=(C, D))
    common = rng.normal(size=D)
    text = centres.copy()
    text[0] += 3 * common
    prior = np.roll(1.0 / np.arange(1, C + 1), 3)
    y = rng.choice(C, size=6000, p=prior / prior.sum())
    X = common + rng.normal(size=(6000, D))  # independent of y: face-blind
    T = TextEmbeddingsArrays(names=tuple(f"n{c}" for c in range(C)), templates=("{}",),
                             embeddings=text[:, None, :].astype(np.float32), logit_scale=50.0)
    raw = ZeroShotClassifier().fit(T)
    fixed = ZeroShotClassifier(prior_correction="fit-bias").fit(T, X[:2000], y[:2000])
    Xt, yt = X[2000:], y[2000:]
    pred_raw, pred_fixed = raw.predict(Xt), fixed.predict(Xt)
    idx = {n: i for i, n in enumerate(raw.classes_)}
    pr, pf = np.array([idx[p] for p in pred_raw]), np.array([idx[p] for p in pred_fixed])
    assert prediction_cv(pf, n_classes=C) < prediction_cv(pr, n_classes=C) - 0.5
    se = np.sqrt(np.sum([(1 / C) * (1 - 1 / C) / max(1, np.sum(yt == c)) for c in range(C)])) / C
    assert balanced_accuracy(yt, pf) >= balanced_accuracy(yt, pr) - 2 * se
    # The correction moves the decision; predict_proba stays the model's own softmax.
    np.testing.assert_allclose(fixed.predict_proba(Xt), raw.predict_proba(Xt), rtol=1e-6)
    assert not np.allclose(fixed.predict_proba_adjusted(Xt), raw.predict_proba(Xt))


def test_cli_zeroshot_on_a_store_with_text_embeddings(tmp_path):
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    store = planted_store(tmp_path / "s.zarr", n_names=5, images_per_person=4, dim=16, signal=2.0, seed=1)
    # Text vectors = each name's mean image vector: the zero-shot classifier must find the signal.
    X, ids = store.load("toy", "embedding")
    names = list(store.index.names)
    rows = store.rows_of(ids)
    lab = np.asarray(store.index.labels)[rows]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    E = np.stack([Xn[lab == c].mean(0) for c in range(len(names))])[:, None, :] * np.ones((1, 2, 1))
    store.write_text_embeddings("toy", template_set="plan", names=names, templates=["a {}", "b {}"],
                                embeddings=E, logit_scale=10.0, logit_bias=-5.0, spec={"name": "toy"})
    res = CliRunner().invoke(main, ["zeroshot", "--store", str(tmp_path / "s.zarr"), "--model", "toy",
                                    "--prior-correction", "mean-logit", "--out", str(tmp_path / "r"),
                                    "--n-boot", "200", "--forced-choice"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "r" / "track3_toy_zeroshot_plan-ensemble_mean-logit_all"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["family"] == "zeroshot" and summary["extra"]["kind"] == "siglip"
    assert summary["extra"]["logit_bias"] == -5.0 and summary["extra"]["prior_fitted_on"] == "val"
    assert summary["ci"]["balanced_accuracy"][0] > 1 / 5
    assert set(summary["extra"]["per_template_val_balanced_accuracy"]) == {"ensemble", "a {}", "b {}"}
    missing = CliRunner().invoke(main, ["zeroshot", "--store", str(tmp_path / "s.zarr"), "--model", "toy",
                                        "--template-set", "name-tailored", "--out", str(tmp_path / "r")])
    assert missing.exit_code != 0 and "facestore text` cannot make them" in missing.output


def test_cli_zeroshot_on_a_model_without_text_tower_says_what_it_needs(tmp_path):
    """The store's own hint (`facestore text --model pixels-32`) fails for a model without a text
    tower: the error names the models zero-shot needs instead (exit 2, as in docs/faq.md)."""
    from click.testing import CliRunner

    from probes.cli import main
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", n_names=4, dim=8, models=("pixels-32",))
    res = CliRunner().invoke(main, ["zeroshot", "--store", str(tmp_path / "s.zarr"), "--model", "pixels-32",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "pixels-32 has no text tower" in res.output and "clip-vit-b-32 or siglip-base" in res.output
    assert "facestore text" not in res.output
