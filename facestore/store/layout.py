"""Names, versions and codes of the on-disk format (specified in ``docs/store-format.md``)."""

from __future__ import annotations

ENCODING_TYPE = "facestore"
#: 2.0.0: every chunk carries a crc32c checksum, every written chunk has a file, index column
#: ``name_verbatim``, index and values fingerprints, completion markers on model groups and
#: on saved splits/identities (see docs/store-format.md, "Changes").
ENCODING_VERSION = "2.0.0"
#: The major version this code writes and reads. A store written by a newer major is refused.
READABLE_MAJOR = 2
#: Older majors this code still opens, read-only and with a warning (``facestore upgrade`` migrates).
LEGACY_MAJORS = (1,)

INDEX = "index"
MODELS = "models"
SPLITS = "splits"
IDENTITIES = "identities"
TEXT = "text"
LOCKS = ".locks"

COVARIATES = "covariates"
STATUS = "status"
STATUS_DETAIL = "status_detail"

#: The index arrays and the dtype the format specifies for each ("string": variable-length UTF-8).
INDEX_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",
    "label": "int32",
    "identity": "string",
    "name_verbatim": "string",
    "size": "int64",
    "mtime_ns": "int64",
    "content_hash": "string",
}
#: Index columns absent from format 1 stores.
INDEX_COLUMNS_SINCE_2 = ("name_verbatim",)

#: Rows per chunk of the index arrays (strings and integers; read whole).
INDEX_CHUNK_ROWS = 65536
#: Smallest index chunk: a small first sync still leaves room for appends without tiny chunks.
INDEX_MIN_CHUNK_ROWS = 1024
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


def index_chunk_rows(n: int) -> int:
    """Rows per chunk of an index-like array created with ``n`` rows."""
    return min(INDEX_CHUNK_ROWS, max(n, INDEX_MIN_CHUNK_ROWS))


def model_path(model: str) -> str:
    return f"{MODELS}/{model}"


def check_model_name(model: str) -> str:
    """Model group names become directory names: refuse separators and hidden names."""
    if not model or "/" in model or "\\" in model or model.startswith(".") or model.strip() != model:
        raise ValueError(
            f"invalid model name {model!r}: use a short name without slashes, leading dots or spaces, e.g. 'dinov2-base'"
        )
    return model
