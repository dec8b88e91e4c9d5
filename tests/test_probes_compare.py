"""``probes compare``: every sentence backed by a computed result, controls apart, corrected p-values.

Result folders are made directly with ``finish_experiment`` from synthetic scores (no store, no
training), so each scenario of the report is set up exactly.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from probes.compare import compare_results
from probes.evaluation import finish_experiment


def _fake(out, experiment, *, n_names=6, ids_per_name=6, imgs=3, signal=1.0, split_hash="h0", image_level=False,
          seed_group=None, model="m", control=None, permutation=None, n_boot=200, drop=0):
    """One result folder: ``n_names`` names x ``ids_per_name`` people x ``imgs`` images, scores with a
    planted signal of strength ``signal``; the test images are keyed by ``split_hash``."""
    C = n_names
    y = np.repeat(np.arange(C), ids_per_name * imgs)
    groups = np.array([f"p{c}_{i}" for c in range(C) for i in range(ids_per_name) for _ in range(imgs)])
    ids = np.array([f"{split_hash}/img{i:05d}" for i in range(y.size)])
    rng = np.random.default_rng(zlib.crc32(f"{experiment}/{split_hash}".encode()))  # stable across processes
    scores = rng.normal(size=(y.size, C)) + signal * np.eye(C)[y]
    keep = np.arange(y.size) >= drop
    y, groups, ids, scores = y[keep], groups[keep], ids[keep], scores[keep]
    if image_level:
        split = {"name": f"image-{split_hash}", "hash": split_hash, "by": "identity", "identity_source": None,
                 "warnings": ["image-level split: identity leakage is possible"]}
    else:
        split = {"name": f"identity-{split_hash}", "hash": split_hash, "by": "identity", "identity_source": "identity",
                 "warnings": []}
    return finish_experiment(
        out, experiment=experiment, scores=scores, y_true=y, names=[f"name{c:03d}" for c in range(C)],
        image_ids=ids, groups=None if image_level else groups, train_labels=y,
        config={"family": "linear", "model": model, "names": "all", "balance": "none"}, split_info=split,
        store_path="/store", model_spec=None, timings={}, n_boot=n_boot, extra={"seed_group": seed_group},
        permutation=permutation, control=control)


def _compare(out, **kw):
    data = compare_results(out, n_boot=kw.pop("n_boot", 200), plots=kw.pop("plots", False), **kw)
    md = (out / "track3_comparison.md").read_text()
    assert json.loads((out / "comparison.json").read_text())["experiments"] == json.loads(
        json.dumps(data["experiments"]))  # the file is the data
    return data, md


def _check_ci_p_agreement(data):
    for r in data["experiments"] + data["control_rows"]:
        assert (r["ba_lo"] > r["baseline_balanced"]) == (r["p_balanced"] < 0.025), r["experiment"]
        assert (r["acc_lo"] > r["baseline_top1"]) == (r["p_top1"] < 0.025), r["experiment"]


def test_a_single_experiment_says_nothing_about_others(tmp_path):
    _fake(tmp_path, "dinov2_all", signal=1.5)
    data, md = _compare(tmp_path)
    for phrase in ("Every other", "worse", "better than", "not distinguishable", "carries the most"):
        assert phrase not in md
    assert data["best"]["all (6 names)"]["experiment"] is None
    assert "only one experiment on this task" in md
    assert data["paired_vs_reference"] == [] and data["settings"]["reference"] is None
    assert "None made: no reference" in md
    _check_ci_p_agreement(data)
    assert {r["kind"] for r in data["recommendations"]} <= {"best", "no_best", "no_signal", "resolution", "seeds",
                                                             "prediction_cv", "unreliable_ci"}


def test_different_seeds_are_not_compared_and_best_is_chosen_on_seed_means(tmp_path):
    # The reference ran on splits s0, s1; dinov2 on s0, s1; siglip only on s2 (different test images).
    for s in ("s0", "s1"):
        _fake(tmp_path, f"clip_linear_all-{s}", split_hash=s, seed_group="clip_linear", signal=0.7, model="clip")
        _fake(tmp_path, f"dinov2_all-{s}", split_hash=s, seed_group="dinov2_all", signal=1.3, model="dinov2")
    _fake(tmp_path, "siglip_all-s2", split_hash="s2", seed_group="siglip_all", signal=3.0, model="siglip")
    _fake(tmp_path, "siglip_all-s3", split_hash="s3", seed_group="siglip_all", signal=0.2, model="siglip")
    data, md = _compare(tmp_path)
    pairs = {p["experiment"]: p for p in data["paired_vs_reference"]}
    assert pairs["siglip_all"]["status"] == "not compared"
    assert "different test images" in pairs["siglip_all"]["reason"]
    assert "not compared (siglip_all-s2: different test images" in md
    d = pairs["dinov2_all"]
    assert d["status"] == "compared" and d["n_seeds"] == 2 and d["p_adjusted"] >= d["p_raw"]
    assert (d["ci"][0] > 0 or d["ci"][1] < 0) == (d["p_raw"] < 0.05)
    # siglip's best single test score is the largest, but the best is chosen on seed means.
    best = data["best"]["all (6 names)"]
    single_max = max(data["experiments"], key=lambda r: r["balanced_accuracy"])["experiment"]
    assert single_max == "siglip_all-s2"
    means = {g["group"]: g["balanced_accuracy_mean"] for g in data["groups"]}
    assert best["experiment"] == max(means, key=means.get) and best["basis"].startswith("mean test balanced")
    assert data["settings"]["reference"] == "clip_linear"
    # A declared reference replaces the default; one that matches nothing is an error.
    data2, _ = _compare(tmp_path, reference="dinov2_all")
    assert data2["settings"]["reference_source"] == "declared (--reference)"
    assert {p["experiment"] for p in data2["paired_vs_reference"]} == {"clip_linear", "siglip_all"}
    with pytest.raises(ValueError, match="matches no ranked experiment"):
        compare_results(tmp_path, n_boot=50, plots=False, reference="dinov5")


def test_leaky_splits_and_nulls_are_controls_never_ranked_nor_counted(tmp_path):
    _fake(tmp_path, "clip_linear_top30", n_names=30, ids_per_name=5, imgs=2, signal=0.6, model="clip")
    _fake(tmp_path, "leaky_top30", n_names=30, ids_per_name=5, imgs=2, signal=4.0, image_level=True, model="dinov2")
    _fake(tmp_path, "shuffled_top30", n_names=30, ids_per_name=5, imgs=2, signal=4.0, model="dinov2",
          control={"kind": "shuffled-name null", "description": "names shuffled across identities"})
    data, md = _compare(tmp_path, plots=True)
    ranked = {r["experiment"] for r in data["experiments"]}
    assert ranked == {"clip_linear_top30"}
    ctrl = {r["experiment"]: r for r in data["control_rows"]}
    assert ctrl["leaky_top30"]["control"] == "image-level split" and ctrl["leaky_top30"]["leakage_warning"]
    assert ctrl["shuffled_top30"]["control"] == "shuffled-name null"
    rows = data["controls"][0]["rows"]
    assert {r["experiment"] for r in rows} == {"leaky_top30", "shuffled_top30"}
    assert all("leakage" in r["note"] for r in rows if r["control"] == "image-level split")
    # Targets and rankings see only the ranked row, though the controls score far higher.
    acc30 = next(t for t in data["plan_targets"] if t["metric"] == "Accuracy (30 names)")
    assert acc30["best_experiment"] == "clip_linear_top30"
    assert acc30["value"] == pytest.approx(data["experiments"][0]["accuracy"])
    cv30 = next(t for t in data["plan_targets"] if t["metric"] == "Prediction CV (30 names)")
    assert cv30["label_cv"] == pytest.approx(0.0) and cv30["met"] is not None
    assert all(e["model"] != "dinov2" for rk in data["embeddings"]["all (30 names)"] for e in rk["entries"])
    main = md.split('<a id="controls"></a>')[0]
    assert "leaky_top30" not in main and "shuffled_top30" not in main
    # The store (a fake path) cannot be opened: the advice is conditional, never "derive pseudo-identities".
    leak = [r for r in data["recommendations"] if r["kind"] == "leakage"]
    assert leak and leak[0]["evidence"]["store_has_identities"] is None and "if the store has identities" in leak[0]["text"]
    # Top-5 is shown for 30 names (5 < 15); plots are listed only when made, and exist.
    assert data["experiments"][0]["top5_accuracy"] is not None
    assert [p["file"] for p in data["plots"]] == ["track3_accuracy.png", "track3_predicted_counts.png", "track3_f1.png"]
    for p in data["plots"]:
        assert (tmp_path / p["file"]).stat().st_size > 1000 and f"]({p['file']})" in md
    _check_ci_p_agreement(data)


def test_small_test_sets_are_flagged_and_p_values_are_adjusted(tmp_path):
    _fake(tmp_path, "clip_linear", n_names=4, ids_per_name=1, imgs=4, signal=2.0)
    _fake(tmp_path, "dinov2", n_names=4, ids_per_name=1, imgs=4, signal=2.5)
    _fake(tmp_path, "weak", n_names=4, ids_per_name=1, imgs=4, signal=0.0, model="w")
    data, md = _compare(tmp_path, n_boot=500)
    for r in data["experiments"]:
        assert not r["ci_reliable"] and "fewer than 5 test identities" in r["ci_reliability"][0]
        assert r["p_balanced_adj"] >= r["p_balanced"] and r["top5_accuracy"] is None
        assert r["n_test"] == 16 and r["n_test_identities"] == 4
        assert {"nll", "ece", "brier"} <= set(r) and r["ece"] is not None
    fam = next(f for f in data["families"] if f["name"] == "above_baseline")
    assert fam["correction"] == "holm" and fam["n_tests"] == 3
    raw = np.array([t["p_raw"] for t in fam["tests"]])
    from probes.stats import holm

    assert [t["p_adjusted"] for t in fam["tests"]] == pytest.approx(holm(raw).tolist())
    assert "unreliable [1]" in md and "omitted (k >= C/2)" in md
    bh, _ = _compare(tmp_path, n_boot=500, correction="bh")
    assert bh["families"][0]["correction"] == "bh"
    _check_ci_p_agreement(data)


def test_beyond_name_frequency_needs_every_check(tmp_path):
    _fake(tmp_path, "strong", signal=2.0, n_boot=500, permutation={"null": [0.2] * 19})
    _fake(tmp_path, "overfit", signal=2.0, n_boot=500, model="m2", permutation={"null": [0.95] + [0.2] * 18})
    _fake(tmp_path, "plain", signal=2.0, n_boot=500, model="m3")
    data, md = _compare(tmp_path, n_boot=500)
    v = {r["experiment"]: r["beyond_frequency"] for r in data["experiments"]}
    assert v["strong"]["verdict"] is True and v["overfit"]["verdict"] is False and v["plain"]["verdict"] is None
    assert v["overfit"]["checks"]["permutation_above_all"] is False
    kinds = {r["evidence"].get("experiment"): r["kind"] for r in data["recommendations"] if "beyond" in r["kind"]}
    assert kinds == {"strong": "beyond_frequency", "overfit": "beyond_frequency_not_shown"}
    assert "## Beyond name frequency" in md and "the smallest 19 refits can give is 0.05" in md


def test_models_are_ranked_on_the_images_every_one_of_them_scored(tmp_path):
    from probes.metrics import balanced_accuracy
    from probes.results import read_result

    _fake(tmp_path, "clip_linear", signal=1.0, model="clip")
    _fake(tmp_path, "arcface", signal=1.5, model="arcface", drop=12)  # 12 test images without a face
    data, md = _compare(tmp_path)
    (rk,) = data["embeddings"]["all (6 names)"]
    assert rk["n_images"] == 108 - 12 and "different test images" in rk["flag"]
    clip = read_result(tmp_path / "track3_clip_linear")
    keep = np.isin(clip.image_ids, read_result(tmp_path / "track3_arcface").image_ids)
    entry = next(e for e in rk["entries"] if e["model"] == "clip")
    assert entry["balanced_accuracy"] == pytest.approx(balanced_accuracy(clip.true_labels[keep], clip.predictions[keep]))
    assert entry["balanced_accuracy"] != pytest.approx(data["experiments"][-1]["balanced_accuracy"])
    pair = data["paired_vs_reference"][0]
    assert pair["n_common"] == 96 and pair["n_dropped"] == 12
    assert "ranked on the 96 they share" in md


def test_damaged_folders_are_skipped_with_the_reason_and_plots_only_when_made(tmp_path):
    _fake(tmp_path, "a", signal=1.0)
    b = _fake(tmp_path, "b", signal=1.0, model="m2")
    np.save(f"{b['path']}/predictions.npy", np.zeros(108, dtype=np.int64))
    res = CliRunner().invoke(__import__("probes.cli", fromlist=["main"]).main,
                             ["compare", str(tmp_path), "--n-boot", "100", "--no-plots"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "comparison.json").read_text())
    md = (tmp_path / "track3_comparison.md").read_text()
    assert [r["experiment"] for r in data["experiments"]] == ["a"]
    assert "predictions.npy does not match its manifest" in data["skipped"][0]["reason"]
    assert "Result folders not used" in md and "track3_b" in md
    assert data["plots"] == [] and ".png" not in md and not list(tmp_path.glob("*.png"))


def _row(**kw):
    base = {"experiment": "e", "balanced_accuracy": 0.6, "baseline_balanced": 0.2, "p_balanced_adj": 0.001,
            "above_baseline": True, "permutation_n": None, "forced_choice": None}
    return {**base, **kw}


def _fc(foils):
    return {"n_way": 2, "foils": foils, "chance": 0.5, "prior_corrected": 0.9, "prior_corrected_lo": 0.8,
            "prior_corrected_hi": 0.95, "raw": 0.9, "prior_only": 0.6, "ci_above_chance": True}


def test_beyond_frequency_uses_only_popularity_matched_foils():
    """The rule (and the report's sentence) is the popularity-matched forced choice: a run with only
    same-gender or uniform foils has not made that check, so it says nothing beyond frequency."""
    from probes.compare import _beyond_frequency

    assert _beyond_frequency(_row(forced_choice=_fc("popularity")))["verdict"] is True
    for foils in ("same-name_gender", "uniform"):
        v = _beyond_frequency(_row(forced_choice=_fc(foils)))
        assert v["verdict"] is None and "forced_choice_above_chance" not in v["checks"]


def test_beyond_covariate_is_said_only_of_a_result_above_its_baseline():
    """Beating the within-stratum null (test set held fixed) is no name signal beyond the covariate
    when the result's CI over test identities still reaches chance: the words say which it is."""
    from probes.compare import _beyond_covariate_verdict, _covariate_recommendations

    c = {"experiment": "e", "task_key": "all (6 names)", "covariate": "name_gender", "balanced_accuracy": 0.61,
         "beyond_null_mean": 0.22, "beyond_p": 0.01, "beyond_p_adj": 0.02, "beyond_significant": True,
         "oracle_balanced_accuracy": 0.33, "from_face_balanced_accuracy": 0.28, "min_attainable_p": 0.01,
         "n_permutations": 99}
    recs = _covariate_recommendations([_row(above_baseline=False, controls=[c])], "Holm")
    assert [r["kind"] for r in recs] == ["beyond_covariate_not_above_baseline"]
    assert "no name signal beyond name_gender is shown" in recs[0]["text"]
    assert not any(r["text"].startswith("Name signal beyond") for r in recs)
    unsure = _beyond_covariate_verdict(c, above_baseline=False)
    assert "not shown beyond name_gender" in unsure["text"] and unsure["shown"] is False
    recs = _covariate_recommendations([_row(above_baseline=True, controls=[c])], "Holm")
    assert [r["kind"] for r in recs] == ["beyond_covariate"] and recs[0]["text"].startswith("Name signal beyond")
    shown = _beyond_covariate_verdict(c, above_baseline=True)
    assert shown["text"] == "beyond name_gender" and shown["shown"] is True


def test_embedding_ranking_says_when_seeds_on_other_splits_are_left_out(tmp_path):
    """One run of m1 on split s0 and two seeds of m2 (s0, s1): the ranking can only use s0, and must
    not call that "all test images" of m2 nor count m2's s1 result in its above-baseline tally."""
    _fake(tmp_path, "one_all", split_hash="s0", model="m1", signal=1.0)
    for s in ("s0", "s1"):
        _fake(tmp_path, f"two_all-{s}", split_hash=s, seed_group="two_all", model="m2", signal=1.0)
    data, md = _compare(tmp_path)
    rk = next(r for r in data["embeddings"]["all (6 names)"] if r["family"] == "linear")
    assert "on the 1 split(s) every model ran on; 1 result(s) on other splits left out" in rk["basis"]
    assert all(len(e["above_baseline"]) == 1 for e in rk["entries"])
    assert "1 result(s) on other splits left out" in md
