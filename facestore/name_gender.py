"""Name-derived gender, offline, from a maintained name-gender lexicon.

Names carry gender and faces carry gender, so a probe that "reads first names from faces" may
read nothing but gender (Kramer & Jones 2015). To control for it every image needs a gender
value; for first names the lexicon gives it without looking at the face, so the covariate can
never leak face information into the control.

The lexicon is **nomquamgender** (Van Buskirk, Clauset & Larremore, "An open-source cultural
consensus approach to name-based gender classification", ICWSM 2023), from PyPI:

- it gives a per-name probability ``p(gf)`` that a person with the name is gendered female,
  pooled over up to 35 sources (about 720,000 names, many languages), so a threshold can be chosen
  and recorded, and ambiguous names (Jamie 0.35, Kim 0.67) are visibly ambiguous;
- its licence is MIT (package metadata: ``License :: OSI Approved :: MIT License``), which is
  compatible with this project's Apache-2.0.

The other candidate, gender-guesser 0.4.0, is GPLv3 (its metadata ``License: GPLv3``), which
cannot be shipped inside an Apache-2.0 distribution, and it only gives six categories
(``male``, ``mostly_male``, ``andy``, ...), no probabilities.

The package's module emits a DeprecationWarning on import and imports pandas, so the lexicon
file it ships (``nomquamgender/name_data.json``, each entry ``[sources, counts, p(gf), ...]``)
is read directly and its documented lookup rule is applied here: the name is transliterated to
ASCII (unidecode), lower-cased and stripped; the whole string is looked up, then its first
space-separated word. Underscores count as spaces (folder datasets often write
``Mary_Ann``). The classification rule is the package's too: a name is placed when its
uncertainty ``0.5 - |0.5 - p|`` is at most ``threshold`` (default 0.1, the package's default:
``p >= 0.9`` is ``f``, ``p <= 0.1`` is ``m``); every other name is ``unknown``. The tests check
the probabilities against the package's own ``NBGC().annotate``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LEXICON", "NameGenderResult", "gender_from_probability", "infer_name_gender"]

LEXICON = "nomquamgender"
_DATA_FILE = "nomquamgender/name_data.json"
DEFAULT_THRESHOLD = 0.1
VALUES = ("f", "m", "unknown")


@dataclass(frozen=True, eq=False)
class NameGenderResult:
    """The lexicon's gender of each name, aligned with the names given.

    ``values`` (n,) str: ``f``, ``m`` or ``unknown``; ``probability`` (n,) float: the lexicon's
    P(female), NaN for a name not in the lexicon; ``unknown``: the distinct names left
    ``unknown`` (not in the lexicon, or too ambiguous for ``threshold``), sorted;
    ``not_in_lexicon``: the subset of those the lexicon does not list at all.
    """

    values: np.ndarray
    probability: np.ndarray
    source: str
    version: str
    threshold: float
    unknown: tuple[str, ...]
    not_in_lexicon: tuple[str, ...] = field(default=())

    def to_attrs(self) -> dict:
        """JSON-able provenance for a covariate's attrs: source, version, threshold, the unknown names."""
        return {
            "source": self.source,
            "version": self.version,
            "threshold": self.threshold,
            "rule": "f if p(female) >= 1 - threshold, m if p(female) <= threshold, else unknown",
            "n_names": int(self.values.size),
            "n_unknown": len(self.unknown),
            "unknown": list(self.unknown),
            "not_in_lexicon": list(self.not_in_lexicon),
        }


def _lexicon_version() -> tuple[str, object]:
    from importlib import metadata

    try:
        dist = metadata.distribution(LEXICON)
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the name-gender lexicon needs the {LEXICON!r} package; install it with "
            f"`pip install {LEXICON}` (it is a dependency of facestore, so `pip install -e .` also does)"
        ) from None
    path = dist.locate_file(_DATA_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{LEXICON} {dist.version} is installed but {_DATA_FILE} is missing; reinstall it")
    return dist.version, path


def _parse(name) -> str:
    from unidecode import unidecode

    return unidecode(str(name).replace("_", " ")).lower().strip()


def gender_from_probability(probability, *, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """``f`` / ``m`` / ``unknown`` from P(female): placed when ``0.5 - |0.5 - p| <= threshold``; NaN is unknown."""
    if not (0.0 <= float(threshold) < 0.5):
        raise ValueError(f"threshold must be in [0, 0.5) (0.1 places names with p <= 0.1 or >= 0.9), got {threshold}")
    p = np.asarray(probability, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        placed = (0.5 - np.abs(0.5 - p)) <= threshold  # False for NaN
    return np.where(placed & (p >= 0.5), "f", np.where(placed & (p < 0.5), "m", "unknown")).astype("<U7")


def infer_name_gender(names, *, threshold: float = DEFAULT_THRESHOLD) -> NameGenderResult:
    """The lexicon's gender of each first name in ``names`` (any iterable of strings).

    Reads the lexicon (about 2-3 s and 270 MB while it runs; nothing is kept afterwards), so
    pass the distinct names of a store, not one name per image.
    """
    names = [str(n) for n in (names.tolist() if isinstance(names, np.ndarray) else names)]
    gender_from_probability([], threshold=threshold)  # validate the threshold before the slow read
    version, path = _lexicon_version()
    lexicon = json.loads(path.read_text(encoding="utf-8"))
    prob = np.full(len(names), np.nan)
    missing = set()
    for i, name in enumerate(names):
        parsed = _parse(name)
        entry = None
        for key in (parsed, parsed.split(" ")[0]):
            entry = lexicon.get(key)
            if entry is not None:
                break
        if entry is None or entry[2] is None or not math.isfinite(float(entry[2])):
            missing.add(name)
        else:
            prob[i] = float(entry[2])
    del lexicon
    values = gender_from_probability(prob, threshold=threshold)
    unknown = tuple(sorted({n for n, v in zip(names, values.tolist()) if v == "unknown"}))
    return NameGenderResult(
        values=values,
        probability=prob,
        source=f"{LEXICON} {version} ({_DATA_FILE}, MIT licence; Van Buskirk et al. 2023)",
        version=version,
        threshold=float(threshold),
        unknown=unknown,
        not_in_lexicon=tuple(sorted(missing)),
    )
