"""What a new user hits first (issue h9): wrong weights for a model, options and commands that do not
fit, failed images to find, a hidden folder in the dataset, a resume command that works as printed.

Every error here must be one line with the exit code of docs/faq.md's table, never a traceback.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from click.testing import CliRunner

import facestore
import facestore.errors as errors
from facestore.cli import exit_code, main
from facestore.models import load_encoder
from tests.tiny import make_weights


def run(*args, code: int = 0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.exception)
    assert "Traceback" not in res.output
    return res


# ----------------------------------------------------------------------------- exit codes

#: docs/faq.md's exit-code table, one row per facestore error class.
EXPECTED_EXIT = {
    "FacestoreError": 1, "StoreError": 1, "BuildError": 1, "IncompleteModelError": 1,
    "ImageDecodeError": 1, "PreprocessFailure": 1,  # recorded per row; never reach the CLI
    "DatasetError": 2, "StoreNotFoundError": 2, "StoreExistsError": 2, "ViewNotFoundError": 2,
    "SpecMismatchError": 2, "DatasetChangedError": 2, "ModelNotFoundError": 2, "WeightsNotFoundError": 2,
    "DeviceError": 2, "ModelConfigError": 2, "TemplateError": 2, "BuildUsageError": 2,
    "StoreFormatError": 3, "StoreCorruptError": 3, "NonFiniteError": 3,
    "StoreLockedError": 4,
    "WeightsUnreadableError": 5,
}


def test_every_error_class_has_the_exit_code_of_the_table():
    classes = {n: c for n, c in vars(errors).items()
               if inspect.isclass(c) and issubclass(c, errors.FacestoreError)}
    assert set(classes) == set(EXPECTED_EXIT), "a new error class needs its row in EXPECTED_EXIT and docs/faq.md"
    got = {n: exit_code(c.__new__(c)) for n, c in classes.items()}
    assert got == EXPECTED_EXIT


def test_text_tower_and_template_errors_are_usage_errors():
    from facestore.models.base import TextTowerError
    from facestore.text import TemplateError

    assert exit_code(TextTowerError("dinov2-small")) == 2
    assert exit_code(TemplateError("no {}")) == 2


# ----------------------------------------------------------------------------- weights that do not fit


def test_a_transformers_folder_given_to_resnet50_says_what_it_holds(tmp_path):
    import json

    # What save_pretrained writes for DINOv2: config.json + model.safetensors, the names of a timm folder.
    dino = tmp_path / "dinov2-small"
    dino.mkdir()
    (dino / "config.json").write_text(json.dumps({"architectures": ["Dinov2Model"], "model_type": "dinov2"}))
    (dino / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(errors.ModelConfigError, match=r"transformers 'dinov2' checkpoint.*timm 'resnet50'"):
        load_encoder("resnet50", weights=str(dino), device="cpu")


def test_a_timm_folder_of_another_architecture_is_refused(tmp_path):
    import json

    folder = make_weights("resnet50", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "resnet18"}))
    with pytest.raises(errors.ModelConfigError, match=r"timm 'resnet18' checkpoint but resnet50 is 'resnet50'"):
        load_encoder("resnet50", weights=str(folder), device="cpu")


def test_a_safetensors_file_of_another_model_is_one_short_line(tmp_path):
    clip = make_weights("clip-vit-b-32", tmp_path)
    with pytest.raises(errors.ModelConfigError) as info:
        load_encoder("resnet50", weights=str(clip / "open_clip_model.safetensors"), device="cpu")
    msg = str(info.value)
    assert "do not fit timm's 'resnet50'" in msg and "missing" in msg and "unexpected" in msg
    assert len(msg) < 600 and "\n" not in msg  # torch's own message lists every key


def test_a_library_error_while_loading_names_the_model_and_the_weights(tmp_path, monkeypatch):
    import facestore.models.timm_family as tf

    def broken(*a, **k):
        raise KeyError("pretrained_cfg")  # what a library raises on a checkpoint it does not understand

    monkeypatch.setattr(tf, "_load_timm", broken)
    with pytest.raises(errors.ModelConfigError, match=r"resnet50: could not load --weights '/w' \(KeyError: "
                                                       r"pretrained_cfg\).*facestore models resnet50"):
        load_encoder("resnet50", weights="/w", device="cpu")


def test_cli_wrong_weights_and_options_are_one_line_usage_errors(chip_folder, tmp_path):
    w = make_weights("resnet50", tmp_path / "w")
    res = run("build", "--data", chip_folder, "--store", tmp_path / "s", "--model", "random-vit-tiny",
              "--weights", w, "--no-progress", code=2)
    assert "takes no weights; drop --weights" in res.output
    res = run("build", "--data", chip_folder, "--store", tmp_path / "s", "--model", "pixels-32",
              "--arcface-align", "center", "--no-progress", code=2)
    assert "--arcface-align" in res.output and "applies to arcface-r50" in res.output
    res = run("build", "--data", chip_folder, "--store", tmp_path / "s", "--model", "pixels-32",
              "--model", "pixels-32", "--no-progress", code=2)
    assert "more than once" in res.output
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- failed images, resuming


def _bad_images(root: Path) -> None:
    good = next(root.glob("Anna/p1/*.jpg")).read_bytes()
    (root / "Anna" / "p1" / "cut.jpg").write_bytes(good[:300])
    (root / "Bob" / "p3" / "empty.jpg").write_bytes(b"")


def test_info_names_the_failed_images_and_why(chip_folder, tmp_path):
    _bad_images(chip_folder)
    store = tmp_path / "s"
    res = run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--workers", "0",
              "--no-progress")
    assert f"`facestore info {store}` names the failed images" in res.output
    res = run("info", store)
    assert "failed: Anna/p1/cut.jpg: truncated (" in res.output
    assert "failed: Bob/p3/empty.jpg: empty_file (" in res.output and "(empty_file:" not in res.output
    import json

    failures = json.loads(run("info", store, "--json").output)["models"]["pixels-32"]["failures"]
    assert [(f["image_id"], f["reason"]) for f in failures] == [("Anna/p1/cut.jpg", "truncated"),
                                                                 ("Bob/p3/empty.jpg", "empty_file")]
    assert all(f["detail"] for f in failures)


def test_the_printed_resume_command_carries_the_recorded_settings_and_resumes(chip_folder, tmp_path):
    import shlex

    store = tmp_path / "s"
    run("build", "--data", chip_folder, "--store", store, "--model", "pixels-32", "--chunk-rows", "4",
        "--dtype", "float32", "--workers", "0", "--no-progress")
    for f in (store / "models" / "pixels-32" / "status" / "c").iterdir():
        if f.name in ("1", "3"):
            f.unlink()  # two chunks back to pending, as after a kill
    s = facestore.open_store(store)
    assert not s.is_complete("pixels-32")
    command = s.fix_command("pixels-32")
    assert "--chunk-rows 4 --dtype float32" in command and "--batch-size" not in command
    assert f"INCOMPLETE: finish it with {command}" in run("info", store).output
    args = shlex.split(command.strip("`").split("`")[0])[1:]  # drop "facestore" and " (it resumes)"
    res = run(*args, "--workers", "0", "--no-progress")  # with the defaults it was refused: chunk_rows 4 -> 8192
    assert "8 rows written" in res.output
    assert facestore.open_store(store).is_complete("pixels-32")


def test_build_flags_reproduce_every_recorded_setting():
    from facestore.store.store import _build_flags

    defaults = {"chunk_rows": 8192, "dtype": "float16",
                "spec": {"name": "dinov2-small", "precision": "fp32", "options": {}, "weights": {"kind": "hub"},
                         "pipeline": {"batch_size": 32, "decode": "full", "device_type": "cpu"}}}
    assert _build_flags(defaults) == []
    arcface = {"chunk_rows": 8192, "dtype": "float16",
               "spec": {"name": "arcface-r50", "precision": "bf16",
                        "options": {"arcface_align": "center", "no_face": "record", "arcface_center_fraction": 0.5},
                        "weights": {"kind": "local", "path_name": "buffalo_l"},
                        "pipeline": {"batch_size": 64, "decode": "draft", "device_type": "cuda"}}}
    assert _build_flags(arcface) == ["--batch-size 64", "--decode draft", "--device cuda", "--precision bf16",
                                     "--arcface-align center", "--weights DIR"]


# ----------------------------------------------------------------------------- what a build prints


def test_build_logs_facestore_lines_not_every_library_info_line():
    import logging

    from facestore.cli import _setup_logging

    root, ours = logging.getLogger(), logging.getLogger("facestore")
    saved = root.level, ours.level
    try:
        root.setLevel(logging.WARNING)
        _setup_logging(verbose=True)
        assert logging.getLogger("facestore.build").isEnabledFor(logging.INFO)  # device, precision, providers
        assert not logging.getLogger("open_clip_logs_to_root").isEnabledFor(logging.INFO)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


def test_no_progress_silences_the_transformers_loading_bar(chip_folder, tmp_path, monkeypatch):
    import transformers.utils.logging as tlog

    # As on a user's machine: the suite's HF_HUB_DISABLE_PROGRESS_BARS=1 keeps it off otherwise.
    monkeypatch.setattr(tlog, "_tqdm_active", True)
    run("build", "--data", chip_folder, "--store", tmp_path / "s", "--model", "pixels-32", "--workers", "0",
        "--no-progress")
    assert not tlog.is_progress_bar_enabled()


def test_a_locked_model_is_named_and_its_holder_pid_said_once(tmp_path):
    import os
    import re

    from facestore.errors import StoreLockedError
    from facestore.store.lock import StoreLock

    path = tmp_path / "s" / ".locks" / "dinov2-small.lock"
    with StoreLock(path, owner=f"facestore build (pid {os.getpid()})"):
        with pytest.raises(StoreLockedError) as info:
            StoreLock(path).acquire(wait_s=0)
    msg = str(info.value)
    assert msg.startswith(f"model 'dinov2-small' in {tmp_path / 's'} is being written by facestore build (pid "), msg
    assert len(re.findall(rf"pid {os.getpid()}\b", msg)) == 1, msg


def test_a_read_only_store_says_so_and_what_still_works():
    import errno

    from facestore.cli import _os_error_message

    e = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/s/.locks/.index.lock.0a1b.tmp")
    assert exit_code(e) == 5
    msg = _os_error_message(e)
    assert msg.startswith("read-only file system: /mnt/ro/s/.locks/") and "copy the store to a writable place" in msg


def test_warnings_print_as_one_line_each(chip_folder, tmp_path):
    import subprocess
    import sys

    from tests.test_integrity import _make_format1_store

    _make_format1_store(tmp_path / "old", chip_folder)
    res = subprocess.run([sys.executable, "-W", "default", "-m", "facestore", "info", str(tmp_path / "old")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith(f"Warning: {tmp_path / 'old'} uses store format 1.0.0"), res.stderr
    assert "RuntimeWarning" not in res.stderr and "open_store(" not in res.stderr  # no file:line, no source line


def test_ctrl_c_says_how_to_resume(chip_folder, tmp_path, monkeypatch):
    import facestore.build

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(facestore.build, "build_store", interrupted)
    res = run("build", "--data", chip_folder, "--store", tmp_path / "s", "--model", "pixels-32", "--no-progress",
              code=130)  # 128 + SIGINT, as shells report an interrupt
    assert "Error: interrupted; everything committed so far is kept: run the same command again" in res.output


def test_a_closed_pipe_ends_quietly(monkeypatch):
    import facestore.models

    def closed(*a, **k):
        raise BrokenPipeError(32, "Broken pipe")  # `facestore models | head -1`

    monkeypatch.setattr(facestore.models, "list_models", closed)
    res = run("models", code=1)
    assert "Error" not in res.output


def test_a_closed_pipe_in_a_real_shell_pipeline_prints_nothing():
    import subprocess
    import sys

    res = subprocess.run(f"{sys.executable} -m facestore models | head -1", shell=True, capture_output=True,
                         text=True, timeout=60)
    assert res.stdout.startswith("arcface-r50") and "Broken pipe" not in res.stderr, res.stderr


def test_a_store_path_that_holds_other_files_is_a_usage_error_said_once(chip_folder, tmp_path):
    res = run("build", "--data", chip_folder, "--store", chip_folder, "--model", "pixels-32", "--no-progress",
              code=2)
    assert res.output.count("pass a new directory or an existing store") == 1, res.output
    assert "to --store" in res.output
