"""The store: index sync and append, chunk-committed model groups, spec refusal, locks, verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from facestore import create_store, open_store
from facestore.dataset import scan_dataset
from facestore.errors import (
    DatasetChangedError,
    ModelNotFoundError,
    SpecMismatchError,
    StoreFormatError,
    StoreLockedError,
    StoreNotFoundError,
)
from facestore.store import layout
from facestore.store.store import read_rows
from facestore.store.transfer import export_embeddings, import_embeddings, read_ids
from facestore.store.verify import verify_store
from tests.conftest import write_chips
from tests.synthetic import planted_store

SPEC = {"name": "m", "family": "test", "preprocessing": {"size": [8, 8]}, "versions": {"torch": "1"}}


@pytest.fixture
def store(tmp_path, chip_folder):
    s = create_store(tmp_path / "s.zarr")
    s.sync_index(scan_dataset(chip_folder), workers=2)
    return s


def _fill(writer, rng, *, fail_rows=()):
    for c in writer.pending_chunks():
        start, stop = writer.chunk_range(c)
        emb = {v: rng.normal(size=(stop - start, d)).astype(np.float32) for v, d in writer.views.items()}
        st = np.ones(stop - start, np.uint8)
        det = [""] * (stop - start)
        for r in fail_rows:
            if start <= r < stop:
                st[r - start] = layout.status_code("truncated")
                det[r - start] = "cut short"
        writer.write_chunk(c, emb, st, det)


def test_open_errors(tmp_path):
    with pytest.raises(StoreNotFoundError, match="facestore build"):
        open_store(tmp_path / "missing")
    zarr.open_group(str(tmp_path / "plain"), mode="w")
    with pytest.raises(StoreFormatError, match="not a facestore store"):
        open_store(tmp_path / "plain")
    s = create_store(tmp_path / "new")
    with pytest.raises(FileExistsError):
        create_store(tmp_path / "new")
    zarr.open_group(str(s.path), mode="r+").attrs["encoding-version"] = "9.0.0"
    with pytest.raises(StoreFormatError, match="upgrade facestore"):
        open_store(s.path)


def test_index_is_self_describing(store):
    s = open_store(store.path)
    assert s.n == 18 and s.index.names == ["Anna", "Bob", "Zoë"]
    assert s.index.row_names[-1] == "Zoë" and s.index.identities[0] == "Anna/p1"
    a = s.attrs
    assert a["encoding-type"] == "facestore" and a["encoding-version"] == layout.ENCODING_VERSION
    assert len(a["dataset_fingerprint"]) == 64 and a["data_root"]
    assert s.rows_of(["Bob/p3/000.jpg"]).tolist() == [6]
    with pytest.raises(KeyError, match="not in the store"):
        s.rows_of(["nope"])


def test_model_roundtrip_only_ok_rows_load(store):
    w = store.model_writer("m", spec=SPEC, views={"a": 4, "b": 3}, dtype="float32", chunk_rows=5)
    assert w.n_chunks == 4 and w.pending_chunks() == [0, 1, 2, 3] and w.chunk_range(3) == (15, 18)
    _fill(w, np.random.default_rng(0), fail_rows=(7,))
    assert w.pending_chunks() == []
    X, ids = store.load("m", view="b")
    assert X.shape == (17, 3) and X.dtype == np.float32 and "Bob/p3/001.jpg" not in ids
    assert store.failures("m") == [("Bob/p3/001.jpg", "truncated", "cut short")]
    assert store.summary("m")["status"] == {"ok": 17, "truncated": 1}
    assert store.default_view("m") == "a" and store.views("m") == {"a": 4, "b": 3}
    X2, ids2 = store.load("m", view="a", ids=["Zoë/p6/002.jpg", "Anna/p1/000.jpg", "Bob/p3/001.jpg"])
    assert ids2.tolist() == ["Zoë/p6/002.jpg", "Anna/p1/000.jpg"]
    np.testing.assert_array_equal(X2[1], store.load("m", view="a")[0][0])
    with pytest.raises(ModelNotFoundError, match="stored: m"):
        store.load("other")
    with pytest.raises(KeyError, match="views: a, b"):
        store.load("m", view="zz")


def test_fast_reader_matches_zarr(store):
    w = store.model_writer("m", spec=SPEC, views={"a": 6}, dtype="float16", chunk_rows=4)
    _fill(w, np.random.default_rng(1))
    arr = zarr.open_group(str(store.path))["models/m/a"]
    rows = np.array([17, 0, 5, 6, 3, 16])
    got = read_rows(arr, rows, path=store.path / "models/m/a")
    np.testing.assert_array_equal(got, np.asarray(arr[:])[rows])
    span = np.arange(3, 14)  # contiguous, starting and ending inside chunks: in-place reads + edges
    for out_dtype in (None, np.float32):
        got = read_rows(arr, span, path=store.path / "models/m/a", out_dtype=out_dtype)
        assert got.dtype == (np.float16 if out_dtype is None else np.float32)
        np.testing.assert_array_equal(got, np.asarray(arr[:])[span].astype(got.dtype))
    X, _ = store.load("m", dtype=None)
    assert X.dtype == np.float16
    np.testing.assert_array_equal(X, np.asarray(arr[:]))


def test_spec_change_is_refused_with_the_difference(store):
    store.model_writer("m", spec=SPEC, views={"a": 4}, dtype="float16", chunk_rows=8)
    other = {**SPEC, "preprocessing": {"size": [16, 16]}}
    with pytest.raises(SpecMismatchError, match=r"spec.preprocessing.size: \[8, 8\] -> \[16, 16\]"):
        store.model_writer("m", spec=other, views={"a": 4}, dtype="float16", chunk_rows=8)
    with pytest.raises(SpecMismatchError, match="dtype: 'float16' -> 'float32'"):
        store.model_writer("m", spec=SPEC, views={"a": 4}, dtype="float32", chunk_rows=8)
    with pytest.warns(RuntimeWarning, match="library versions differ"):
        store.model_writer("m", spec={**SPEC, "versions": {"torch": "2"}}, views={"a": 4}, dtype="float16",
                           chunk_rows=8)


def test_float16_overflow_is_recorded_not_stored(store):
    w = store.model_writer("m", spec=SPEC, views={"a": 2}, dtype="float16", chunk_rows=18)
    emb = np.ones((18, 2), np.float32)
    emb[4] = 1e6
    st = w.write_chunk(0, {"a": emb}, np.ones(18, np.uint8), [""] * 18)
    assert layout.STATUS_CODES[int(st[4])] == "nonfinite"
    X, ids = store.load("m")
    assert len(X) == 17 and np.isfinite(X).all()


def test_append_new_images_and_names(store, chip_folder):
    w = store.model_writer("m", spec=SPEC, views={"a": 2}, dtype="float32", chunk_rows=8)
    _fill(w, np.random.default_rng(0))
    before = store.load("m")[0].copy()
    write_chips(chip_folder, {"Bob": {"p9": 2}, "Ada": {"p7": 1}}, seed=5)
    rep = store.sync_index(scan_dataset(chip_folder), workers=2)
    assert rep.added == 3 and rep.total == 21 and rep.new_names == ["Ada"]
    idx = store.index
    assert idx.names == ["Ada", "Anna", "Bob", "Zoë"]
    assert idx.image_ids[:18].tolist() == sorted(idx.image_ids[:18].tolist())  # old rows keep their place
    assert idx.row_names[18:].tolist() == ["Ada", "Bob", "Bob"]
    assert idx.row_names[0] == "Anna" and idx.labels[0] == 1  # relabelled by the new sorted names
    w2 = store.model_writer("m", spec=SPEC, views={"a": 2}, dtype="float32", chunk_rows=8)
    assert w2.n == 21 and w2.pending_chunks() == [2]
    emb, st, _ = w2.read_chunk(2)
    assert st.tolist() == [1, 1, 0, 0, 0]  # old rows of the last chunk stay written
    np.testing.assert_array_equal(store.load("m")[0], before)
    assert store.sync_index(scan_dataset(chip_folder)).added == 0


def test_changed_image_is_refused(store, chip_folder):
    p = chip_folder / "Anna" / "p1" / "000.jpg"
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(DatasetChangedError, match="Anna/p1/000.jpg"):
        store.sync_index(scan_dataset(chip_folder))


def test_locks(store):
    with store.lock("m", owner="first build"):
        with pytest.raises(StoreLockedError, match="first build"):
            store.lock("m").acquire()
        with store.lock("other"):
            pass  # other keys are independent
    with store.lock("m"):
        pass  # released


def test_stale_lock_of_a_dead_process_is_broken(store):
    proc = subprocess.run(
        [sys.executable, "-c", f"from facestore import open_store; open_store({str(store.path)!r}).lock('m').acquire(); "
                               "import os; os._exit(0)"], check=True)
    assert proc.returncode == 0 and (store.path / ".locks" / "m.lock").exists()
    with pytest.warns(RuntimeWarning, match="breaking stale lock"):
        with store.lock("m"):
            rec = json.loads((store.path / ".locks" / "m.lock").read_text())
            assert rec["pid"] == os.getpid()


def test_text_embeddings_roundtrip(store):
    emb = np.random.default_rng(0).normal(size=(3, 2, 5)).astype(np.float32)
    store.write_text_embeddings("clip", template_set="plan", names=["a", "b", "c"], templates=["{}", "x {}"],
                                embeddings=emb, logit_scale=100.0, logit_bias=None, spec={"s": 1})
    t = store.text_embeddings("clip")
    np.testing.assert_array_equal(t.embeddings, emb)
    assert t.templates == ["{}", "x {}"] and t.logit_scale == 100.0 and t.logit_bias is None
    assert store.text_template_sets("clip") == ["plan"]
    with pytest.raises(ModelNotFoundError, match="facestore text"):
        store.text_embeddings("clip", "other")


def test_splits_and_identities(store, chip_folder):
    a = np.array([0, 1, 2] * 6, np.int8)
    store.save_split("identity-s0-abc", a, {"hash": "abc"})
    got, attrs = store.load_split("identity-s0-abc")
    assert got.tolist() == a.tolist() and attrs["hash"] == "abc" and store.splits == ["identity-s0-abc"]
    with pytest.raises(ValueError, match="-1 .out."):
        store.save_split("bad", np.full(18, 5), {})
    store.save_identities("pseudo", np.array([f"c{i % 4}" for i in range(18)]), {"threshold": 0.5})
    ids, attrs = store.load_identities("pseudo")
    assert ids[5] == "c1" and attrs["threshold"] == 0.5
    assert store.identity_sources == ["identity", "pseudo"]
    write_chips(chip_folder, {"Bob": {"p9": 1}}, seed=9)
    store.sync_index(scan_dataset(chip_folder))
    assert store.load_split("identity-s0-abc")[0][-1] == -1  # appended rows are outside old splits


def test_import_export(tmp_path, store):
    ids = store.index.image_ids
    X = np.arange(18 * 3, dtype=np.float32).reshape(18, 3)
    with pytest.raises(KeyError, match="not in the store"):
        import_embeddings(store, "old", embeddings=X[:2], ids=np.array(["x", "y"]))
    with pytest.raises(ValueError, match="have no imported vector"):
        import_embeddings(store, "old", embeddings=X[:2], ids=ids[:2])
    rep = import_embeddings(store, "old", embeddings=X[::-1][:10], ids=ids[::-1][:10], allow_missing=True,
                            source="phase3.npy")
    assert rep["not_imported"] == 8
    got, got_ids = store.load("old")
    assert got_ids.tolist() == sorted(ids[::-1][:10].tolist())
    np.testing.assert_array_equal(got[-1], X[::-1][0])
    out = export_embeddings(store, "old", out=tmp_path / "exp")
    assert out["rows"] == 10
    assert np.load(tmp_path / "exp" / "embeddings.npy").shape == (10, 3)
    assert read_ids(tmp_path / "exp" / "image_ids.npy").tolist() == got_ids.tolist()
    (tmp_path / "ids.txt").write_text("\n".join(got_ids) + "\n")
    assert read_ids(tmp_path / "ids.txt").tolist() == got_ids.tolist()
    assert store.model_spec("old")["family"] == "imported"


def test_verify_finds_pending_missing_chunks_and_changed_images(store, chip_folder):
    w = store.model_writer("m", spec=SPEC, views={"a": 2}, dtype="float32", chunk_rows=8)
    assert any(p.kind == "incomplete" for p in verify_store(store.path))
    _fill(w, np.random.default_rng(0))
    assert verify_store(store.path) == []
    (store.path / "models" / "m" / "a" / "c" / "1" / "0").unlink()
    problems = verify_store(store.path)
    assert [p.kind for p in problems] == ["missing_chunk"] and "1" in problems[0].message
    with pytest.raises(StoreFormatError, match="missing"):
        store.load("m")
    p = chip_folder / "Bob" / "p4" / "002.jpg"
    p.write_bytes(p.read_bytes()[:-10])
    kinds = [p.kind for p in verify_store(store.path)]
    assert "changed_image" in kinds


def test_planted_store_helper(tmp_path):
    s = planted_store(tmp_path / "p.zarr", n_names=4, models=("x", "y"))
    assert s.models == ["x", "y"] and s.index.identities is not None
    Xa, _ = s.load("x")
    Xb, _ = s.load("y")
    assert Xa.shape == Xb.shape and not np.allclose(Xa, Xb)
