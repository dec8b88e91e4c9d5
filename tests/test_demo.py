"""The synthetic dataset and the end-to-end demo (``facestore demo``, ``probes demo``), offline."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facestore.dataset import scan_dataset
from probes.demo import (
    DISCLAIMER,
    QUICK_SETTINGS,
    make_synthetic_chips,
    run_demo,
    zipf_people,
)


def _rows(manifest: Path) -> list[dict]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=float)


def test_synthetic_chips_layout_identities_and_zipf_names(tmp_path):
    ds = make_synthetic_chips(tmp_path / "chips", n_names=5, images_per_person=2, size=64, seed=3)
    assert ds.people_per_name == zipf_people(5)
    assert ds.people_per_name[0] == max(ds.people_per_name) > 2 * ds.people_per_name[-1]  # one name dominates
    assert ds.n_images == 2 * ds.n_people == len(list(ds.root.rglob("*.jpg")))
    rows = _rows(ds.manifest)
    assert len(rows) == ds.n_images
    first = rows[0]
    assert first["path"] == f"{first['name']}/{first['identity']}/00.jpg"
    with Image.open(ds.root / first["path"]) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    # Both ingestion layouts read it: the folder (name/identity/...) and the manifest.
    for source in (ds.root, ds.manifest):
        index = scan_dataset(source)
        assert len(index.image_ids) == ds.n_images
        assert len(set(index.identities.tolist())) == ds.n_people
    # Deterministic: the same arguments give the same bytes.
    again = make_synthetic_chips(tmp_path / "again", n_names=5, images_per_person=2, size=64, seed=3)
    assert (again.root / first["path"]).read_bytes() == (ds.root / first["path"]).read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_chips(tmp_path / "chips")
    with pytest.raises(ValueError, match="one per name"):
        make_synthetic_chips(tmp_path / "bad", n_names=3, people_per_name=[2, 2])


def test_planted_name_signal_lives_in_the_pixels_and_vanishes_without_it(tmp_path):
    """The name shifts identity attributes: mean hair/skin colour differs between names only with an effect."""

    def between_name_spread(name_effect):
        ds = make_synthetic_chips(tmp_path / f"e{name_effect}", n_names=4, people_per_name=6, images_per_person=1,
                                  size=48, name_effect=name_effect, seed=1)
        rows = _rows(ds.manifest)
        # The face's centre strip (skin, eyes, mouth) averaged per image, then per name.
        feats = np.array([_pixels(ds.root / r["path"])[12:36, 16:32].mean((0, 1)) for r in rows])
        names = np.array([r["name"] for r in rows])
        means = np.array([feats[names == n].mean(0) for n in ds.names])
        return float(means.std(0).mean())

    assert between_name_spread(3.0) > 1.5 * between_name_spread(0.0)


def test_demo_end_to_end_finds_the_planted_signal_and_reruns_cheaply(tmp_path):
    lines: list[str] = []
    report = run_demo(tmp_path / "demo", quick=True, device="cpu", progress=False, echo=lines.append)
    results = tmp_path / "demo" / "results"
    assert report == results / "track3_comparison.md"
    text = report.read_text()
    assert "## Track 3 plan status" in text and "dinov2-base is not in the store" in text
    status = json.loads((results / "track3_status.json").read_text())
    ran = [r for r in status["records"] if r["status"] == "ran"]
    assert {r["experiment"] for r in ran} == {"pixels32", "random_vit_tiny", "ensemble_baselines", "knn_pixels32",
                                               "knn_random_vit_tiny"}
    assert not [r for r in status["records"] if r["status"] == "failed"]
    for r in ran:
        assert Path(r["folder"], "summary.json").is_file() and Path(r["folder"], "run.log").is_file()
    # The planted signal is found: the best model beats chance with a CI that excludes it.
    best = max(ran, key=lambda r: r["balanced_accuracy"])
    summary = json.loads(Path(best["folder"], "summary.json").read_text())
    chance = 1 / QUICK_SETTINGS.n_names
    assert summary["chance"]["uniform"] == pytest.approx(chance)
    assert summary["ci"]["balanced_accuracy"][0] > chance
    assert summary["significant"]
    assert best["experiment"] in text
    output = "\n".join(lines)
    assert DISCLAIMER in output and f"report: {report}" in output
    # What the demo says is best is the comparison's own verdict, not the largest single score.
    recs = json.loads((results / "comparison.json").read_text())["recommendations"]
    verdicts = [r["text"] for r in recs if r["kind"] in ("best", "no_best")]
    assert verdicts and all(v in output for v in verdicts)
    assert "not anything about real faces" in DISCLAIMER
    # The HTML report: its index path is printed, every experiment that ran has a page with faces.
    index = results / "report" / "index.html"
    assert f"html report: {index}" in output and index.is_file()
    html = index.read_text(encoding="utf-8")
    for r in ran:
        assert f'href="{Path(r["folder"]).name}.html"' in html
    assert list((results / "report" / "thumbs").glob("*.jpg"))

    # Again on the same directory: the dataset is reused, the build has nothing to do, nothing re-runs.
    lines.clear()
    run_demo(tmp_path / "demo", quick=True, device="cpu", progress=False, echo=lines.append)
    output = "\n".join(lines)
    assert "reusing the synthetic dataset" in output
    assert "0 new" in output
    assert "5 unchanged" in output
    again = json.loads((results / "track3_status.json").read_text())
    assert {r["experiment"] for r in again["records"] if r["status"] == "unchanged"} == {r["experiment"] for r in ran}


def test_demo_lives_above_both_packages_and_both_clis_reach_it(tmp_path, monkeypatch):
    """facestore never imports probes; ``facestore demo`` and ``probes demo`` resolve probes.demo when run."""
    code = "import sys, facestore, facestore.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'probes'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr

    from click.testing import CliRunner

    import probes.demo
    from facestore.cli import main as facestore_main
    from probes.cli import main as probes_main

    calls = []
    monkeypatch.setattr(probes.demo, "run_demo", lambda directory, **kw: calls.append((directory, kw)))
    for main in (facestore_main, probes_main):
        res = CliRunner().invoke(main, ["demo", str(tmp_path / "d"), "--quick", "--device", "cpu", "--no-progress"])
        assert res.exit_code == 0, res.output
    assert [c[0] for c in calls] == [str(tmp_path / "d")] * 2
    assert all(c[1]["quick"] and c[1]["device"] == "cpu" and not c[1]["progress"] for c in calls)

    # Without the probes package, facestore demo says what to install instead of a traceback.
    monkeypatch.setitem(sys.modules, "probes.demo", None)
    res = CliRunner().invoke(facestore_main, ["demo", str(tmp_path / "d")])
    assert res.exit_code == 1 and "could not be imported" in res.output and "pip install -e ." in res.output
