"""Names, versions and codes of the on-disk format (specified in ``docs/store-format.md``)."""

from __future__ import annotations

ENCODING_TYPE = "facestore"
ENCODING_VERSION = "1.0.0"
#: Major versions this code reads. A store written by a newer major version is refused.
READABLE_MAJOR = 1

INDEX = "index"
MODELS = "models"
SPLITS = "splits"
IDENTITIES = "identities"
TEXT = "text"
LOCKS = ".locks"

STATUS = "status"
STATUS_DETAIL = "status_detail"

#: Rows per chunk of the index arrays (strings and integers; read whole).
INDEX_CHUNK_ROWS = 65536
DEFAULT_CHUNK_ROWS = 8192

#: Per-row status codes of a model group. 0 means "not written yet" (the fill value), so rows
#: added by a resize or rows of a chunk that was in flight at a crash read as pending, never as valid.
PENDING = 0
OK = 1
STATUS_CODES: dict[int, str] = {
    0: "pending",
    1: "ok",
    2: "missing_file",
    3: "unreadable",
    4: "empty_file",
    5: "not_an_image",
    6: "truncated",
    7: "decompression_bomb",
    8: "decode_error",
    9: "no_face",
    10: "preprocess_error",
    11: "nonfinite",
    12: "not_imported",
    13: "model_error",
}
STATUS_BY_REASON: dict[str, int] = {v: k for k, v in STATUS_CODES.items()}


def status_code(reason: str) -> int:
    """The status code stored for a failure ``reason`` (unknown reasons map to ``preprocess_error``)."""
    return STATUS_BY_REASON.get(reason, STATUS_BY_REASON["preprocess_error"])


def model_path(model: str) -> str:
    return f"{MODELS}/{model}"


def check_model_name(model: str) -> str:
    """Model group names become directory names: refuse separators and hidden names."""
    if not model or "/" in model or "\\" in model or model.startswith(".") or model.strip() != model:
        raise ValueError(
            f"invalid model name {model!r}: use a short name without slashes, leading dots or spaces, e.g. 'dinov2-base'"
        )
    return model
