"""``probes report``: the static HTML site renders the results directory, and only that.

The results here are written straight through :func:`probes.evaluation.finish_experiment` from
planted scores on a tiny store of real JPEG chips (no model, no training), so the report code
is the only thing under test. Names hold ``<``, ``&`` and quotes to check escaping.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import write_chips

# One name is an HTML injection: unescaped, it would be an <img> with a broken source.
HOSTILE = "<img src=x onerror=alert(1)>"
PEOPLE = {"Anna": 6, 'Bob & "Co"': 5, HOSTILE: 4, "Zoë O'Neil": 4, "Eve": 4}


def make_results(base: Path, *, images_per_person: int = 2) -> dict:
    """A store of chips under ``base/data`` + ``base/store`` and a results directory ``base/results``
    with two experiments (one with probabilities and forced choice, one without) and comparison.json."""
    from facestore.dataset import scan_dataset
    from facestore.store import create_store
    from probes.compare import compare_results
    from probes.evaluation import finish_experiment
    from probes.forced_choice import forced_choice_report
    from probes.splits import make_split

    layout = {name: {f"p{k}": images_per_person for k in range(n)} for name, n in PEOPLE.items()}
    write_chips(base / "data", layout, size=48)
    store = create_store(base / "store")
    store.sync_index(scan_dataset(base / "data"), workers=1)
    split = make_split(store, by="identity", seed=0)
    index = store.index
    names = list(index.names)
    test, trainval = split.rows("test"), split.rows("trainval")
    y = index.labels[test].astype(np.int64)
    rng = np.random.default_rng(0)
    results = base / "results"
    common = dict(y_true=y, names=names, image_ids=index.image_ids[test], groups=index.identities[test],
                  train_labels=index.labels[trainval], split_info=split.info(), store_path=store.path,
                  model_spec=None, timings={"fit_s": 0.1}, n_boot=50)
    # "planted": the true name gets a boost, so the probe is right more often than chance.
    logits = rng.normal(size=(len(y), len(names))) + 2.0 * np.eye(len(names))[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fc = forced_choice_report(proba, y, train_labels=index.labels[trainval], groups=index.identities[test],
                              n_boot=50, null_repeats=20)
    finish_experiment(results, experiment="planted_all", scores=proba, save_probabilities=True,
                      config={"family": "linear", "model": "toy", "names": "all"}, extra={"forced_choice": fc},
                      **common)
    # "blind": logits only, not saved; no forced choice.
    finish_experiment(results, experiment="blind_all", scores=rng.normal(size=(len(y), len(names))),
                      config={"family": "knn", "model": "toy2", "names": "all"}, **common)
    compare_results(results, n_boot=50, plots=False)
    return {"results": results, "store": base / "store", "data": base / "data", "names": names}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("report"))


def _page(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_site_renders_comparison_and_every_experiment_escaped_and_offline(made, tmp_path):
    from probes.report import build_report

    site = build_report(made["results"], out=tmp_path / "site")
    assert site.index == tmp_path / "site" / "index.html"
    index = _page(site.index)
    comparison = json.loads((made["results"] / "comparison.json").read_text())
    for section in ("Comparison", "Controls", "The plan&#x27;s baselines and targets", "Recommendations"):
        assert section in index
    assert {p.experiment for p in site.pages} == {"planted_all", "blind_all"}
    for row in comparison["experiments"]:
        page = next(p for p in site.pages if p.experiment == row["experiment"])
        assert f'href="{page.path.name}"' in index  # the table links every experiment's page
    from probes.report.markup import prose

    assert comparison["recommendations"]
    for rec in comparison["recommendations"]:
        assert prose(rec["text"] if isinstance(rec, dict) else rec) in index
    assert prose("a < b, `x & y`") == "a &lt; b, <code>x &amp; y</code>"
    # Every control section of comparison.json is a table of its own, with its title.
    for section in comparison.get("controls") or []:
        assert f"<h3>{section['title']}</h3>".replace("'", "&#x27;") in index

    pages = {p.experiment: _page(p.path) for p in site.pages}
    planted = pages["planted_all"]
    for page in [index, *pages.values()]:
        # Every data string is escaped: the hostile name never becomes markup.
        assert HOSTILE not in page
        # Self-contained: no remote resource, no external script or stylesheet.
        assert not re.search(r'(src|href)="(https?:)?//', page)
        assert "<link" not in page and "<script src" not in page
        for ref in re.findall(r'(?:src|href)="([^"#]+)"', page):
            from urllib.parse import unquote

            assert (site.index.parent / unquote(ref)).exists(), ref
    assert "&lt;img src=x onerror=alert(1)&gt;" in planted
    assert "Bob &amp; &quot;Co&quot;" in planted or "Bob &amp; &quot;Co&quot;" in pages["blind_all"]


def test_pages_show_the_summary_numbers_not_recomputed_ones(made, tmp_path):
    """The page renders summary.json: a value changed there (and only there) is what the page shows."""
    import shutil

    from probes.report import build_report

    results = tmp_path / "results"
    shutil.copytree(made["results"], results)
    folder = results / "track3_planted_all"
    summary = json.loads((folder / "summary.json").read_text())
    summary["metrics"]["balanced_accuracy"] = 0.43219
    summary["ci"]["balanced_accuracy"] = [0.11111, 0.77777]
    summary["calibration"] = {"nll": 1.23456, "ece": 0.0654321, "brier": 0.5}
    summary["baseline"] = {"balanced_accuracy": 0.3131, "accuracy": 0.2929}
    summary["controls_seen_later"] = {"label_shuffle": {"balanced_accuracy": 0.2468}}
    (folder / "summary.json").write_text(json.dumps(summary))
    comparison = json.loads((results / "comparison.json").read_text())
    comparison["controls"] = [{"control": "shuffled names", "balanced_accuracy": 0.1357, "p_adjusted": 0.9}]
    comparison["experiments"][0]["n_test_identities"] = 7777
    comparison["added_later"] = {"holdout": {"balanced_accuracy": 0.9753}}
    (results / "comparison.json").write_text(json.dumps(comparison))
    # An older result: no probabilities.npy and no reliability table in summary.json.
    blind = json.loads((results / "track3_blind_all" / "summary.json").read_text())
    del blind["calibration"]["reliability"]
    (results / "track3_blind_all" / "summary.json").write_text(json.dumps(blind))

    site = build_report(results, store=made["store"])
    blind_page = _page(next(p.path for p in site.pages if p.experiment == "blind_all"))
    assert "no probabilities.npy and its summary.json no reliability table" in blind_page
    page = _page(next(p.path for p in site.pages if p.experiment == "planted_all"))
    assert "0.4322" in page and "[0.1111, 0.7778]" in page
    assert "against its baseline 0.3131" in page  # the p-value's own baseline, not 1/C
    row = next(r for r in comparison["experiments"] if r["experiment"] == "planted_all")
    verdict = "above its baseline" if row["above_baseline"] else "not above its baseline"
    assert f"{verdict} after the comparison&#x27;s multiplicity correction" in page
    assert "1.2346" in page and "0.0654" in page  # calibration from summary.json, as written
    assert "controls_seen_later" in page and "0.2468" in page  # unknown keys render generically
    index = _page(site.index)
    assert "shuffled names" in index and "0.1357" in index and "no controls section" not in index
    assert "n_test_identities" in index and "7777" in index
    assert 'id="more-added_later"' in index and "0.9753" in index  # an unknown section renders generically


def test_views_computed_from_arrays_say_so_and_missing_inputs_are_named(made, tmp_path):
    from probes.report import build_report

    site = build_report(made["results"], out=tmp_path / "site", store=made["store"])
    pages = {p.experiment: _page(p.path) for p in site.pages}
    planted, blind = pages["planted_all"], pages["blind_all"]
    # Confusion counts match the arrays (the diagonal of Anna's row is the number of correct Annas).
    folder = made["results"] / "track3_planted_all"
    y, p = np.load(folder / "true_labels.npy"), np.load(folder / "predictions.npy")
    names = json.loads((folder / "names.json").read_text())
    anna = names.index("Anna")
    correct = int(((y == anna) & (p == anna)).sum())
    assert f'title="true Anna, predicted Anna: {correct} of {int((y == anna).sum())}"' in planted
    assert "Counted here from predictions.npy and true_labels.npy" in planted
    # Training frequency comes from the store's split, checked against the summary's hash.
    assert "counted from the store&#x27;s split" in planted
    assert 'src="figures/' in planted and "reliability diagram" in planted
    # Without probabilities.npy the diagram is drawn from summary.json's reliability table (the ECE's bins).
    assert "From summary.json&#x27;s reliability table (15 equal-width bins" in blind
    assert blind.count("reliability diagram") >= 1 and "no reliability diagram" not in blind
    assert "2-way, uniform foils" in planted and "prior-corrected" in planted
    assert "no forced-choice scores in this result" in blind
    # Galleries: thumbnails of the original images, written once.
    thumbs = sorted((tmp_path / "site" / "thumbs").glob("*.jpg"))
    assert thumbs and site.thumbnails_written == len(thumbs)
    from PIL import Image

    with Image.open(thumbs[0]) as im:
        assert im.format == "JPEG" and max(im.size) <= 112
    mtimes = {t: t.stat().st_mtime_ns for t in thumbs}
    again = build_report(made["results"], out=tmp_path / "site", store=made["store"])
    assert again.thumbnails_written == 0 and again.thumbnails_reused >= len(thumbs)
    assert {t: t.stat().st_mtime_ns for t in thumbs} == mtimes


def test_unreachable_store_or_images_give_notes_not_broken_images(made, tmp_path):
    import shutil

    from probes.report import build_report

    site = build_report(made["results"], out=tmp_path / "nostore", store=tmp_path / "gone")
    page = _page(next(p.path for p in site.pages if p.experiment == "planted_all"))
    assert "No face thumbnails" in page and "not reachable" in page
    assert "test support from results.csv instead" in page
    assert not (tmp_path / "nostore" / "thumbs").exists()
    assert "not reachable" in _page(site.index)

    # The store is there but its images moved: a note per page, and no <img> pointing nowhere.
    data_backup = tmp_path / "data_backup"
    shutil.move(made["data"], data_backup)
    try:
        site = build_report(made["results"], out=tmp_path / "moved_site", store=made["store"])
    finally:
        shutil.move(data_backup, made["data"])
    page = _page(next(p.path for p in site.pages if p.experiment == "planted_all"))
    assert "could not be read for thumbnails" in page and "missing_file" in page and "thumbs/" not in page
    assert site.thumbnails_written == 0


def test_report_cli_prints_index_and_rejects_bad_input(made, tmp_path):
    from probes.cli import main

    res = CliRunner().invoke(main, ["report", str(made["results"]), "--out", str(tmp_path / "r"),
                                    "--store", str(made["store"])])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith(str(tmp_path / "r" / "index.html"))
    assert (tmp_path / "r" / "index.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["report", str(empty)])
    assert res.exit_code != 0 and "no result folders" in res.output and "probes track3" in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_without_comparison_json_the_index_says_how_to_make_it(made, tmp_path):
    import shutil

    from probes.report import build_report

    results = tmp_path / "results"
    shutil.copytree(made["results"], results)
    (results / "comparison.json").unlink()
    site = build_report(results, store=made["store"])
    index = _page(site.index)
    assert "no comparison.json" in index and f"probes compare {results}" in index
    assert all(f'href="{p.path.name}"' in index for p in site.pages)


def test_track3_cli_writes_the_html_report_too(made, tmp_path):
    import shutil

    from facestore import open_store
    from facestore.store.transfer import import_embeddings
    from probes.track3 import track3_command

    shutil.copytree(made["store"], tmp_path / "store")
    store = open_store(tmp_path / "store", mode="a")
    rng = np.random.default_rng(1)
    onehot = np.eye(len(store.index.names))[store.index.labels]
    X = np.concatenate([onehot, rng.normal(size=(store.n, 6))], axis=1).astype(np.float32)
    import_embeddings(store, "pixels-32", embeddings=X, ids=store.index.image_ids, view="pixels")
    # kNN: the cheapest experiment on pixels-32 (no training), the report is what is under test.
    res = CliRunner().invoke(track3_command, ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "res"),
                                              "--only", "knn_pixels32", "--names", "all", "--n-boot", "30",
                                              "--no-progress"])
    assert res.exit_code == 0, res.output
    index = tmp_path / "res" / "report" / "index.html"
    assert f"html report: {index}" in res.output and index.is_file()
    assert 'href="track3_knn_pixels32_all.html"' in _page(index)


def test_beyond_covariate_cell_is_green_only_when_shown():
    """A null beaten by a row that is not above its baseline reads "not shown": never in green."""
    from probes.report.site import _beyond_covariate

    unsure = {"significant": True, "shown": False, "text": "above the within-g null, but not above baseline: not shown"}
    assert 'class="ns"' in _beyond_covariate({"beyond_covariate": {"g": unsure}}).html
    shown = {**unsure, "shown": True, "text": "beyond g"}
    assert 'class="sig"' in _beyond_covariate({"beyond_covariate": {"g": shown}}).html


def test_embedding_ranking_names_the_experiment_and_counts_above_baseline():
    """Two experiments of one model read "pixels-32 0.61; pixels-32 0.61" with no way to tell them apart."""
    from probes.report.site import _embeddings

    emb = {"all": [{"family": "linear", "basis": "b", "entries": [
        {"model": "pixels-32", "experiment": "lin", "balanced_accuracy": 0.61, "above_baseline": [False]},
        {"model": "pixels-32", "experiment": "lin_ctl", "balanced_accuracy": 0.47, "above_baseline": [True, False]}]}]}
    html = _embeddings(emb)
    assert "pixels-32 (lin) 0.6" in html and "pixels-32 (lin_ctl) 0.4" in html
    assert "[above baseline in 0/1]" in html and "[above baseline in 1/2]" in html
