"""Issue 12 point 1: per-image covariates in the index (manifest columns, a CSV, the names' gender)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from facestore import create_store, open_store
from facestore.cli import main
from facestore.dataset import scan_dataset
from facestore.errors import DatasetError
from facestore.store.covariates import covariates_from_csv
from facestore.store.verify import verify_store
from tests.conftest import write_chips


def _manifest(root: Path, rows: list[str], name: str = "m.csv") -> Path:
    for line in rows[1:]:
        f = root / line.split(",")[0]
        f.parent.mkdir(parents=True, exist_ok=True)
        if not f.exists():
            f.write_bytes(line.encode())
    p = root / name
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_manifest_columns_become_typed_covariates_carried_through_append(tmp_path):
    rows = ["path,name,identity,gender,age,score",
            "a/1.jpg,Anna,p1,f,31,0.5", "a/2.jpg,Anna,p1,f,31,", "b/1.jpg,Bob,p2,m,45,1.25"]
    store = create_store(tmp_path / "s")
    store.sync_index(scan_dataset(_manifest(tmp_path, rows)), workers=1)
    cov = open_store(store.path).index.covariates
    assert sorted(cov) == ["age", "gender", "score"]
    assert cov["gender"].tolist() == ["f", "f", "m"] and cov["age"].dtype == np.int64 and cov["age"].tolist() == [31, 31, 45]
    assert cov["score"].dtype == np.float64 and math.isnan(cov["score"][1]) and cov["score"][2] == 1.25
    info = store.info()["covariates"]
    assert info["age"]["kind"] == "numeric" and info["gender"]["values"] == {"f": 2, "m": 1}
    assert info["gender"]["source"] == "manifest"
    # Append: the same columns carry on; a column the new manifest lacks reads as missing for its rows.
    more = rows + ["c/1.jpg,Cleo,p3,f,27,2.0"]
    store.sync_index(scan_dataset(_manifest(tmp_path, more)), workers=1)
    cov = open_store(store.path).index.covariates
    assert cov["gender"].tolist() == ["f", "f", "m", "f"] and cov["age"].tolist() == [31, 31, 45, 27]
    fewer = ["path,name,identity,gender", *[",".join(r.split(",")[:4]) for r in more[1:]], "d/1.jpg,Dan,p4,m"]
    store.sync_index(scan_dataset(_manifest(tmp_path, fewer, "m2.csv")), workers=1)
    cov = open_store(store.path).index.covariates
    assert cov["gender"].tolist()[-1] == "m" and math.isnan(cov["age"][-1]) and cov["age"][0] == 31
    assert verify_store(store.path) == []


def test_a_column_that_changes_kind_on_append_is_refused_before_anything_is_written(tmp_path):
    store = create_store(tmp_path / "s")
    store.sync_index(scan_dataset(_manifest(tmp_path, ["path,name,age", "a.jpg,Anna,31"])), workers=1)
    with pytest.raises(DatasetError, match="covariate 'age' is numeric"):
        store.sync_index(scan_dataset(_manifest(tmp_path, ["path,name,age", "a.jpg,Anna,31", "b.jpg,Bob,old"],
                                                "m2.csv")), workers=1)
    assert open_store(store.path).n == 1 and verify_store(store.path) == []


def test_covariates_from_a_csv_keyed_by_path(tmp_path, chip_folder):
    store = create_store(tmp_path / "s")
    store.sync_index(scan_dataset(chip_folder), workers=1)
    csv = tmp_path / "c.csv"
    csv.write_text("path,glasses,age\nAnna/p1/000.jpg,yes,30\nBob/p3/001.jpg,no,41\n")
    rep = covariates_from_csv(store, csv)
    assert rep == {"covariates": ["glasses", "age"], "rows_matched": 2, "rows_missing": 16}
    cov = open_store(store.path).index.covariates
    rows = store.rows_of(["Anna/p1/000.jpg", "Bob/p3/001.jpg"])
    assert cov["glasses"][rows].tolist() == ["yes", "no"] and (cov["glasses"] == "").sum() == 16
    assert cov["age"][rows].tolist() == [30.0, 41.0] and np.isnan(cov["age"]).sum() == 16
    assert store.covariate_attrs("age")["source"].startswith("file:")
    with pytest.raises(DatasetError, match="already in"):
        covariates_from_csv(store, csv)
    csv.write_text("path,glasses\nnobody.jpg,yes\n")
    with pytest.raises(DatasetError, match="not in the store, e.g. nobody.jpg"):
        covariates_from_csv(store, csv, replace=True)


def test_name_gender_from_the_lexicon_with_its_attrs_and_through_append(tmp_path):
    root = tmp_path / "chips"
    write_chips(root, {"Mary": {"p1": 2}, "John": {"p2": 1}, "Xqzvt": {"p3": 1}})
    store = tmp_path / "s"
    runner = CliRunner()
    assert runner.invoke(main, ["index", "--data", str(root), "--store", str(store)]).exit_code == 0
    res = runner.invoke(main, ["covariates", str(store), "--name-gender"])
    assert res.exit_code == 0, res.output
    assert "names f 1, m 1, unknown 1" in res.stdout and "unknown (not in the lexicon, or too ambiguous): Xqzvt" in res.stdout
    # the lexicon's version, printed once (it was "nomquamgender 0.1.4 (...) 0.1.4")
    from importlib.metadata import version

    assert res.stdout.count(version("nomquamgender")) == 1, res.stdout
    st = open_store(store)
    cov = st.index.covariates
    by_name = dict(zip(st.index.row_names.tolist(), cov["name_gender"].tolist()))
    assert by_name == {"John": "m", "Mary": "f", "Xqzvt": "unknown"}
    attrs = st.covariate_attrs("name_gender")
    assert attrs["source"].startswith("nomquamgender") and attrs["version"] and attrs["threshold"] == 0.1
    assert np.isnan(cov["name_gender_probability"][st.index.row_names == "Xqzvt"]).all()
    write_chips(root, {"Alice": {"p4": 1}}, seed=3)
    assert runner.invoke(main, ["index", "--data", str(root), "--store", str(store)]).exit_code == 0
    st = open_store(store)
    assert st.index.covariates["name_gender"][st.index.row_names == "Alice"].tolist() == ["f"]
    assert "covariates: name_gender (string from nomquamgender" in runner.invoke(main, ["info", str(store)]).stdout
    res = runner.invoke(main, ["covariates", str(store)])
    assert res.exit_code == 2 and "--from FILE.csv, --name-gender" in res.output
