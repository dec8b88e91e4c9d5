"""Result folders are written atomically and read back only when their files agree with the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from probes.errors import ResultFormatError
from probes.results import find_results, read_result, write_result


def _write(folder, value: int):
    n = 6
    return write_result(
        folder, config={"value": value}, predictions=np.full(n, value % 3), true_labels=np.arange(n) % 3,
        names=["a", "b", "c"], image_ids=[f"img{i}" for i in range(n)], summary={"experiment": "x", "value": value},
        per_class=[{"name": c, "precision": 0, "recall": 0, "f1-score": 0, "support": 2} for c in "abc"],
        log=["one line"],
    )


def test_manifest_is_written_and_checked(tmp_path):
    folder = _write(tmp_path / "track3_x", 1)
    r = read_result(folder)
    assert r.summary["format"]["version"] == 2
    assert set(r.summary["manifest"]) >= {"predictions.npy", "true_labels.npy", "names.json", "config.json"}
    assert "run.log" not in r.summary["manifest"]  # logs are appended to later
    with open(folder / "run.log", "a") as f:
        f.write("track3: appended\n")
    read_result(folder)
    np.save(folder / "predictions.npy", np.zeros(6, dtype=np.int64))  # a file from another run
    with pytest.raises(ResultFormatError, match="predictions.npy does not match its manifest"):
        read_result(folder)
    summary = json.loads((folder / "summary.json").read_text())
    del summary["manifest"]
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ResultFormatError, match="no file manifest"):
        read_result(folder)


_KILL = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import probes.results as R
    folder, where = sys.argv[1], sys.argv[2]
    if where == "summary":
        real = R._write_json
        def dying(path, obj):
            if path.name == "summary.json":
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)
        R._write_json = dying
    else:  # between moving the old folder aside and the new one into place
        real_rename = R.os.rename
        done = []
        def dying_rename(a, b):
            if any(".old-" in str(t) for t in done):
                os.kill(os.getpid(), signal.SIGKILL)
            real_rename(a, b)
            done.append(b)
        R.os.rename = dying_rename
    R.write_result(folder, config={"value": 2}, predictions=np.full(6, 2), true_labels=np.arange(6) % 3,
                   names=["a", "b", "c"], image_ids=[f"img{i}" for i in range(6)],
                   summary={"experiment": "x", "value": 2},
                   per_class=[{"name": c, "precision": 0, "recall": 0, "f1-score": 0, "support": 2} for c in "abc"])
""")


@pytest.mark.parametrize("where", ["summary", "rename"])
def test_a_rerun_killed_mid_write_leaves_the_old_folder_or_none(tmp_path, where):
    folder = _write(tmp_path / "track3_x", 1)
    proc = subprocess.run([sys.executable, "-c", _KILL, str(folder), where], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    if where == "summary":
        r = read_result(folder)  # the old complete folder, untouched
        assert r.summary["value"] == 1 and r.config == {"value": 1} and (r.predictions == 1).all()
    else:
        assert not folder.exists()  # none, and no half folder is ever listed
    assert find_results(tmp_path) == ([folder] if where == "summary" else [])
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden  # the killed writer's temporary (or the old one set aside) stays hidden
    # The next write cleans the dead writer's temporary folder and replaces the result whole.
    _write(folder, 3)
    assert read_result(folder).summary["value"] == 3
    assert not [p for p in tmp_path.glob(".track3_x.tmp-*")]
