"""Name x template text embeddings: the plan's templates, a templates file, both text towers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import facestore
from facestore.build import build_store
from facestore.cli import main
from facestore.models import load_encoder
from facestore.models.base import TextTowerError
from facestore.text import PLAN_TEMPLATES, TemplateError, build_text_embeddings, check_templates, read_templates
from tests.tiny import make_weights


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from tests.conftest import write_chips

    base = tmp_path_factory.mktemp("text")
    write_chips(base / "chips", {"Anna": {"": 1}, "Bob": {"": 1}, "Zoë": {"": 1}})
    build_store(base / "chips", base / "s", "pixels-32", workers=0, progress=False)
    return base / "s"


@pytest.mark.parametrize("model", ["clip-vit-b-32", "siglip-base"])
def test_text_embeddings_of_the_plan_templates(model: str, store: Path, tmp_path: Path):
    weights = make_weights(model, tmp_path / "w")
    report = build_text_embeddings(store, model, weights=weights, device="cpu")
    assert report.template_set == "plan" and report.templates == PLAN_TEMPLATES and report.n_names == 3
    te = facestore.open_store(store).text_embeddings(model, "plan")
    assert te.names == ["Anna", "Bob", "Zoë"] and te.templates == list(PLAN_TEMPLATES)
    enc = load_encoder(model, weights=str(weights), device="cpu")
    direct = np.asarray(enc.encode_text(["a portrait of Zoë", "a photo of a person named Anna"]), dtype=np.float32)
    np.testing.assert_allclose(te.embeddings[2, 4], direct[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(te.embeddings[0, 0], direct[1], rtol=1e-5, atol=1e-6)
    params = enc.text_logit_params()
    assert te.logit_scale == pytest.approx(params["logit_scale"]) and te.embeddings.shape == (3, 5, report.dim)
    assert (te.logit_bias is None) == (model == "clip-vit-b-32")
    assert te.spec["name"] == model


def test_text_command_with_a_templates_file(store: Path, tmp_path: Path):
    weights = make_weights("clip-vit-b-32", tmp_path / "w")
    templates = tmp_path / "short.txt"
    templates.write_text("# two prompts\n{}\nhello, {}!\n\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["text", str(store), "--model", "clip-vit-b-32", "--weights", str(weights),
                                       "--templates", str(templates), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "3 names x 2 templates" in result.stdout and "'short'" in result.stdout
    st = facestore.open_store(store)
    assert "short" in st.text_template_sets("clip-vit-b-32")
    assert st.text_embeddings("clip-vit-b-32", "short").templates == ["{}", "hello, {}!"]


def test_models_without_a_text_tower_and_bad_templates_are_refused(store: Path, tmp_path: Path):
    with pytest.raises(TextTowerError, match="clip-vit-b-32, siglip-base"):
        build_text_embeddings(store, "dinov2-small")
    result = CliRunner().invoke(main, ["text", str(store), "--model", "resnet50"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: model 'resnet50' has no text tower")
    with pytest.raises(TemplateError, match="exactly one"):
        check_templates(["a photo of {} and {}"])
    with pytest.raises(TemplateError, match="duplicate"):
        check_templates(["{}", "{}"])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(TemplateError, match="no templates"):
        read_templates(empty)


def test_built_in_name_tailored_set_and_unknown_sets(store: Path, tmp_path: Path):
    from facestore.text import NAME_TAILORED_TEMPLATES

    weights = make_weights("clip-vit-b-32", tmp_path / "w")
    report = build_text_embeddings(store, "clip-vit-b-32", template_set="name-tailored", weights=weights, device="cpu")
    assert report.templates == NAME_TAILORED_TEMPLATES
    te = facestore.open_store(store).text_embeddings("clip-vit-b-32", "name-tailored")
    assert te.embeddings.shape[:2] == (3, len(NAME_TAILORED_TEMPLATES))
    with pytest.raises(TemplateError, match="built in: plan, name-tailored"):
        build_text_embeddings(store, "clip-vit-b-32", template_set="mine", weights=weights, device="cpu")
