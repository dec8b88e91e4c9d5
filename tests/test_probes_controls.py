"""Covariate controls: the face-blind oracle (exact), from-face, the within-stratum null, within-value
tasks and same-covariate foils, on planted data where names carry gender only / gender and more.

Planted outcomes (tests/synthetic_covariates.py; seeds checked by hand, each outcome far from its
decision boundary: the gender-only beyond p is about 0.6 for the seed used and the planted-signal
p sits at its floor 1/40):
- gender only: the names probe beats 1/C, beyond-gender is NOT significant, within-gender tasks
  sit at chance;
- gender + a within-gender name signal: beyond-gender significant, within-gender above chance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from probes import controls
from probes.errors import NotEnoughDataError, ProbeConfigError
from tests.synthetic_covariates import lda_factory, planted_gender_arrays

PERMUTATIONS = 39  # the smallest p is 1/40 = 0.025 < 0.05
SPLIT = (6, 2, 6)  # people per name in train / validation / test


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def gender_only():
    return planted_gender_arrays(seed=1, people_split=SPLIT, name_signal=0.0)


@pytest.fixture(scope="module")
def gender_and_name():
    return planted_gender_arrays(seed=1, people_split=SPLIT, name_signal=1.0)


def arrays(d):
    return dict(X=d.X, names=d.names, covariate=d.gender, subset=d.subset, groups=d.groups)


# --------------------------------------------------------------------------- the oracle, exactly
def hand_example():
    """Train: Anna fff, Mary f, John mm, Bob mmf; validation: Mary f. Test: Anna ff, Mary f,
    John m and one John image labelled f, Bob m. Names by value: f {Anna, Mary}, m {Bob, John};
    training counts Anna 3, Mary 2, John 2, Bob 3, so the mode of f is Anna and of m is Bob."""
    rows = [
        # name, value, identity, subset
        ("Anna", "f", "a1", 0), ("Anna", "f", "a1", 0), ("Anna", "f", "a1", 0),
        ("Mary", "f", "m1", 0), ("John", "m", "j1", 0), ("John", "m", "j1", 0),
        ("Bob", "m", "b1", 0), ("Bob", "m", "b1", 0), ("Bob", "f", "b1", 0),
        ("Mary", "f", "m2", 1),
        ("Anna", "f", "a2", 2), ("Anna", "f", "a2", 2), ("Mary", "f", "m3", 2),
        ("John", "m", "j2", 2), ("John", "f", "j2", 2), ("Bob", "m", "b2", 2),
        ("Zed", "m", "z1", -1),  # outside the split: ignored everywhere
    ]
    names, values, ids, subset = (np.array(c) for c in zip(*rows))
    return names, values, ids, subset.astype(np.int64)


def test_oracle_scores_equal_the_hand_computed_values():
    names, values, ids, subset = hand_example()
    o = controls.oracle_baseline(names, covariate=values, subset=subset, groups=ids, n_boot=200)
    # Uniform within the image's true value: Anna 1/2, 1/2; Mary 1/2; John m-image 1/2, John
    # f-image 0 (John's value is m); Bob 1/2. Balanced: (1/2 + 1/2 + 1/4 + 1/2) / 4.
    assert o["balanced_accuracy"] == pytest.approx(1.75 / 4, abs=1e-12)
    assert o["uniform"]["accuracy"] == pytest.approx(2.5 / 6, abs=1e-12)
    # Mode within the value: f-images -> Anna, m-images -> Bob: Anna 1, Mary 0, John 0, Bob 1.
    assert o["mode"]["answer"] == {"f": "Anna", "m": "Bob"}
    assert o["accuracy"] == pytest.approx(3 / 6, abs=1e-12)
    assert o["mode"]["balanced_accuracy"] == pytest.approx(2 / 4, abs=1e-12)
    assert o["names_by_value"] == {"f": ["Anna", "Mary"], "m": ["Bob", "John"]}
    assert o["chance"] == 0.25 and o["n_test"] == 6 and o["n_classes"] == 4
    for rule in ("uniform", "mode"):
        for metric in ("balanced_accuracy", "accuracy"):
            lo, hi = o[rule]["ci"][metric]
            assert lo <= o[rule][metric] <= hi
    json.dumps(o)


def test_name_values_majority_over_training_images_ties_to_sorted_first():
    names = np.array(["A", "A", "A", "B", "B", "C", "C", "C"])
    values = np.array(["m", "f", "f", "m", "f", "m", "m", "f"])
    subset = np.array([0, 0, 2, 0, 1, 2, 2, 2])
    got = controls.name_covariate_values(names, values, subset=subset)
    # A: training f, m -> tie -> "f" (sorts first; the test image does not count);
    # B: m (train), f (validation) -> tie -> "f"; C: no training image -> majority of all: m.
    assert got == {"A": "f", "B": "f", "C": "m"}


def test_uniform_credit_ci_matches_scipy_percentile_bootstrap():
    """One name, each image its own identity: the stratified bootstrap is the ordinary bootstrap
    of the mean; scipy's percentile interval is the reference (Monte-Carlo tolerance 0.01)."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    credit = rng.random(200)
    y = np.zeros(200, dtype=np.int64)
    got = controls._credit_bootstrap(credit, y, n_classes=1, codes=np.arange(200), n_boot=4000, alpha=0.05, seed=0)
    ref = bootstrap((credit,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert got["balanced_accuracy"] == pytest.approx(credit.mean(), abs=1e-12)
    assert got["accuracy"] == pytest.approx(credit.mean(), abs=1e-12)
    assert got["ci"]["accuracy"] == pytest.approx([ref.low, ref.high], abs=0.01)
    # Two names: every replicate keeps both (stratified), so the balanced accuracy of a name that
    # always scores 1 and one that always scores 0 is exactly 1/2 in every replicate.
    y2 = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    tight = controls._credit_bootstrap(np.r_[np.ones(10), np.zeros(10)], y2, n_classes=2, codes=np.arange(20),
                                       n_boot=200, alpha=0.05, seed=0)
    assert tight["ci"]["balanced_accuracy"] == [0.5, 0.5]


# --------------------------------------------------------------------------- the planted outcomes
def test_gender_only_names_beat_chance_but_not_the_within_gender_null(gender_only):
    b = controls.beyond_covariate(lda_factory, **arrays(gender_only), n_permutations=PERMUTATIONS, n_boot=200,
                                  log=quiet)
    # About 1/4 (one gender's 4 names) against 1/8: above chance with its cluster-bootstrap CI.
    assert b["chance"] == 1 / 8
    assert b["ci"][0] > b["chance"] and b["p_value_vs_chance"] < 0.05
    # ... but no better than the probes fitted on names shuffled within gender.
    assert not b["significant"] and b["p_value"] > 0.3
    assert b["null_mean"] == pytest.approx(0.25, abs=0.04)
    assert b["n_strata"] == 2 and "warning" not in b and b["seconds"] > 0
    # Clearly null: the sequential test stopped at the 10th null score reaching the observed one,
    # with Besag-Clifford's p = 10 / L.
    L = b["n_permutations"]
    assert b["stopped_early"] and b["n_permutations_planned"] == PERMUTATIONS and L < PERMUTATIONS
    assert len(b["null"]) == L and b["null"][-1] >= b["balanced_accuracy"]
    assert sum(v >= b["balanced_accuracy"] for v in b["null"]) == 10 and b["p_value"] == 10 / L
    json.dumps(b)
    # Every permutation (stop_after=None): the same draws continue, the classical p, the same verdict.
    full = controls.beyond_covariate(lda_factory, **arrays(gender_only), n_permutations=PERMUTATIONS, n_boot=200,
                                     stop_after=None, log=quiet)
    assert not full["stopped_early"] and full["n_permutations"] == PERMUTATIONS == len(full["null"])
    assert full["null"][:L] == b["null"]
    assert full["p_value"] == (1 + sum(v >= full["balanced_accuracy"] for v in full["null"])) / (1 + PERMUTATIONS)
    assert full["significant"] == b["significant"] is False


def test_gender_only_within_gender_tasks_sit_at_chance(gender_only):
    w = controls.within_group_scores(lda_factory, **arrays(gender_only), n_boot=200)
    assert sorted(w["values"]) == ["f", "m"] and w["skipped"] == []
    for value, res in w["values"].items():
        assert res["n_names"] == 4 and res["chance"]["uniform"] == 0.25
        assert not res["significant"], (value, res["p_value"])
        lo, hi = res["ci"]["balanced_accuracy"]
        assert lo <= 0.25 <= hi, (value, lo, hi)


def test_gender_and_name_signal_beats_the_within_gender_null(gender_and_name):
    b = controls.beyond_covariate(lda_factory, **arrays(gender_and_name), n_permutations=PERMUTATIONS, n_boot=200,
                                  log=quiet)
    assert b["significant"] and b["p_value"] == pytest.approx(1 / (1 + PERMUTATIONS))
    assert b["balanced_accuracy"] > b["null_ci"][1] + 0.2


def test_gender_and_name_signal_within_gender_tasks_beat_chance(gender_and_name):
    w = controls.within_group_scores(lda_factory, **arrays(gender_and_name), n_boot=200)
    for value, res in w["values"].items():
        assert res["significant"], value
        assert res["ci"]["balanced_accuracy"][0] > 0.25 + 0.1, value


def test_an_unstratified_null_centres_on_1_over_c_and_credits_gender(gender_only):
    """One stratum is the plain shuffle across identities: its null centres on 1/C = 1/8, half of
    what gender alone earns, so gender would pass as name signal; the within-gender null centres
    on the gender-only score, 1/4."""
    one_stratum = np.full(gender_only.names.size, "all")
    plain = controls.beyond_covariate(lda_factory, **{**arrays(gender_only), "covariate": one_stratum},
                                      n_permutations=PERMUTATIONS, n_boot=50, log=quiet)
    within = controls.beyond_covariate(lda_factory, **arrays(gender_only), n_permutations=PERMUTATIONS, n_boot=50,
                                       log=quiet)
    assert plain["n_strata"] == 1 and within["n_strata"] == 2
    assert plain["balanced_accuracy"] == within["balanced_accuracy"]  # same observed fit
    assert plain["null_mean"] == pytest.approx(1 / 8, abs=0.03)
    assert within["null_mean"] == pytest.approx(1 / 4, abs=0.03)
    assert plain["balanced_accuracy"] - plain["null_mean"] > 0.08 and plain["p_value"] < within["p_value"]


def test_within_stratum_null_is_calibrated_under_gender_only():
    """30 planted data sets without name signal, 9 permutations each: p is uniform on
    {0.1, ..., 1}, mean 0.55 (SD of the mean over 30 about 0.05; bounds at about 3 SD)."""
    ps = []
    for seed in range(100, 130):
        d = planted_gender_arrays(seed=seed, names_per_gender=3, people_split=(4, 1, 4), images_per_person=3)
        ps.append(controls.beyond_covariate(lda_factory, **arrays(d), n_permutations=9, n_boot=20,
                                            log=quiet)["p_value"])
    assert 0.4 <= float(np.mean(ps)) <= 0.7, ps
    assert np.mean(np.array(ps) <= 0.1) <= 0.2, ps


def test_from_face_reads_gender_and_the_rule_matches_the_oracle(gender_only):
    f = controls.from_face(lda_factory, **arrays(gender_only), n_boot=200)
    o = controls.oracle_baseline(gender_only.names, covariate=gender_only.gender, subset=gender_only.subset,
                                 groups=gender_only.groups, n_boot=200)
    assert f["covariate"]["balanced_accuracy"] > 0.95 and f["covariate"]["chance"] == 0.5
    assert f["covariate"]["p_value"] < 0.05 and f["covariate"]["values"] == ["f", "m"]
    # Gender read almost perfectly from the face: the from-face rules score what the oracle does.
    assert f["balanced_accuracy"] == pytest.approx(o["balanced_accuracy"], abs=0.03)
    assert f["accuracy"] == pytest.approx(o["accuracy"], abs=0.03)
    assert o["balanced_accuracy"] == pytest.approx(0.25, abs=1e-12)  # every name of a value equally guessed
    assert "uniformly" in f["uniform"]["rule"] and "most frequent training name" in f["mode"]["rule"]
    json.dumps(f)


# --------------------------------------------------------------------------- within-value tasks
def test_within_groups_rows_and_skips_with_reasons(gender_only):
    d = gender_only
    cov = d.gender.copy()
    cov[d.names == "Mary"] = "x"  # value x: a single name
    split = controls.within_groups(d.names, covariate=cov, subset=d.subset, groups=d.groups)
    kept = {g.value: g for g in split.groups}
    assert sorted(kept) == ["f", "m"] and kept["f"].names == ("Anna", "Elizabeth", "Sarah")
    for g in split.groups:
        assert np.all(cov[g.rows] == g.value) and set(d.names[g.rows]) == set(g.names)
        assert g.n_images["train"] + g.n_images["val"] + g.n_images["test"] == g.rows.size
    (skip,) = split.skipped
    assert skip["value"] == "x" and "1 name(s) with training images (at least 2 needed)" in skip["reason"]
    strict = controls.within_groups(d.names, covariate=d.gender, subset=d.subset, groups=d.groups, min_identities=100)
    assert strict.groups == () and all("identities (at least 100 needed)" in s["reason"] for s in strict.skipped)
    json.dumps(split.to_dict())


def test_within_groups_skips_a_value_without_test_identities(gender_only):
    d = gender_only
    subset = d.subset.copy()
    subset[(d.gender == "m") & (subset == 2)] = 0  # no male test images
    split = controls.within_groups(d.names, covariate=d.gender, subset=subset, groups=d.groups)
    assert [g.value for g in split.groups] == ["f"]
    assert split.skipped[0]["value"] == "m" and "no identity in test" in split.skipped[0]["reason"]


# --------------------------------------------------------------------------- permutation and foils
def test_shuffle_within_strata_moves_whole_people_and_never_crosses_strata(gender_only):
    d = gender_only
    out = controls.shuffle_names_within_strata(d.names, groups=d.groups, strata=d.gender,
                                               rng=np.random.default_rng(0))
    assert not np.array_equal(out, d.names)
    for g in np.unique(d.groups):
        assert np.unique(out[d.groups == g]).size == 1  # a person keeps one name
    assert np.all(np.vectorize(d.name_gender.get)(out) == d.gender)  # never a name of the other gender
    people = lambda labels: sorted((n, len(set(d.groups[labels == n]))) for n in np.unique(labels))  # noqa: E731
    assert people(out) == people(d.names)  # people per name kept


def test_same_covariate_foils_stay_within_value():
    from probes.forced_choice import choice_outcomes, sample_foils

    name_values = np.array(["f", "m", "f", "m", "f", "m", "f"])  # f: 0 2 4 6, m: 1 3 5
    y = np.tile(np.arange(7), 300)
    foils = controls.same_covariate_foils(y, name_values=name_values, n_way=3, rng=np.random.default_rng(0))
    ref = sample_foils(y, n_classes=7, n_way=3, kind="uniform", prior=np.full(7, 1 / 7), rng=np.random.default_rng(0))
    assert foils.shape == ref.shape == (y.size, 2) and foils.dtype == np.int64
    assert np.all(name_values[foils] == name_values[y][:, None])  # never crossing values
    assert np.all(foils != y[:, None]) and np.all(foils[:, 0] != foils[:, 1])
    # Uniform among the other same-value names: for a female name each of the 3 others appears
    # in 2/3 of trials (300 trials: binomial SD 0.027; bound 0.1).
    trials = foils[y == 0]
    for other in (2, 4, 6):
        assert abs(np.mean((trials == other).any(axis=1)) - 2 / 3) < 0.1
    # A constant scorer sits exactly at chance under these foils too.
    assert np.mean(choice_outcomes(np.ones((y.size, 7)), y, foils)) == pytest.approx(1 / 3)
    with pytest.raises(ProbeConfigError, match=r"'m' has 3 name\(s\)"):
        controls.same_covariate_foils(y, name_values=name_values, n_way=4, rng=np.random.default_rng(0))


# --------------------------------------------------------------------------- the library probe, errors
def test_covariate_controls_with_the_linear_sweep_factory():
    """The real probe family through the factory: every block present and JSON-able."""
    d = planted_gender_arrays(seed=2, names_per_gender=2, people_split=(3, 1, 2), images_per_person=3)
    lines = []
    out = controls.covariate_controls(controls.linear_factory(device="cpu", random_state=0), **arrays(d),
                                      n_permutations=1, n_boot=50, log=lines.append)
    assert set(out) == {"oracle", "from_face", "beyond"}
    assert out["beyond"]["n_permutations"] == 1 and "cannot give p < 0.05" in out["beyond"]["warning"]
    assert out["beyond"]["p_value"] in (0.5, 1.0) and 0 <= out["beyond"]["null"][0] <= 1
    assert out["from_face"]["covariate"]["balanced_accuracy"] > 0.8  # gender is planted strongly
    assert sum(line.startswith("permutation ") for line in lines) == 1
    json.dumps(out)


def test_default_permutations_let_p_reach_001():
    import inspect

    for fn in (controls.beyond_covariate, controls.covariate_controls):
        default = inspect.signature(fn).parameters["n_permutations"].default
        assert 1 / (default + 1) <= 0.01


def test_bad_inputs_say_what_to_fix(gender_only):
    d = gender_only
    with pytest.raises(ProbeConfigError, match="bin it first"):
        controls.oracle_baseline(d.names, covariate=np.linspace(0, 1, d.names.size), subset=d.subset)
    with pytest.raises(ProbeConfigError, match="subset codes must be -1, 0, 1 or 2"):
        controls.oracle_baseline(d.names, covariate=d.gender, subset=d.subset + 5)
    with pytest.raises(NotEnoughDataError, match="no test rows"):
        controls.oracle_baseline(d.names, covariate=d.gender, subset=np.minimum(d.subset, 1))
    with pytest.raises(ProbeConfigError, match="one value per image"):
        controls.oracle_baseline(d.names, covariate=d.gender[:-1], subset=d.subset)
    with pytest.raises(NotEnoughDataError, match="single value"):
        controls.from_face(lda_factory, **{**arrays(d), "covariate": np.full(d.names.size, "f")})
    with pytest.raises(ProbeConfigError, match="n_permutations must be >= 1"):
        controls.beyond_covariate(lda_factory, **arrays(d), n_permutations=0)
    assert math.isclose(controls.oracle_baseline(d.names, covariate=d.gender, subset=d.subset,
                                                 n_boot=20)["chance"], 1 / 8)


def test_planted_store_aligns_with_its_arrays(tmp_path):
    from tests.synthetic_covariates import planted_gender_store

    store, d = planted_gender_store(tmp_path / "store", names_per_gender=2, people_split=(2, 1, 1),
                                    images_per_person=2)
    idx = store.index
    assert idx.image_ids.tolist() == d.image_ids.tolist()
    assert np.asarray(idx.names)[np.asarray(idx.labels)].tolist() == d.names.tolist()
    X, ids = store.load("toy", ids=d.image_ids)
    np.testing.assert_allclose(X, d.X, rtol=0, atol=1e-6)
    assert "gender" in (tmp_path / "manifest.csv").read_text().splitlines()[0]
    if hasattr(idx, "covariates"):  # manifest columns become covariates (issue 12, the store's side)
        assert np.asarray(idx.covariates["gender"]).astype(str).tolist() == d.gender.tolist()
