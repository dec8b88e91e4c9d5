"""Issue 11: damaged or incomplete data never reaches a result.

Checksummed chunks (verify, load and load_xy name the damaged chunk), index damage caught by
verify, probes refusing pending rows and unfinished groups, atomic splits, locks that never
hang, only regular files as images, symlinks, names and manifests, the format upgrade.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from facestore import create_store, open_store
from facestore.dataset import scan_dataset
from facestore.errors import (
    DatasetChangedError,
    DatasetError,
    IncompleteModelError,
    NonFiniteError,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreLockedError,
)
from facestore.store import layout
from facestore.store.lock import StoreLock
from facestore.store.transfer import import_embeddings
from facestore.store.verify import repair_store, verify_store
from probes.data import load_xy
from probes.errors import SplitError
from probes.splits import load_split, make_split
from tests.conftest import write_chips
from tests.synthetic import planted_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def planted(tmp_path):
    """A store of 8 names x ~3-12 people x 4 images, one model imported in chunks of 64 rows."""
    return planted_store(tmp_path / "p.zarr", n_names=6, dim=8, chunk_rows=64)


def _chunk(store, model="toy", view="embedding", c=1) -> Path:
    return Path(store.path) / "models" / model / view / "c" / str(c) / "0"


def _kinds(problems) -> list[str]:
    return [p.kind for p in problems]


# --------------------------------------------------------------------------- checksums


@pytest.mark.parametrize("damage", ["random_bytes", "bit_flips", "zeroed", "extra_bytes", "truncated"])
def test_a_damaged_vector_chunk_is_named_by_verify_load_and_load_xy(planted, damage):
    f = _chunk(planted)
    raw = bytearray(f.read_bytes())
    rng = np.random.default_rng(0)
    if damage == "random_bytes":
        at = int(rng.integers(0, len(raw) - 200))
        raw[at:at + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    elif damage == "bit_flips":
        for at in rng.choice(len(raw) - 4, 40, replace=False):
            raw[at] ^= 1 << int(rng.integers(0, 8))
    elif damage == "zeroed":
        raw[:-4] = bytes(len(raw) - 4)
    elif damage == "extra_bytes":
        raw += bytes(100)
    else:
        raw = raw[:-100]
    f.write_bytes(bytes(raw))

    problems = verify_store(planted.path, check_files=False)
    assert _kinds(problems) == ["damaged_chunk"], problems
    assert problems[0].model == "toy" and "view 'embedding': chunk 1 (rows 64-127)" in problems[0].message
    with pytest.raises(StoreCorruptError, match=r"model 'toy' view 'embedding': chunk 1 \(rows 64-127\)"):
        planted.load("toy")
    with pytest.raises(StoreCorruptError, match="chunk 1"):
        load_xy(planted, "toy", subset="all")
    # Rows outside the damaged chunk still read.
    X, ids = planted.load("toy", ids=planted.index.image_ids[:64])
    assert len(X) == 64


def test_repair_resets_damaged_chunks_and_the_same_import_restores_them(tmp_path):
    rng = np.random.default_rng(1)
    store = planted_store(tmp_path / "p.zarr", n_names=4, dim=8, chunk_rows=32)
    X = rng.normal(size=(store.n, 8)).astype(np.float32)
    import_embeddings(store, "vec", embeddings=X, ids=store.index.image_ids, chunk_rows=32)
    good, _ = store.load("vec")
    f = _chunk(store, "vec", c=2)
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    assert repair_store(store.path) == {"vec": [2]}
    assert not store.is_complete("vec")
    with pytest.raises(IncompleteModelError, match="facestore import"):
        load_xy(store, "vec", subset="all")
    import_embeddings(store, "vec", embeddings=X, ids=store.index.image_ids, chunk_rows=32)
    assert store.is_complete("vec") and verify_store(store.path, check_files=False) == []
    np.testing.assert_array_equal(store.load("vec")[0], good)


def test_index_and_status_arrays_are_checksummed(planted):
    f = Path(planted.path) / "index" / "image_id" / "c" / "0"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError, match=r"index array 'image_id': chunk 0 .* checksum"):
        open_store(planted.path).index
    assert "damaged_chunk" in _kinds(verify_store(planted.path, check_files=False))


# --------------------------------------------------------------------------- verify covers the index


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_verify_catches_a_deleted_label_chunk(planted):
    (Path(planted.path) / "index" / "label" / "c" / "0").unlink()
    kinds = _kinds(verify_store(planted.path, check_files=False))
    assert "missing_chunk" in kinds
    with pytest.raises(StoreCorruptError, match="index array 'label'.*missing"):
        open_store(planted.path).index


def test_verify_catches_n_images_edited_down(planted):
    _edit_json(Path(planted.path) / "zarr.json", lambda m: m["attributes"].update(n_images=planted.n - 20))
    problems = verify_store(planted.path, check_files=False)
    assert "length" in _kinds(problems) and any("n_images" in p.message for p in problems)
    assert any(p.model == "toy" and p.kind == "length" for p in problems)


def test_verify_catches_two_names_swapped_in_the_attrs(planted):
    def swap(m):
        names = m["attributes"]["names"]
        names[0], names[1] = names[1], names[0]

    _edit_json(Path(planted.path) / "index" / "label" / "zarr.json", swap)
    _edit_json(Path(planted.path) / "index" / "zarr.json", swap)
    problems = verify_store(planted.path, check_files=False)
    assert "names" in _kinds(problems), problems


def test_verify_and_load_catch_a_data_type_edit(planted):
    _edit_json(Path(planted.path) / "models" / "toy" / "embedding" / "zarr.json", lambda m: m.update(data_type="int32"))
    with pytest.raises(StoreCorruptError, match="edited metadata"):
        planted.load("toy")
    assert "dtype" in _kinds(verify_store(planted.path, check_files=False))
    _edit_json(Path(planted.path) / "index" / "label" / "zarr.json", lambda m: m.update(data_type="uint32"))
    with pytest.raises(StoreCorruptError, match="format specifies int32"):
        open_store(planted.path).index


def test_a_sound_store_verifies_clean(planted):
    assert verify_store(planted.path, check_files=False) == []


# --------------------------------------------------------------------------- incomplete data is refused


def test_load_xy_refuses_an_interrupted_import_and_allow_incomplete_records_it(tmp_path):
    store = planted_store(tmp_path / "p.zarr", n_names=4, dim=8, models=())
    X = np.random.default_rng(0).normal(size=(store.n, 8)).astype(np.float32)
    w = store.model_writer("cut", spec={"name": "cut", "family": "imported"}, views={"embedding": 8},
                           dtype="float32", chunk_rows=32, kind="imported")
    w.write_chunk(0, {"embedding": X[:32]}, np.ones(32, np.uint8), [""] * 32)  # killed after chunk 0
    assert not store.is_complete("cut") and store.model_attrs("cut")["complete"] is False
    with pytest.raises(IncompleteModelError, match=r"not written yet.*facestore import .* --model cut"):
        load_xy(store, "cut", subset="all")
    xy = load_xy(store, "cut", subset="all", allow_incomplete=True)
    assert len(xy) == 32 and "pending" in xy.incomplete
    assert "incomplete" in _kinds(verify_store(store.path, check_files=False))
    for c in w.pending_chunks():
        a, b = w.chunk_range(c)
        w.write_chunk(c, {"embedding": X[a:b]}, np.ones(b - a, np.uint8), [""] * (b - a))
    assert store.model_attrs("cut")["complete"] is True
    assert load_xy(store, "cut", subset="all").incomplete is None


def test_a_deleted_status_chunk_reads_as_pending_and_is_refused(planted):
    (Path(planted.path) / "models" / "toy" / "status" / "c" / "1").unlink()
    with pytest.raises(IncompleteModelError, match="64 of the .* not written yet"):
        load_xy(planted, "toy", subset="all")


def test_a_group_not_marked_complete_is_refused(planted):
    g = zarr.open_group(str(planted.path / "models" / "toy"), mode="r+")
    g.attrs["complete"] = False  # e.g. a build still running on other chunks
    with pytest.raises(IncompleteModelError, match="did not finish"):
        load_xy(planted, "toy", subset="all")


def test_nonfinite_vectors_marked_ok_are_refused(planted):
    arr = zarr.open_array(str(planted.path / "models" / "toy" / "embedding"), mode="r+")
    block = np.asarray(arr[0:64])
    block[3, 2] = np.nan
    arr[0:64] = block  # a valid checksum over bad values (a hand edit)
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        load_xy(planted, "toy", subset="all")
    assert "nonfinite" in _kinds(verify_store(planted.path, check_files=False))


def test_import_of_a_superset_with_ignore_unknown_ids(tmp_path):
    store = planted_store(tmp_path / "p.zarr", n_names=3, dim=4, models=())
    ids = np.concatenate([store.index.image_ids, ["extra/a.jpg", "extra/b.jpg"]])
    X = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    with pytest.raises(KeyError, match="ignore-unknown-ids"):
        import_embeddings(store, "sup", embeddings=X, ids=ids)
    rep = import_embeddings(store, "sup", embeddings=X, ids=ids, ignore_unknown_ids=True)
    assert rep["ignored_unknown_ids"] == 2 and rep["imported"] == store.n
    np.testing.assert_array_equal(store.load("sup")[0], X[:store.n])


# --------------------------------------------------------------------------- splits


def test_a_half_saved_split_is_refused_and_rewritten(planted):
    split = make_split(planted, by="identity", seed=0)
    g = zarr.open_group(str(planted.path / "splits" / split.name), mode="r+")
    g.attrs.put({})  # killed before the attrs (and the completion marker) were written
    with pytest.raises(SplitError, match="not saved completely"):
        load_split(planted, split.name)
    again = make_split(planted, by="identity", seed=0)
    assert load_split(planted, again.name).hash == split.hash
    # A split whose values were edited no longer matches its recorded hash.
    arr = zarr.open_array(str(planted.path / "splits" / split.name / "values"), mode="r+")
    v = np.asarray(arr[:])
    v[np.nonzero(v == 0)[0][0]] = 2
    arr[:] = v
    _edit_json(planted.path / "splits" / split.name / "zarr.json",
               lambda m: m["attributes"].pop("values_sha256"))
    with pytest.raises(SplitError, match="do not match the hash"):
        load_split(planted, split.name)


def test_leftovers_of_an_interrupted_save_are_never_listed(planted):
    make_split(planted, by="identity", seed=1)
    tmp = planted.path / "splits" / ".tmp-identity-x-123"
    tmp.mkdir()
    (tmp / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    assert all(not s.startswith(".") for s in planted.splits) and len(planted.splits) == 1


# --------------------------------------------------------------------------- locks


def test_a_waiter_proceeds_soon_after_the_lock_holder_is_killed(tmp_path, chip_folder):
    from facestore.build import _sync_index

    store = create_store(tmp_path / "s")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from facestore.store.lock import StoreLock; "
                               f"StoreLock({str(store.path / '.locks' / 'index.lock')!r}, owner='index sync').acquire(); "
                               "print('held', flush=True); import time; time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    result = {}

    def wait():
        t = time.monotonic()
        result["report"] = _sync_index(store, scan_dataset(chip_folder), wait_s=60)
        result["s"] = time.monotonic() - t

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.5)
    assert th.is_alive()  # waiting on a live holder
    holder.kill()
    holder.wait()
    holder.stdout.close()
    with pytest.warns(RuntimeWarning, match="breaking stale lock"):
        th.join(timeout=20)
    assert not th.is_alive() and result["report"].added == 18 and result["s"] < 15


def test_a_live_holder_bounds_the_wait_and_is_named(tmp_path):
    path = tmp_path / ".locks" / "m.lock"
    with StoreLock(path, owner="facestore build (pid x)"):
        t = time.monotonic()
        with pytest.raises(StoreLockedError, match=r"facestore build \(pid x\).*waited"):
            StoreLock(path).acquire(wait_s=0.4)
        assert 0.3 < time.monotonic() - t < 5


def test_the_heartbeat_is_refreshed_by_a_timer_while_held(tmp_path):
    lock = StoreLock(tmp_path / "k.lock", heartbeat_s=0.05)
    with lock:
        first = lock.read()["heartbeat"]
        time.sleep(0.4)
        assert lock.read()["heartbeat"] > first
    assert not (tmp_path / "k.lock").exists()


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_is_old(tmp_path):
    path = tmp_path / "k.lock"
    rec = {"host": "elsewhere", "pid": 1, "owner": "remote build", "token": "t", "acquired": time.time(),
           "heartbeat": time.time()}
    path.write_text(json.dumps(rec))
    with pytest.raises(StoreLockedError, match="remote build"):
        StoreLock(path, stale_after=60).acquire()
    path.write_text(json.dumps({**rec, "heartbeat": time.time() - 120}))
    with pytest.warns(RuntimeWarning, match="breaking stale lock"):
        StoreLock(path, stale_after=60).acquire().release()


# --------------------------------------------------------------------------- only regular files are images


def test_a_fifo_and_a_dev_zero_link_are_recorded_never_opened(tmp_path):
    from facestore.build import build_store

    root = tmp_path / "chips"
    write_chips(root, {"Anna": {"p1": 2}, "Bob": {"p2": 2}})
    os.mkfifo(root / "Anna" / "p1" / "fifo.jpg")
    os.symlink("/dev/zero", root / "Bob" / "p2" / "zero.jpg")
    (root / "Bob" / "p2" / "folder.png").mkdir()
    ds = scan_dataset(root)
    assert len(ds) == 4
    reasons = dict(ds.skipped)
    assert reasons["Anna/p1/fifo.jpg"].startswith("fifo") and "outside the dataset root" in reasons["Bob/p2/zero.jpg"]
    assert reasons["Bob/p2/folder.png"].startswith("directory")
    assert "character_device" in dict(scan_dataset(root, follow_symlinks=True).skipped)["Bob/p2/zero.jpg"]
    report = build_store(root, tmp_path / "s", "pixels-32", workers=0, progress=False, chunk_rows=8)
    assert report.models[0].rows_written == 4
    info = open_store(tmp_path / "s").info()
    assert info["skipped"]["count"] == 3 and ["Anna/p1/fifo.jpg", reasons["Anna/p1/fifo.jpg"]] in info["skipped"]["entries"]
    manifest = root / "m.csv"
    manifest.write_text("path,name\nAnna/p1/000.jpg,Anna\nAnna/p1/fifo.jpg,Anna\n")
    with pytest.raises(DatasetError, match="line 3: path 'Anna/p1/fifo.jpg' is a fifo"):
        scan_dataset(manifest)


def test_symlinks_outside_the_root_are_refused_unless_followed(tmp_path):
    outside = tmp_path / "outside"
    write_chips(outside, {"Cleo": {"p9": 1}})
    root = tmp_path / "chips"
    write_chips(root, {"Anna": {"p1": 2}})
    os.symlink(outside / "Cleo", root / "Cleo")  # a linked name folder
    os.symlink(root / "Anna", root / "Anna2")  # a linked folder inside the root: followed, reported once
    ds = scan_dataset(root)
    assert set(ds.row_names) == {"Anna"} and "outside the dataset root" in dict(ds.skipped)["Cleo"]
    assert "already indexed" in dict(ds.skipped)["Anna2/"] or "already indexed" in dict(ds.skipped)["Anna/"]
    followed = scan_dataset(root, follow_symlinks=True)
    assert "Cleo" in set(followed.row_names) and followed.outside_root == ("Cleo/p9/000.jpg",)
    (root / "m.csv").write_text("path,name\nAnna/p1/000.jpg,Anna\nhost.jpg,X\n")
    os.symlink("/etc/hostname", root / "host.jpg")
    with pytest.raises(DatasetError, match="line 3: path 'host.jpg' resolves to /etc/hostname, outside"):
        scan_dataset(root / "m.csv")
    assert scan_dataset(root / "m.csv", follow_symlinks=True).outside_root == ("host.jpg",)


def test_the_writer_refuses_to_write_through_a_symlink_inside_the_store(planted, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chunks = planted.path / "models" / "toy" / "embedding" / "c"
    os.rename(chunks, elsewhere / "c")
    os.symlink(elsewhere / "c", chunks)
    before = sorted(p.name for p in (elsewhere / "c").iterdir())
    with pytest.raises(StoreError, match="symbolic link inside the store"):
        w = planted.model_writer("toy", spec=planted.model_spec("toy"), views={"embedding": 8}, dtype="float32",
                                 chunk_rows=64, kind="imported")
        w.write_chunk(0, {"embedding": np.zeros((64, 8), np.float32)}, np.ones(64, np.uint8), [""] * 64)
    assert sorted(p.name for p in (elsewhere / "c").iterdir()) == before


# --------------------------------------------------------------------------- names and manifests


def test_whitespace_and_unicode_variants_of_a_name_are_one_name(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    rows = ["path,name", "a.jpg, anna", "a.jpg,anna ", "a.jpg,anna", "a.jpg,Zoe\u0308", "a.jpg,Zo\u00eb"]
    text = "\n".join(f"{r.split(',')[0]}{i},{r.split(',', 1)[1]}" if i else r for i, r in enumerate(rows)) + "\n"
    for i in range(1, len(rows)):
        (tmp_path / f"a.jpg{i}").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    ds = scan_dataset(tmp_path / "m.csv")
    assert ds.names == ["Zo\u00eb", "anna"]
    store = create_store(tmp_path / "s")
    store.sync_index(ds, workers=1)
    idx = open_store(store.path).index
    assert idx.names == ["Zo\u00eb", "anna"]
    assert sorted(set(idx.verbatim_names.tolist())) == ["", " anna", "Zoe\u0308", "anna "]


def test_a_ragged_manifest_row_is_an_error_naming_its_line(tmp_path):
    (tmp_path / "m.csv").write_text("path,name,identity\na.jpg,x,p1\nb.jpg,y\nc.jpg,z,p3,extra\n")
    with pytest.raises(DatasetError, match=r"line 3: 2 field\(s\), the header has 3; line 4: 4 field"):
        scan_dataset(tmp_path / "m.csv")


def test_rehash_catches_an_edit_that_restored_size_and_mtime(tmp_path, chip_folder):
    store = create_store(tmp_path / "s")
    store.sync_index(scan_dataset(chip_folder), workers=1)
    p = chip_folder / "Anna" / "p1" / "000.jpg"
    st = p.stat()
    raw = bytearray(p.read_bytes())
    raw[-10] ^= 0xFF
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.sync_index(scan_dataset(chip_folder), workers=1).added == 0  # stat unchanged: trusted
    with pytest.raises(DatasetChangedError, match="Anna/p1/000.jpg"):
        store.sync_index(scan_dataset(chip_folder), workers=1, rehash=True)


# --------------------------------------------------------------------------- format versions


def _make_format1_store(path: Path, chip_folder: Path) -> np.ndarray:
    """A store as facestore wrote format 1.0.0: no checksums, default codecs, no completion markers."""
    ds = scan_dataset(chip_folder)
    root = zarr.open_group(str(path), mode="w")
    g = root.require_group("index")
    n = len(ds)
    from facestore.store._codec import str_array

    cols = {"image_id": ds.image_ids, "path": ds.paths, "label": ds.labels, "identity": ds.identities,
            "size": ds.sizes, "mtime_ns": ds.mtimes_ns, "content_hash": ds.content_hashes(workers=1)}
    for name, values in cols.items():
        arr = g.create_array(name, shape=(n,), dtype=str if values.dtype.kind in "UO" else values.dtype, chunks=(n,))
        arr[:] = values
    g.attrs.update({"names": ds.names, "has_identity": True, "source": "folder"})
    m = root.require_group("models").create_group("old")
    X = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    v = m.create_array("embedding", shape=(n, 4), dtype="float32", chunks=(8, 4), compressors=None, fill_value=0)
    v[:] = X
    m.create_array("status", shape=(n,), dtype="uint8", chunks=(8,), fill_value=0)[:] = np.ones(n, np.uint8)
    m.create_array("status_detail", shape=(n,), dtype=str, chunks=(8,))[:] = str_array([""] * n)
    m.attrs.update({"spec": {"name": "old", "family": "imported"}, "views": {"embedding": 4}, "dtype": "float32",
                    "chunk_rows": 8, "kind": "imported", "default_view": "embedding"})
    root.attrs.update({"encoding-type": "facestore", "encoding-version": "1.0.0", "n_images": n,
                       "data_root": str(ds.root)})
    return X


def test_a_format1_store_opens_read_only_with_a_warning_and_upgrades(tmp_path, chip_folder):
    from facestore.store.upgrade import upgrade_store

    X = _make_format1_store(tmp_path / "old", chip_folder)
    with pytest.warns(RuntimeWarning, match="facestore upgrade"):
        s = open_store(tmp_path / "old")
        np.testing.assert_array_equal(s.load("old")[0], X)
    with pytest.raises(StoreFormatError, match="facestore upgrade"):
        open_store(tmp_path / "old", mode="a")
    rep = upgrade_store(tmp_path / "old")
    assert rep["from"] == "1.0.0" and rep["to"] == layout.ENCODING_VERSION and rep["arrays"] == 10
    s = open_store(tmp_path / "old", mode="a")
    np.testing.assert_array_equal(s.load("old")[0], X)
    assert verify_store(s.path) == [] and s.is_complete("old")
    assert upgrade_store(tmp_path / "old")["arrays"] == 0


def test_the_store_package_has_no_import_cycle():
    import ast

    for module in ("writer", "_codec", "lock", "layout"):
        tree = ast.parse((ROOT / "facestore" / "store" / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "facestore.store.store" not in imported, module


def test_a_member_with_damaged_metadata_is_named_and_hides_nothing(tmp_path):
    store = planted_store(tmp_path / "p.zarr", n_names=3, dim=4, models=("toy", "ok"))
    (store.path / "models" / "toy" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreCorruptError, match="member 'models/toy' cannot be read"):
        open_store(store.path).load("toy")
    problems = verify_store(store.path, check_files=False)
    assert [(p.kind, p.model) for p in problems] == [("unreadable", "toy")]
    assert open_store(store.path).load("ok")[0].shape[1] == 4
