"""``probes track3``: the plan as data, skip reasons, input fingerprints, every result folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from facestore import open_store
from facestore.store.transfer import import_embeddings
from probes.experiments import EXPERIMENTS, get_experiment
from probes.track3 import (
    FINGERPRINT_FILE,
    STATUS_HEADING,
    experiment_config,
    run_track3,
    track3_command,
)
from tests.synthetic import planted_store

PLAN_ORDER = ["dinov2", "arcface_500", "ensemble", "supcon", "siglip", "clip_prompts", "dinov3"]


def _store(path, *, seed=0, identities=True):
    """A planted-signal store holding pixels-32, random-vit-tiny (registry view names) and clip-vit-b-32."""
    store = planted_store(path, n_names=6, images_per_person=4, dim=24, signal=1.5, models=(), seed=seed,
                          identities=identities)
    rng = np.random.default_rng(seed)
    ids = store.index.image_ids
    labels = np.asarray(store.index.labels)
    means = rng.normal(size=(6, 24)) * 1.5
    for model, view in (("pixels-32", "pixels"), ("random-vit-tiny", "cls"), ("clip-vit-b-32", "image")):
        X = means[labels] + rng.normal(size=(len(ids), 24))
        import_embeddings(store, model, embeddings=X.astype(np.float32), ids=ids, view=view, chunk_rows=64)
    names = list(store.index.names)
    text = means[:, None, :] + rng.normal(size=(6, 2, 24)) * 0.3  # 2 templates close to each name's mean
    store.write_text_embeddings("clip-vit-b-32", template_set="plan", names=names,
                                templates=["a photo of {}", "{}, a first name"], embeddings=text.astype(np.float32),
                                logit_scale=100.0, logit_bias=None, spec={"name": "test text tower"})
    return store


def _run(store, out, **kw):
    kw = {"names": ("all",), "n_boot": 50, "plots": False, "progress": False, "echo": lambda line: None,
          "permutations": 0, "null_repeats": 0, **kw}
    return run_track3(store, out, **kw)


def test_experiments_are_data_in_the_plans_priority_order():
    names = [e.name for e in EXPERIMENTS]
    assert len(set(names)) == len(names)
    plan = [e.name for e in EXPERIMENTS if e.group == "plan"]
    positions = [plan.index(n) for n in PLAN_ORDER]
    assert positions == sorted(positions), "plan experiments must follow the plan's priority order"
    assert names.index("dinov3") < names.index("dinov2_small") < names.index("pixels32")
    for e in EXPERIMENTS:
        for part in ("Purpose:", "Expected", "Command:"):
            assert part in e.doc, f"{e.name}: docstring lacks {part!r}"
        assert f"--only {e.name}" in e.doc or "probes track3" in e.doc
        cfg = experiment_config(e, models=e.models, task="top30", seed=3, device="cpu", n_boot=10)
        assert cfg.names == "top30" and cfg.n_boot == 10
    assert experiment_config(get_experiment("dinov2_logit_adjust"), models=("dinov2-base",), task="all").balance == \
        "logit-adjust"
    with pytest.raises(KeyError, match="known: dinov2"):
        get_experiment("dinov5")


def test_track3_runs_what_the_store_holds_and_records_why_the_rest_was_skipped(tmp_path):
    store = _store(tmp_path / "store")
    out = tmp_path / "results"
    only = ["dinov2", "arcface_500", "ensemble", "clip_prompts", "clip_linear", "pixels32", "ensemble_baselines",
            "knn_random_vit_tiny"]
    report = _run(store, out, only=only)
    ran = {r.experiment for r in report.by_status("ran")}
    assert ran == {"clip_prompts", "clip_linear", "pixels32", "ensemble_baselines", "knn_random_vit_tiny"}
    skipped = {r.experiment: r.reason for r in report.by_status("skipped")}
    assert set(skipped) == {"dinov2", "arcface_500", "ensemble"}
    assert "dinov2-base is not in the store" in skipped["dinov2"]
    assert "facestore build" in skipped["dinov2"]
    assert "needs 2 of clip-vit-b-32, arcface-r50, dinov2-base, 1 usable" in skipped["ensemble"]
    assert report.ok and not report.by_status("failed")
    # Every run wrote the plan's folder, with its fingerprint and the track3 lines of its run log.
    for r in report.by_status("ran"):
        folder = out / f"track3_{r.experiment}_all"
        assert r.folder == str(folder)
        for f in ("config.json", "predictions.npy", "true_labels.npy", "names.json", "results.csv", "summary.json",
                  "run.log", FINGERPRINT_FILE):
            assert (folder / f).is_file(), f"{folder.name}/{f} missing"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["metrics"]["balanced_accuracy"] == pytest.approx(r.balanced_accuracy)
        assert np.load(folder / "predictions.npy").shape == np.load(folder / "true_labels.npy").shape
        assert "track3: input fingerprint" in (folder / "run.log").read_text()
    # The planted signal is found by the linear probe.
    pix = next(r for r in report.records if r.experiment == "pixels32")
    assert pix.balanced_accuracy > 2 * pix.chance
    md = report.comparison.read_text()
    assert report.comparison == out / "track3_comparison.md"
    assert "pixels32_all" in md and STATUS_HEADING in md
    assert "dinov2-base is not in the store" in md
    status = json.loads((out / "track3_status.json").read_text())
    assert {r["experiment"] for r in status["records"]} == set(only)
    assert "skip dinov2:" in (out / "track3_run.log").read_text()


def test_rerun_skips_unchanged_experiments_and_reruns_changed_inputs(tmp_path):
    store = _store(tmp_path / "store")
    out = tmp_path / "results"
    only = ["pixels32", "random_vit_tiny", "clip_prompts"]
    first = _run(store, out, only=only)
    assert {r.experiment for r in first.by_status("ran")} == set(only)
    stamps = {r.folder: (Path(r.folder) / "summary.json").stat().st_mtime_ns for r in first.records}

    second = _run(store, out, only=only)
    assert {r.experiment for r in second.by_status("unchanged")} == set(only)
    assert not second.by_status("ran")
    for r in second.records:
        assert (Path(r.folder) / "summary.json").stat().st_mtime_ns == stamps[r.folder]
        before = next(x for x in first.records if x.experiment == r.experiment)
        assert r.balanced_accuracy == pytest.approx(before.balanced_accuracy)

    # New vectors for one model (rebuilt after deleting its group) change its stored spec: only its
    # experiment runs again.
    shutil.rmtree(Path(store.path) / "models" / "random-vit-tiny")
    store = open_store(store.path, mode="a")
    ids = store.index.image_ids
    X = np.random.default_rng(7).normal(size=(len(ids), 24)).astype(np.float32)
    import_embeddings(store, "random-vit-tiny", embeddings=X, ids=ids, view="cls", chunk_rows=64)
    third = _run(store, out, only=only)
    assert {r.experiment for r in third.by_status("ran")} == {"random_vit_tiny"}
    assert {r.experiment for r in third.by_status("unchanged")} == {"pixels32", "clip_prompts"}

    # A changed config (bootstrap replicates) and --force both re-run.
    assert {r.experiment for r in _run(store, out, only=["pixels32"], n_boot=60).by_status("ran")} == {"pixels32"}
    assert {r.experiment for r in _run(store, out, only=["pixels32"], n_boot=60, force=True).by_status("ran")} == \
        {"pixels32"}


def test_unresolvable_name_task_is_skipped_with_its_reason(tmp_path):
    store = _store(tmp_path / "store")
    report = _run(store, tmp_path / "results", names=("top50", "top3"), only=["pixels32"])
    by_task = {r.task: r for r in report.records}
    assert by_task["top50"].status == "skipped"
    assert "asks for 50 names" in by_task["top50"].reason
    assert by_task["top3"].status == "ran"
    assert (tmp_path / "results" / "track3_pixels32_top3" / "summary.json").is_file()


def test_cli_track3_seeds_list_and_errors(tmp_path):
    _store(tmp_path / "store")
    runner = CliRunner()
    res = runner.invoke(track3_command, ["--list"])
    assert res.exit_code == 0
    for e in EXPERIMENTS:
        assert e.name in res.output

    args = ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "res"), "--names", "all", "--only",
            "pixels32,knn_pixels32,dinov2", "--seeds", "2", "--n-boot", "50", "--no-plots", "--no-progress"]
    res = runner.invoke(track3_command, args)
    assert res.exit_code == 0, res.output
    assert "4 ran, 0 unchanged, 2 skipped, 0 failed" in res.output
    for s in (0, 1):
        assert (tmp_path / "res" / f"track3_pixels32_all-seed{s}" / "summary.json").is_file()
    data = json.loads((tmp_path / "res" / "comparison.json").read_text())
    groups = {g["seed_group"]: g for g in data["seed_groups"]}
    # Every family (here linear and kNN) reports its seeds as one group: mean and spread.
    assert set(groups) == {"pixels32_all", "knn_pixels32_all"}
    assert all(g["n_seeds"] == 2 for g in groups.values())

    res = runner.invoke(track3_command, args)
    assert "0 ran, 4 unchanged" in res.output

    res = runner.invoke(track3_command, ["--store", str(tmp_path / "store"), "--only", "dinov5"])
    assert res.exit_code == 2 and "no Track 3 experiment 'dinov5'" in res.output
    res = runner.invoke(track3_command, ["--out", str(tmp_path / "res")])
    assert res.exit_code == 2 and "--store is required" in res.output


def test_plan_linear_experiments_get_the_nulls_by_default(tmp_path):
    from probes.track3 import DEFAULT_NULL_REPEATS, DEFAULT_PERMUTATIONS, runs_nulls

    kw = {"task": "all", "permutations": DEFAULT_PERMUTATIONS, "null_repeats": DEFAULT_NULL_REPEATS}
    for e in EXPERIMENTS:
        cfg = experiment_config(e, models=e.models, **kw)
        if runs_nulls(e):
            assert cfg.permutations == DEFAULT_PERMUTATIONS and cfg.forced_choice and \
                cfg.null_repeats == DEFAULT_NULL_REPEATS, e.name
        elif hasattr(cfg, "permutations"):
            assert cfg.permutations == 0, e.name
    assert runs_nulls(get_experiment("clip_linear")) and runs_nulls(get_experiment("dinov2"))
    assert not runs_nulls(get_experiment("pixels32")) and not runs_nulls(get_experiment("knn_dinov2"))
    # A small run: the report's controls hold the permutation null, the rows the forced choice.
    store = _store(tmp_path / "store")
    _run(store, tmp_path / "r", only=["clip_linear"], permutations=2, null_repeats=0)
    summary = json.loads((tmp_path / "r" / "track3_clip_linear_all" / "summary.json").read_text())
    assert summary["permutation"]["n"] == 2 and summary["extra"]["forced_choice"]  # forced choice on with the refits
    data = json.loads((tmp_path / "r" / "comparison.json").read_text())
    perm = next(sec for sec in data["controls"] if sec["kind"] == "permutation null")
    assert perm["rows"][0]["experiment"] == "clip_linear_all" and perm["rows"][0]["min_attainable_p"] == 1 / 3
    assert data["experiments"][0]["forced_choice"]["n_way"] == 2
    assert data["settings"]["reference"] == "clip_linear"  # the plan's baseline is the default reference


def test_a_store_without_identities_needs_pseudo_identities_or_an_explicit_image_split(tmp_path):
    from probes.audit import build_pseudo_identities
    from probes.errors import ProbeConfigError

    store = _store(tmp_path / "store", identities=False)
    with pytest.raises(ProbeConfigError, match="probes identities") as e:
        _run(store, tmp_path / "r", only=["pixels32"])
    assert "--by image" in str(e.value) and "--by pseudo" in str(e.value)
    with pytest.raises(ProbeConfigError, match="no pseudo-identities"):
        _run(store, tmp_path / "r", only=["pixels32"], by="pseudo")
    report = _run(store, tmp_path / "img", only=["pixels32"], by="image")
    data = json.loads((tmp_path / "img" / "comparison.json").read_text())
    assert data["experiments"] == [] and [r["experiment"] for r in data["control_rows"]] == ["pixels32_all"]
    assert "leakage" in data["control_rows"][0]["leakage_warning"]
    md = report.comparison.read_text()
    assert "every result is a control with a leakage warning" in md
    # The store has no identities: the advice is to derive pseudo-identities (never otherwise).
    assert any("probes identities" in r["text"] for r in data["recommendations"] if r["kind"] == "leakage")
    name, _ = build_pseudo_identities(store, model="pixels-32", threshold=0.9, k=5, device="cpu")
    _run(store, tmp_path / "pseudo", only=["pixels32"], by="pseudo")
    data = json.loads((tmp_path / "pseudo" / "comparison.json").read_text())
    assert [r["split_kind"] for r in data["experiments"]] == ["pseudo-identity"]
    with_ids = _store(tmp_path / "ids")
    with pytest.raises(ProbeConfigError, match="use --by identity"):
        _run(with_ids, tmp_path / "r2", only=["pixels32"], by="pseudo")


def test_zero_shot_hint_suggests_facestore_text_only_for_text_models():
    from probes.zeroshot import no_text_reason as _no_text_reason

    assert "facestore text STORE --model clip-vit-b-32" in _no_text_reason("clip-vit-b-32", "plan")
    no_tower = _no_text_reason("dinov2-base", "plan")
    assert "no text tower" in no_tower and "facestore text" not in no_tower
    assert "facestore text` cannot" in _no_text_reason("my-imported-model", "plan")


def test_track3_controls_name_gender_by_default_and_reports_the_verdict(tmp_path):
    """A store with a name_gender covariate: the plan's linear experiments run its controls by
    default (and --within makes one folder per value); the comparison shows the verdict; a changed
    covariate changes the input fingerprint; --no-control turns the controls off."""
    from facestore.cli import main as facestore_main
    from facestore.store.covariates import add_name_gender
    from probes.track3 import input_fingerprint
    from tests.synthetic_covariates import planted_gender_store

    store, d = planted_gender_store(tmp_path / "store", names_per_gender=2, people_split=(3, 2, 2),
                                    images_per_person=3, dim=8)
    import_embeddings(store, "clip-vit-b-32", embeddings=d.X, ids=d.image_ids, view="image", chunk_rows=64)
    res = CliRunner().invoke(facestore_main, ["covariates", str(tmp_path / "store"), "--name-gender"])
    assert res.exit_code == 0, res.output
    lines: list[str] = []
    out = tmp_path / "r"
    _run(str(tmp_path / "store"), out, only=["clip_linear"], control_permutations=5, within="name_gender",
         echo=lines.append)
    assert any("run its controls by default" in line for line in lines)
    assert "name_gender controls and --within name_gender: run for clip_linear" in lines
    s = json.loads((out / "track3_clip_linear_all" / "summary.json").read_text())
    c = s["controls"]["name_gender"]
    assert c["beyond"]["n_permutations"] == 5 and c["attrs"]["source"].startswith("nomquamgender")
    for value in ("f", "m"):
        w = json.loads((out / f"track3_clip_linear_all_within-name_gender-{value}" / "summary.json").read_text())
        assert w["name_task"]["within"] == {"covariate": "name_gender", "value": value} and w["metrics"]["n_classes"] == 2
    status = json.loads((out / "track3_status.json").read_text())
    assert status["controls"] == ["name_gender"] and status["within"] == "name_gender"
    assert {r["task"] for r in status["records"] if r["status"] == "ran"} == \
        {"all", "all within name_gender=f", "all within name_gender=m"}
    data = json.loads((out / "comparison.json").read_text())
    sec = next(x for x in data["controls"] if x["kind"] == "covariate controls")
    assert [r["experiment"] for r in sec["rows"]] == ["clip_linear_all"]
    fam = next(f for f in data["families"] if f["name"] == "beyond_covariate")
    assert fam["n_tests"] == 1 and fam["correction"] == "holm"
    row = next(r for r in data["experiments"] if r["experiment"] == "clip_linear_all")
    verdict = row["beyond_covariate"]["name_gender"]
    assert verdict["p_raw"] == c["beyond"]["p_value"] and verdict["p_adjusted"] is not None
    kinds = {r["kind"] for r in data["recommendations"]}
    assert kinds & {"beyond_covariate", "beyond_covariate_not_above_baseline", "not_beyond_covariate"}
    md = (out / "track3_comparison.md").read_text()
    assert "## Beyond the covariate" in md and "clip_linear_all" in md.split("## Beyond the covariate")[1]
    # Within-value rows are tasks of their own, never the plan's 4-name task.
    assert {r["task_key"] for r in data["experiments"]} >= {"all within name_gender=f (2 names)"}

    from probes.experiments import get_experiment

    exp = get_experiment("clip_linear")
    st = open_store(tmp_path / "store", mode="a")
    from probes.splits import get_split

    split = get_split(st, by="identity", seed=0)
    cfg = experiment_config(exp, models=exp.models, task="all", controls=("name_gender",), control_permutations=5)
    before, inputs = input_fingerprint(st, exp, cfg, split, models=exp.models)
    assert "name_gender" in inputs["covariates"]
    add_name_gender(st, threshold=0.2)  # same values, other attrs: the result depends on them
    assert input_fingerprint(st, exp, cfg, split, models=exp.models)[0] != before


def test_track3_says_when_no_experiment_that_runs_gets_the_default_control(tmp_path):
    """On a store without the plan's linear models (the demo) the default-control line must not
    leave the reader believing a control ran: the log says none of the run's experiments gets it."""
    from facestore.store.covariates import add_name_gender
    from tests.synthetic_covariates import planted_gender_store

    store, d = planted_gender_store(tmp_path / "store", names_per_gender=2, people_split=(3, 2, 2),
                                    images_per_person=3, dim=8)
    import_embeddings(store, "pixels-32", embeddings=d.X, ids=d.image_ids, view="pixels", chunk_rows=64)
    add_name_gender(store)
    lines: list[str] = []
    _run(str(tmp_path / "store"), tmp_path / "r", only=["pixels32"], echo=lines.append)
    assert any("run its controls by default" in line for line in lines)
    assert any(line.startswith("name_gender controls: none of the plan's linear experiments (dinov2, ")
               for line in lines), lines
    s = json.loads((tmp_path / "r" / "track3_pixels32_all" / "summary.json").read_text())
    assert not s.get("controls")


def test_cli_track3_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C printed only "Aborted!": the user is told the finished folders are kept and how to go on."""
    import probes.track3 as t3

    def interrupted(store, out, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(t3, "run_track3", interrupted)
    (tmp_path / "s").mkdir()
    res = CliRunner().invoke(track3_command, ["--store", str(tmp_path / "s"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 130 and "Aborted!" not in res.output  # 128 + SIGINT, not "found problems"
    assert "run the same command again to resume" in res.output and "complete and kept" in res.output


def test_cli_ctrl_c_in_any_probes_command_exits_130_and_says_nothing_finished_is_lost(tmp_path, monkeypatch):
    import probes.linear_experiment as le
    from probes.cli import main

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(le, "run_linear", interrupted)
    monkeypatch.setattr("probes.splits.get_split", lambda *a, **k: None)
    monkeypatch.setattr("facestore.open_store", lambda *a, **k: None)
    res = CliRunner().invoke(main, ["linear", "--store", str(tmp_path), "--model", "m", "--out", str(tmp_path / "r")])
    assert res.exit_code == 130, res.output
    assert "Error: interrupted; result folders are written whole or not at all" in res.output


def test_cli_track3_control_options_map_to_run_track3(tmp_path, monkeypatch):
    """--control / --no-control / --permutations / --within / --allow-incomplete reach run_track3 as documented."""
    import probes.track3 as t3

    seen = {}

    class Report:
        comparison = tmp_path / "track3_comparison.md"
        ok = True

        def by_status(self, status):
            return []

    def fake(store, out, **kw):
        seen.clear()
        seen.update(kw)
        return Report()

    monkeypatch.setattr(t3, "run_track3", fake)
    store = tmp_path / "s"
    store.mkdir()

    def call(*args, code=0):
        res = CliRunner().invoke(track3_command, ["--store", str(store), "--out", str(tmp_path / "r"), "--no-plots",
                                                  *args])
        assert res.exit_code == code, res.output
        return res

    call()
    assert seen["controls"] is None and seen["control_permutations"] == 99  # None: name_gender if the store has it
    call("--no-control")
    assert seen["controls"] == ()
    call("--control", "name_gender,age", "--control", "name_gender", "--permutations", "7", "--within", "age",
         "--allow-incomplete")
    assert seen["controls"] == ("name_gender", "age") and seen["control_permutations"] == 7
    assert seen["within"] == "age" and seen["allow_incomplete"] is True and seen["permutations"] == 7
    res = call("--no-control", "--control", "name_gender", code=2)
    assert "not both" in res.output


def test_a_supcon_encoder_is_never_probed_on_another_seeds_split(tmp_path):
    """An encoder trained on seed 0's training people: seeds 1.. are skipped with the reason, not failed."""
    from probes.splits import get_split

    store = _store(tmp_path / "store")
    trained_on = get_split(store, by="identity", seed=0)
    X = np.random.default_rng(0).normal(size=(store.n, 8)).astype(np.float32)
    import_embeddings(store, "supcon-resnet50", embeddings=X, ids=store.index.image_ids, view="embedding",
                      spec={"training": {"split": {"name": trained_on.name, "hash": trained_on.hash}}})
    out = tmp_path / "r"
    report = _run(store, out, only=["supcon"], seed=1, seeds=2)
    assert [(r.seed, r.status) for r in report.records] == [(1, "skipped"), (2, "skipped")]
    reason = report.records[0].reason
    assert f"trained on the training identities of split {trained_on.name}" in reason
    assert "test leakage" in reason and "--train-encoder --seed 1" in reason
    assert not list(out.glob("track3_supcon_*"))
    status = (out / "track3_comparison.md").read_text().split(STATUS_HEADING)[1]
    assert "skipped" in status and "test leakage" in status
