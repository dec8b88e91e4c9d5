"""``--control``, ``--within``, same-covariate foils and ``--allow-incomplete`` through the probes CLI
and ``probes track3`` (issue 12 wired, issue 11.2), on planted stores (tests/synthetic_covariates.py).

Sizes are tiny and the linear probe runs one lambda (``--lambdas 0.1``) so that the within-stratum
nulls (24 refits: p can reach 0.04 < 0.05) cost seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from facestore.store.transfer import import_embeddings
from probes.cli import main
from tests.synthetic_covariates import planted_gender_store

PLANTED = dict(names_per_gender=3, people_split=(4, 2, 3), images_per_person=4, dim=8)
FAST_LINEAR = ["--lambdas", "0.1", "--threads", "1", "--n-boot", "100"]


def _cli(args, *, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    # A user error is a message and an exit code, never a traceback.
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res


def _summary(out, folder) -> dict:
    return json.loads((out / f"track3_{folder}" / "summary.json").read_text())


@pytest.fixture(scope="module")
def gender_only(tmp_path_factory):
    """Names carry signal only through gender; a second model and text vectors for the other families."""
    root = tmp_path_factory.mktemp("gender_only")
    store, d = planted_gender_store(root / "store", name_signal=0.0, seed=3, **PLANTED)
    noise = np.random.default_rng(1).normal(size=d.X.shape).astype(np.float32)
    import_embeddings(store, "toy2", embeddings=d.X + noise, ids=d.image_ids, view="embedding", chunk_rows=64)
    names = list(store.index.names)
    Xn = d.X / np.linalg.norm(d.X, axis=1, keepdims=True)
    lab = np.array([names.index(n) for n in d.names])
    E = np.stack([Xn[lab == c].mean(0) for c in range(len(names))])[:, None, :] * np.ones((1, 2, 1))
    store.write_text_embeddings("toy", template_set="plan", names=names, templates=["a {}", "b {}"],
                                embeddings=E.astype(np.float32), logit_scale=10.0, logit_bias=-5.0,
                                spec={"name": "toy"})
    return root / "store"


@pytest.fixture(scope="module")
def gender_and_name(tmp_path_factory):
    """The same design with a name signal of its own within each gender."""
    root = tmp_path_factory.mktemp("gender_and_name")
    planted_gender_store(root / "store", name_signal=2.5, seed=3, **PLANTED)
    return root / "store"


# --------------------------------------------------------------------------- the planted verdicts


def test_gender_only_names_are_not_beyond_gender_and_within_gender_sits_at_chance(gender_only, tmp_path):
    out = tmp_path / "r"
    res = _cli(["linear", "--store", gender_only, "--model", "toy", *FAST_LINEAR, "--control", "gender",
                "--permutations", "24", "--within", "gender", "--out", out])
    s = _summary(out, "toy_linear_all")
    assert s["ci"]["balanced_accuracy"][0] > 1 / 6  # the names probe is above chance, through gender
    c = s["controls"]["gender"]
    assert {"oracle", "from_face", "beyond", "refits", "n_permutations", "seconds", "missing", "values"} <= set(c)
    b = c["beyond"]
    assert {"balanced_accuracy", "null_mean", "null_ci", "p_value", "significant", "n_permutations",
            "seconds"} <= set(b)
    assert b["n_permutations_planned"] == 24 and b["n_permutations"] <= 24 and not b["significant"]
    assert b["p_value"] > 0.05
    assert c["oracle"]["balanced_accuracy"] == pytest.approx(1 / 3)  # uniform among the 3 names of a gender
    assert c["from_face"]["covariate"]["balanced_accuracy"] > 0.9  # the face says the gender
    assert "beyond gender" in res.output and "not significant" in res.output
    for value in ("f", "m"):
        w = _summary(out, f"toy_linear_all_within-gender-{value}")
        assert w["name_task"]["within"] == {"covariate": "gender", "value": value}
        assert w["metrics"]["n_classes"] == 3 and w["chance"]["uniform"] == pytest.approx(1 / 3)
        assert w["ci"]["balanced_accuracy"][0] <= 1 / 3 <= w["ci"]["balanced_accuracy"][1]
        assert not w["controls"]  # controls qualify the overall task, not one value's
        assert f"within gender={value}" in res.output


def test_a_within_gender_name_signal_is_beyond_gender_and_within_gender_beats_chance(gender_and_name, tmp_path):
    out = tmp_path / "r"
    _cli(["linear", "--store", gender_and_name, "--model", "toy", *FAST_LINEAR, "--control", "gender",
          "--permutations", "24", "--within", "gender", "--out", out])
    b = _summary(out, "toy_linear_all")["controls"]["gender"]["beyond"]
    assert b["significant"] and b["p_value"] == pytest.approx(1 / 25)
    assert b["balanced_accuracy"] > b["null_ci"][1]
    for value in ("f", "m"):
        w = _summary(out, f"toy_linear_all_within-gender-{value}")
        assert w["ci"]["balanced_accuracy"][0] > 1 / 3


# --------------------------------------------------------------------------- every family


FAMILIES = {
    "knn": (["knn", "--model", "toy"], "toy_knn_all", "validation choice of k and T"),
    "supcon": (["supcon", "--model", "toy", "--epochs", "1", "--hidden-dim", "16", "--out-dim", "8",
                "--lambdas", "0.1", "--device", "cpu"], "toy_supcon_all", "held fixed"),
    "ensemble": (["ensemble", "--models", "toy,toy2", "--lambdas", "0.1"], "ensemble-concat_toy+toy2_all",
                 "concatenated sweep"),
    "zeroshot": (["zeroshot", "--model", "toy"], "toy_zeroshot_plan-ensemble_all", "test names are shuffled"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_writes_the_controls_block_and_same_covariate_foils(family, gender_only, tmp_path):
    args, folder, refits = FAMILIES[family]
    out = tmp_path / "r"
    _cli([*args, "--store", gender_only, "--n-boot", "50", "--control", "gender", "--permutations", "3",
          "--forced-choice", "--out", out])
    s = _summary(out, folder)
    c = s["controls"]["gender"]
    assert set(c) >= {"oracle", "from_face", "beyond"} and c["beyond"]["n_permutations"] == 3
    assert len(c["beyond"]["null"]) == 3 and refits in c["refits"]
    assert c["oracle"]["balanced_accuracy_ci"] and c["from_face"]["balanced_accuracy_ci"]
    # --control gender adds Zwebner's same-gender foils to the default protocols.
    foils = {e["foils"] for e in s["extra"]["forced_choice"]}
    assert foils == {"uniform", "popularity", "same-gender"}
    two_way = next(e for e in s["extra"]["forced_choice"] if e["foils"] == "same-gender" and e["n_way"] == 2)
    assert "raw" in two_way and "prior_corrected" in two_way


def test_permutation_count_rule_is_99_unless_given(gender_only, tmp_path):
    from probes.covariates import control_permutations

    assert control_permutations(None) == 99 and control_permutations(0) == 99 and control_permutations(7) == 7
    out = tmp_path / "r"  # zero-shot: its null re-scores fixed predictions, so 99 cost nothing
    _cli(["zeroshot", "--store", gender_only, "--model", "toy", "--n-boot", "50", "--control", "gender", "--out", out])
    b = _summary(out, "toy_zeroshot_plan-ensemble_all")["controls"]["gender"]["beyond"]
    assert b["n_permutations"] == 99 and len(b["null"]) == 99 and b["min_p_value"] == pytest.approx(0.01)


def test_same_covariate_foils_never_cross_values():
    from probes.forced_choice import forced_choice, sample_foils, train_prior

    rng = np.random.default_rng(0)
    values = np.array(["f", "m", "f", "x", "m", "f", "m", "f"])  # 4 f, 3 m, 1 x
    y = rng.integers(0, values.size, size=500)
    y = y[values[y] != "x"]  # a value with one name has no foil
    prior = np.full(values.size, 1 / values.size)
    for n_way in (2, 3):
        foils = sample_foils(y, n_classes=values.size, n_way=n_way, kind="same-gender", prior=prior, rng=rng,
                             name_values=values)
        assert foils.shape == (y.size, n_way - 1)
        assert (values[foils] == values[y][:, None]).all() and (foils != y[:, None]).all()
    P = rng.random((y.size, values.size))
    res = forced_choice(P, y, prior=train_prior(y, n_classes=values.size), n_way=2, foils="same-gender",
                        name_values=values, n_boot=50)
    assert 0 <= res.raw.accuracy <= 1


def test_unknown_covariate_lists_the_stores_and_how_to_add_one(gender_only, tmp_path):
    res = _cli(["knn", "--store", gender_only, "--model", "toy", "--control", "age", "--out", tmp_path], code=2)
    assert "has no covariate 'age' (it has: gender)" in res.output
    assert "facestore covariates" in res.output and "--name-gender" in res.output and "--from FILE.csv" in res.output
    res = _cli(["linear", "--store", gender_only, "--model", "toy", "--within", "age", "--out", tmp_path], code=2)
    assert "has no covariate 'age'" in res.output
    res = _cli(["knn", "--store", gender_only, "--model", "toy", "--foils", "bogus", "--out", tmp_path], code=2)
    assert "same-COVARIATE" in res.output


# --------------------------------------------------------------------------- --allow-incomplete


def test_a_model_with_pending_rows_is_refused_and_accepted_knowingly(gender_only, tmp_path):
    from facestore import open_store

    store = open_store(gender_only, mode="a")
    X, ids = store.load("toy", "embedding")
    rows = store.rows_of(ids)
    w = store.model_writer("cut", spec={"name": "cut", "family": "imported"}, views={"embedding": X.shape[1]},
                           dtype="float32", chunk_rows=16, kind="imported")
    full = np.zeros((store.n, X.shape[1]), np.float32)
    full[rows] = X
    chunks = list(w.pending_chunks())
    for c in chunks[::3] + chunks[1::3]:  # two chunks in three written: an import killed part-way
        a, b = w.chunk_range(c)
        w.write_chunk(c, {"embedding": full[a:b]}, np.ones(b - a, np.uint8), [""] * (b - a))
    out = tmp_path / "r"
    res = _cli(["linear", "--store", gender_only, "--model", "cut", *FAST_LINEAR, "--out", out], code=1)
    assert "not written yet in model 'cut'" in res.output and "--allow-incomplete" in res.output
    assert "facestore import" in res.output  # the command that finishes it
    assert not out.exists()
    res = _cli(["linear", "--store", gender_only, "--model", "cut", *FAST_LINEAR, "--allow-incomplete",
                "--control", "gender", "--permutations", "3", "--out", out])
    s = _summary(out, "cut_linear_all")
    assert s["incomplete"] and all("pending" in r for r in s["incomplete"])
    assert any(w.startswith("incomplete data used knowingly") for w in s["warnings"])
    assert json.loads((out / "track3_cut_linear_all" / "config.json").read_text())["allow_incomplete"] is True
    assert "incomplete data used knowingly" in res.output
    _cli(["compare", out, "--n-boot", "50", "--no-plots"])
    row = json.loads((out / "comparison.json").read_text())["experiments"][0]
    assert row["incomplete"] == s["incomplete"]
    md = (out / "track3_comparison.md").read_text()
    assert "**Incomplete data** (--allow-incomplete): cut_linear_all" in md
    assert any(r["kind"] == "incomplete" for r in json.loads((out / "comparison.json").read_text())["recommendations"])
    # The HTML report shows both on the row and on the experiment's page.
    _cli(["report", out])
    index = (out / "report" / "index.html").read_text()
    assert "incomplete data" in index and "Covariate controls: is the name signal more than the covariate?" in index
    page = (out / "report" / "track3_cut_linear_all.html").read_text()
    assert "Incomplete data, used knowingly" in page and "Is it more than the covariate?" in page
    assert "within-stratum null" in page


def test_controls_show_progress_on_stderr_and_every_seeds_verdict(gender_only, tmp_path):
    """The within-stratum null can take many times the experiment's fit and run.log is written only
    at the end, so its progress goes to stderr while it runs; with --seeds each seed's control and
    forced-choice lines are printed (the mean over seeds holds neither)."""
    res = _cli(["knn", "--store", gender_only, "--model", "toy", "--n-boot", "50", "--control", "gender",
                "--permutations", "2", "--seeds", "2", "--forced-choice", "--out", tmp_path / "r"])
    assert "control gender: 2 within-stratum permutations" in res.stderr
    assert "permutation 1/2: balanced accuracy" in res.stderr and "s left" in res.stderr
    assert res.stdout.count("  control gender: oracle") == 2  # one per seed
    assert res.stdout.count("2-way popularity foils") == 2
