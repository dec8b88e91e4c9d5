"""The name-gender lexicon covariate: known names placed, made-up names unknown, provenance recorded,
and the probabilities equal to the lexicon package's own lookup."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from facestore.name_gender import NameGenderResult, gender_from_probability, infer_name_gender

KNOWN = {"Mary": "f", "John": "m", "Anna": "f", "William": "m", "Elizabeth": "f", "James": "m"}
MADE_UP = "Zorblaxquint"
NAMES = [*KNOWN, MADE_UP, "Jamie", "mary_ann", "  JOSÉ ", "James"]


@pytest.fixture(scope="module")
def result() -> NameGenderResult:
    return infer_name_gender(NAMES)


def test_known_names_are_placed_and_a_made_up_name_is_unknown(result):
    values = dict(zip(NAMES, result.values.tolist()))
    for name, gender in KNOWN.items():
        assert values[name] == gender, name
    assert values[MADE_UP] == "unknown" and math.isnan(result.probability[NAMES.index(MADE_UP)])
    assert MADE_UP in result.unknown and MADE_UP in result.not_in_lexicon
    # Jamie is in the lexicon but ambiguous (p ~ 0.35): unknown at 0.1, with its probability kept.
    assert values["Jamie"] == "unknown" and 0.2 < result.probability[NAMES.index("Jamie")] < 0.5
    assert "Jamie" in result.unknown and "Jamie" not in result.not_in_lexicon
    # Underscore as space, diacritics and case folded, surrounding spaces stripped.
    assert values["mary_ann"] == "f" and values["  JOSÉ "] == "m"
    # Duplicates are answered per position.
    assert result.values.shape == result.probability.shape == (len(NAMES),)
    assert result.values[NAMES.index("James")] == result.values[-1] == "m"


def test_provenance_is_recorded(result):
    from importlib.metadata import version

    assert result.version == version("nomquamgender")
    assert "nomquamgender" in result.source and result.threshold == 0.1
    attrs = result.to_attrs()
    assert attrs["n_names"] == len(NAMES) and attrs["unknown"] == sorted({MADE_UP, "Jamie"})
    import json

    json.dumps(attrs)


def test_probabilities_match_the_lexicon_package(result):
    """The trusted reference: nomquamgender's own NBGC().annotate on the same names (exact)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's import uses the deprecated importlib.resources.open_text
        import nomquamgender as nqg

        ref = np.array([row[-1] for row in nqg.NBGC().annotate([n.replace("_", " ") for n in NAMES])], dtype=float)
        ref_classes = nqg.NBGC(threshold=0.1).classify([n.replace("_", " ") for n in NAMES])
    np.testing.assert_array_equal(np.isnan(ref), np.isnan(result.probability))
    np.testing.assert_allclose(result.probability[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=0)
    assert [{"gf": "f", "gm": "m", "-": "unknown"}[c] for c in ref_classes] == result.values.tolist()


def test_threshold_rule_on_exact_probabilities():
    p = [0.0, 0.1, 0.1000001, 0.5, 0.75, 0.8, 0.9, 1.0, float("nan")]
    assert gender_from_probability(p, threshold=0.1).tolist() == [
        "m", "m", "unknown", "unknown", "unknown", "unknown", "f", "f", "unknown"]
    assert gender_from_probability(p, threshold=0.25).tolist() == [
        "m", "m", "m", "unknown", "f", "f", "f", "f", "unknown"]
    assert gender_from_probability(p, threshold=0.0).tolist() == [
        "m", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "f", "unknown"]


@pytest.mark.parametrize("bad", [-0.1, 0.5, 2])
def test_bad_threshold_says_what_is_allowed(bad):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 0.5\)"):
        infer_name_gender(["Mary"], threshold=bad)
