"""The README and docs are executed: their code blocks must run, and what they state must hold.

Convention (stated in the README): fenced ```python and ```bash blocks are executed here, in a
temporary folder holding a small ``demo/`` made the way ``facestore demo`` makes it (synthetic
chips in ``demo/data``, a store with ``pixels-32`` and ``random-vit-tiny`` in ``demo/store``,
Track 3 results in ``demo/results``); ```console blocks need a GPU, real data, the network or
a long run and are not executed. Python blocks of one file share a namespace, in order; each
bash block runs with ``bash -euo pipefail``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The user-facing pages. docs/design.md (module contracts, sketched in python-like signatures)
# and docs/store-format.md (the format spec) are reference material outside this convention.
DOCS = [ROOT / "README.md", *(ROOT / "docs" / n for n in ("models.md", "probes.md", "reproduce-track3.md", "faq.md"))]
FENCE = re.compile(r"^```([A-Za-z]*)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
EXECUTED = ("python", "bash")
SHOWN = ("console",)


def blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A small demo/ folder made through the same functions as ``facestore demo``."""
    from facestore.build import build_store
    from probes.demo import DEMO_MODELS, make_synthetic_chips, zipf_people
    from probes.track3 import run_track3

    base = tmp_path_factory.mktemp("docs")
    demo = base / "demo"
    make_synthetic_chips(demo / "data", n_names=4, people_per_name=zipf_people(4, most=12, minimum=6),
                         images_per_person=2, size=64)
    build_store(demo / "data", demo / "store", list(DEMO_MODELS), device="cpu", workers=0,
                progress=False)
    report = run_track3(demo / "store", demo / "results", names=("all",), only=["pixels32"], device="cpu",
                        n_boot=50, plots=False, progress=False, echo=lambda line: None)
    assert [r.status for r in report.records] == ["ran"], report.records
    return base


def test_every_block_follows_the_convention():
    for path in DOCS:
        for lang, _ in blocks(path):
            assert lang in EXECUTED + SHOWN, f"{path.name}: a ```{lang or '(no language)'} block; use python, bash or console"


def test_readme_opens_with_install_main_job_and_test_command():
    first = [body.strip() for _, body in blocks(ROOT / "README.md")[:3]]
    assert first == [
        'python3 -m venv .venv && . .venv/bin/activate\npip install -e ".[cpu,dev]"',
        "facestore demo demo/",
        "HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 python -m pytest -q",
    ]
    ci = ROOT / ".ci" / "run"
    if ci.is_file():  # CI runs exactly the README's test command
        assert first[2] in ci.read_text()


def test_doc_links_point_at_files_that_exist():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).is_file(), f"{path.name} links to missing {target}"


def test_models_table_is_generated_from_the_registry():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_models
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = gen_models.render()
    assert (ROOT / "docs" / "models.md").read_text(encoding="utf-8") == text, "run `python docs/gen_models.py`"
    from facestore.models import list_models

    for name in list_models():
        assert f"| `{name}` |" in text
    assert "non-commercial" in text


def test_documented_cli_commands_exist():
    """Every `facestore X` / `probes X` in a doc's code (blocks and inline code) is a real command."""
    from facestore.cli import main as facestore_main
    from probes.cli import main as probes_main

    # track3 is probes.track3.track3_command; it also runs as `python -m probes.track3`.
    known = {"facestore": set(facestore_main.commands), "probes": set(probes_main.commands) | {"track3"}}
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        code = [body for lang, body in blocks(path) if lang != "python"] + re.findall(r"`([^`\n]+)`", FENCE.sub("", text))
        for snippet in code:
            for tool, command in re.findall(r"(?:^|[\s;(])(facestore|probes) ([a-z][a-z0-9-]*)", snippet, re.MULTILINE):
                assert command in known[tool], f"{path.name} shows `{tool} {command}`, which is not a command"


@pytest.mark.parametrize("path", [p for p in DOCS if any(lang in EXECUTED for lang, _ in blocks(p))],
                         ids=lambda p: p.name)
def test_doc_code_blocks_run(path, demo_dir, monkeypatch):
    monkeypatch.chdir(demo_dir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    namespace: dict = {"__name__": f"doc:{path.name}"}
    for i, (lang, body) in enumerate(blocks(path)):
        if lang == "python":
            exec(compile(body, f"{path.name}[block {i}]", "exec"), namespace)  # noqa: S102 - the doc's own example
        elif lang == "bash":
            res = subprocess.run(["bash", "-euo", "pipefail", "-c", body], check=False, cwd=demo_dir, env=env,
                                 capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, f"{path.name} block {i} failed:\n{body}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
