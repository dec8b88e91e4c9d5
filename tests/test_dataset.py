"""Ingestion: both layouts, and every bad input fails before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

from facestore.dataset import scan_dataset
from facestore.errors import DatasetError
from tests.conftest import write_chips


def test_folder_with_identities(chip_folder):
    ds = scan_dataset(chip_folder)
    assert len(ds) == 18 and ds.source == "folder"
    assert ds.names == ["Anna", "Bob", "Zoë"]  # sorted, unicode verbatim
    assert ds.image_ids[0] == "Anna/p1/000.jpg"  # POSIX path relative to the root
    assert list(ds.image_ids) == sorted(ds.image_ids)
    assert set(ds.identities) == {"Anna/p1", "Anna/p2", "Bob/p3", "Bob/p4", "Zoë/p5", "Zoë/p6"}
    assert ds.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert (ds.sizes > 0).all()
    h = ds.content_hashes(workers=2)
    assert len(set(h)) == 18 and all(len(x) == 32 for x in h)


def test_folder_without_identities(tmp_path):
    write_chips(tmp_path, {"a": {"": 2}, "b": {"": 1}})
    ds = scan_dataset(tmp_path)
    assert ds.identities is None and ds.image_ids.tolist() == ["a/000.jpg", "a/001.jpg", "b/000.jpg"]


def test_folder_mixing_depths_is_an_error(tmp_path):
    write_chips(tmp_path, {"a": {"": 1, "p1": 1}})
    with pytest.raises(DatasetError, match="identity folder"):
        scan_dataset(tmp_path)


def test_hidden_folders_are_recorded_not_indexed(chip_folder):
    # Notebook checkpoints and thumbnail caches beside the chips: walked, ".ipynb_checkpoints" became a
    # name (and, one level down, an identity, or a mix of depths that refused the whole dataset).
    write_chips(chip_folder, {".ipynb_checkpoints": {"": 2}, ".thumbnails": {"x": 1}})
    write_chips(chip_folder / "Anna", {".ipynb_checkpoints": {"p1": 1}})
    (chip_folder / "Bob" / ".cache").mkdir()
    ds = scan_dataset(chip_folder)
    assert len(ds) == 18 and ds.names == ["Anna", "Bob", "Zoë"]
    assert not any("/." in i or i.startswith(".") for i in ds.image_ids)
    assert sorted(p for p, _ in ds.skipped) == [".ipynb_checkpoints/", ".thumbnails/", "Anna/.ipynb_checkpoints/",
                                                 "Bob/.cache/"]
    assert all("hidden folder" in reason for _, reason in ds.skipped)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "name").mkdir()
    (tmp_path / "name" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        scan_dataset(tmp_path)


def test_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")


def _manifest(tmp_path, text):
    p = tmp_path / "m.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_manifest_with_all_columns(tmp_path, chip_folder):
    rows = ["path,name,identity,image_id"]
    rows += [f"chips/Anna/p1/00{k}.jpg,Anna,ident-1,id{k}" for k in range(3)]
    rows += ["chips/Zoë/p5/000.jpg,Zoë,ident-2,z0"]
    ds = scan_dataset(_manifest(tmp_path, "\n".join(rows) + "\n"))
    assert ds.image_ids.tolist() == ["id0", "id1", "id2", "z0"]
    assert ds.identities.tolist() == ["ident-1"] * 3 + ["ident-2"]
    assert ds.names == ["Anna", "Zoë"] and ds.source == "manifest"


def test_manifest_defaults_image_id_to_path(tmp_path, chip_folder):
    ds = scan_dataset(_manifest(tmp_path, "path,name\nchips/Bob/p3/000.jpg,Bob\n"))
    assert ds.image_ids.tolist() == ["chips/Bob/p3/000.jpg"] and ds.identities is None


@pytest.mark.parametrize(
    "text,match",
    [
        ("file,label\na.jpg,x\n", "lacks column"),
        ("path,name\n", "no rows"),
        ("path,name\n../outside.jpg,x\n", "escapes the dataset root"),
        ("path,name\n/etc/passwd,x\n", "escapes the dataset root"),
        ("path,name,image_id\na.jpg,x,same\nb.jpg,y,same\n", "duplicate image ID"),
        ("path,name,identity\na.jpg,x,\n", "empty identity"),
        ("path,name\na.jpg,\n", "empty path or name"),
    ],
)
def test_bad_manifests(tmp_path, text, match):
    with pytest.raises(DatasetError, match=match):
        scan_dataset(_manifest(tmp_path, text))


def test_unreadable_manifest(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(b"\xff\xfe\x00garbage\x00\xff")
    with pytest.raises(DatasetError, match="cannot read manifest"):
        scan_dataset(p)


def test_manifest_missing_file_is_indexed_not_fatal(tmp_path):
    ds = scan_dataset(_manifest(tmp_path, "path,name\nghost.jpg,x\n"))
    assert ds.sizes.tolist() == [-1]
    assert ds.content_hashes().tolist() == [""]
    assert np.asarray(ds.labels).tolist() == [0]
