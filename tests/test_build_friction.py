"""First-build friction (issues 13.3 and 11.8): an offline hub fails fast and once, a build that fails before
any vector leaves no store behind, and a bad --weights folder says what it should hold (permission, not "missing")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from facestore.errors import WeightsNotFoundError
from facestore.models import load_encoder
from facestore.models.hub import offline_mode, offline_reason
from facestore.models.weights import WeightsUnreadableError
from tests.tiny import make_weights

ROOT = Path(__file__).resolve().parents[1]

# Every family that takes a --weights folder, and what an empty one must be told to hold.
EXPECTED_FILES = {
    "dinov2-small": ["config.json", "model.safetensors", "preprocessor_config.json"],
    "dinov3-vits16": ["config.json", "model.safetensors"],
    "siglip-base": ["config.json", "model.safetensors"],
    "clip-vit-b-32": ["open_clip_config.json", "open_clip_model.safetensors"],
    "resnet50": ["config.json", "model.safetensors"],
    "supcon-resnet50": ["supcon_config.json", "model.safetensors"],
    "arcface-r50": ["w600k_r50.onnx", "det_10g.onnx"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_an_empty_weights_folder_names_the_files_it_should_hold(name, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError) as info:
        load_encoder(name, weights=str(empty), device="cpu")
    msg = str(info.value)
    assert all(f in msg for f in EXPECTED_FILES[name]), msg
    assert "empty" in msg and str(empty) in msg


def test_a_folder_of_another_family_says_what_it_holds_and_what_was_expected(tmp_path):
    dino = make_weights("dinov2-small", tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"open_clip_config\.json.*it holds config\.json"):
        load_encoder("clip-vit-b-32", weights=str(dino), device="cpu")
    clip = make_weights("clip-vit-b-32", tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"no config\.json.*save_pretrained.*open_clip_config\.json"):
        load_encoder("dinov2-small", weights=str(clip), device="cpu")


@pytest.mark.parametrize("name,victim", [("dinov2-small", "model.safetensors"),
                                         ("clip-vit-b-32", "open_clip_model.safetensors"),
                                         ("arcface-r50", "w600k_r50.onnx")])
def test_an_unreadable_weights_file_is_permission_denied_not_missing(name, victim, tmp_path, monkeypatch):
    import facestore.models.weights as w

    folder = make_weights(name, tmp_path)
    real_open = w._open

    def deny(path):  # the suite runs as root, who reads every file: deny the one the test names
        if Path(path).name == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(w, "_open", deny)
    with pytest.raises(WeightsUnreadableError) as info:
        load_encoder(name, weights=str(folder), device="cpu")
    msg = str(info.value)
    assert f"permission denied reading {folder / victim}" in msg and "running as" in msg and "chmod" in msg
    assert "missing" not in msg and "pickled" not in msg and "No such file" not in msg
    assert isinstance(info.value, PermissionError)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_chmod_000_weights_file_is_permission_denied(tmp_path):
    folder = make_weights("dinov2-small", tmp_path)
    (folder / "model.safetensors").chmod(0)
    with pytest.raises(WeightsUnreadableError, match="permission denied reading"):
        load_encoder("dinov2-small", weights=str(folder), device="cpu")


def test_a_build_that_fails_before_any_vector_leaves_no_store(chip_folder, tmp_path):
    from facestore.cli import main as cli_main

    empty = tmp_path / "empty"
    empty.mkdir()
    store = tmp_path / "new_store"
    res = CliRunner().invoke(cli_main, ["build", "--data", str(chip_folder), "--store", str(store),
                                        "--model", "dinov2-small", "--weights", str(empty), "--workers", "0",
                                        "--no-progress"])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output  # a message, not a crash
    assert "Traceback" not in res.output and "config.json" in res.output
    assert not store.exists()  # no half-made store (index only) to trip the next command


def _offline_build(tmp_path: Path, chip_folder: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "PYTHONWARNINGS": "ignore"}, **env_extra)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    cmd = [sys.executable, "-m", "facestore", "build", "--data", str(chip_folder), "--store", str(tmp_path / "s"),
           "--model", "dinov2-small", "--workers", "0", "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_an_unreachable_hub_fails_fast_once_and_says_what_to_do(chip_folder, tmp_path):
    """No HF_HUB_OFFLINE and no route to the hub: one message at once, not 30 s of doubled retry lines."""
    # Port 9 (discard) on the loopback refuses at once: a hub that cannot be reached, deterministically.
    proc = _offline_build(tmp_path, chip_folder, {"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode != 0
    err = proc.stderr
    assert "Retrying" not in err and "Traceback" not in err, err
    assert err.count("Error:") == 1 and "HF_HUB_OFFLINE=1" in err and "--weights DIR" in err, err
    assert "facebook/dinov2-small" in err and "127.0.0.1:9" in err
    assert not (tmp_path / "s").exists()


def test_hf_hub_offline_gives_the_same_single_message(chip_folder, tmp_path):
    from facestore.cli import main as cli_main

    res = CliRunner().invoke(cli_main, ["build", "--data", str(chip_folder), "--store", str(tmp_path / "s"),
                                        "--model", "siglip-base", "--workers", "0", "--no-progress"],
                             env={"HF_HUB_OFFLINE": "1"})
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert res.output.count("Error:") == 1 and "HF_HUB_OFFLINE=1 is set" in res.output, res.output
    assert "google/siglip-base-patch16-224" in res.output and "--weights DIR" in res.output
    assert not (tmp_path / "s").exists()


def test_offline_reason_and_offline_mode():
    calls = []

    def probe(host, port, timeout):
        calls.append((host, port))
        return None if host == "hub.example" else f"{host}:{port} is not reachable"

    assert offline_reason(env={"HF_HUB_OFFLINE": "1"}, probe=probe) == "HF_HUB_OFFLINE=1 is set" and not calls
    assert offline_reason(env={}, endpoint="https://hub.example", probe=probe) is None
    assert offline_reason(env={}, endpoint="https://elsewhere.example", probe=probe) == \
        "elsewhere.example:443 is not reachable"
    # Behind a proxy the direct probe proves nothing: the hub is tried.
    assert offline_reason(env={"HTTPS_PROXY": "http://proxy:3128"}, endpoint="https://x.example", probe=probe) is None
    assert calls == [("hub.example", 443), ("elsewhere.example", 443)]
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with offline_mode():
        assert constants.is_offline_mode()
    assert constants.HF_HUB_OFFLINE == before


def test_supcon_checkpoint_folder_check_runs_before_loading(tmp_path):
    folder = make_weights("supcon-resnet50", tmp_path)
    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"no model\.safetensors.*probes supcon --train-encoder.*holds"):
        load_encoder("supcon-resnet50", weights=str(broken), device="cpu")
