"""The probes CLI's friction points (issue 13.3): ``-h`` everywhere, help on every option, one exit
code per class of error (the table facestore uses, docs/faq.md), no traceback for a user error,
hints that suggest commands that can work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from probes.cli import main
from tests.synthetic import planted_store


def _invoke(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    # A user error is one line and an exit code, never a traceback.
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("friction") / "s.zarr"
    planted_store(path, n_names=4, dim=8, chunk_rows=64)
    return path


def test_h_works_on_the_group_and_every_command():
    for args in (["-h"], ["--help"]):
        res = _invoke(args)
        assert res.exit_code == 0 and "Usage:" in res.output
    for name in main.commands:
        res = _invoke([name, "-h"])
        assert res.exit_code == 0 and "Usage:" in res.output, name


def test_every_option_of_every_command_has_help_text():
    missing = [f"probes {name} {p.opts[0]}" for name, cmd in main.commands.items() for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert missing == []


def test_exit_codes_are_facestores_table():
    from facestore import errors as fe
    from facestore.cli import exit_code as facestore_code

    from probes import errors as pe
    from probes.cli_common import exit_code

    cases = {
        pe.NameTaskError("x"): 2, pe.CovariateError("x"): 2, pe.NotEnoughDataError("x"): 2,
        pe.ResultsNotFoundError("x"): 2, fe.IncompleteModelError("x"): 1, fe.NonFiniteError("x"): 3,
        fe.StoreCorruptError("x"): 3, fe.StoreLockedError("x"): 4, PermissionError(13, "Permission denied"): 5,
        OSError(28, "No space left on device"): 5,
    }
    for error, code in cases.items():
        assert exit_code(error) == code, repr(error)
        if isinstance(error, fe.FacestoreError):
            assert facestore_code(error) == code, repr(error)  # the same table in both CLIs


def test_usage_errors_exit_2_with_the_message(store_path, tmp_path):
    res = _invoke(["linear", "--store", store_path, "--model", "toy", "--bogus", "--out", tmp_path])
    assert res.exit_code == 2 and "No such option '--bogus'" in res.output
    res = _invoke(["knn", "--store", store_path, "--model", "nope", "--out", tmp_path])
    assert res.exit_code == 2 and "model 'nope' is not in the store" in res.output and "stored: toy" in res.output
    res = _invoke(["knn", "--store", store_path, "--model", "toy", "--names", tmp_path / "missing.txt",
                   "--out", tmp_path])
    assert res.exit_code == 2 and "file not found" in res.output
    res = _invoke(["knn", "--store", store_path, "--model", "toy", "--permutations", "5", "--out", tmp_path])
    assert res.exit_code == 2 and "add --control COVARIATE" in res.output


def test_an_empty_results_folder_says_which_commands_write_results(tmp_path):
    for cmd in ("compare", "report"):
        res = _invoke([cmd, tmp_path])
        assert res.exit_code == 2, res.output
        assert "no result folders" in res.output and "probes track3 --store STORE --out" in res.output


def test_a_damaged_store_exits_3_and_names_the_chunk(tmp_path):
    store = planted_store(tmp_path / "d.zarr", n_names=4, dim=8, chunk_rows=64)
    f = Path(store.path) / "models" / "toy" / "embedding" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[10:60] = np.random.default_rng(0).integers(0, 256, 50, dtype=np.uint8).tobytes()
    f.write_bytes(bytes(raw))
    res = _invoke(["knn", "--store", store.path, "--model", "toy", "--out", tmp_path / "r"])
    assert res.exit_code == 3 and "chunk 1" in res.output and res.output.startswith("Error: ")


@pytest.mark.parametrize("error, code, text", [
    ("locked", 4, "locked by pid 4242"),
    ("permission", 5, "permission denied: "),
])
def test_locked_and_permission_errors_exit_4_and_5(store_path, tmp_path, monkeypatch, error, code, text):
    import probes.splits
    from facestore.errors import StoreLockedError

    def refuse(*args, **kwargs):
        if error == "locked":
            raise StoreLockedError(f"the store {store_path} is locked by pid 4242 (a build); wait for it to finish")
        raise PermissionError(13, "Permission denied", str(store_path / "splits"))

    monkeypatch.setattr(probes.splits, "get_split", refuse)
    res = _invoke(["knn", "--store", store_path, "--model", "toy", "--out", tmp_path])
    assert res.exit_code == code and text in res.output and res.output.startswith("Error: ")
    if error == "permission":
        assert "splits (running as user" in res.output  # which path, which user


def test_controls_are_a_lazy_export():
    code = ("import sys, probes; assert 'probes.controls' not in sys.modules; "
            "assert callable(probes.controls.covariate_controls); assert 'controls' in dir(probes)")
    subprocess.run([sys.executable, "-c", code], check=True)
