"""Chunk-level helpers shared by the store's reader, writer and verifier.

Every array of a format-2 store ends its codec pipeline with zarr's ``crc32c`` codec: a chunk
file is its encoded bytes followed by the little-endian crc32c of those bytes. Fixed-width
arrays (vectors, status, labels, sizes) are stored uncompressed (``bytes`` + ``crc32c``), so a
chunk file has an exact expected size; strings are ``vlen-utf8`` + ``zstd`` + ``crc32c``. Every
chunk that was written has a file (``write_empty_chunks``), so a missing chunk file is damage,
never "all fill values".

This module sits below ``store.py``, ``writer.py`` and ``verify.py`` (none of them imports
another for these helpers).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np

from facestore.errors import StoreCorruptError, StoreError

#: Appended by zarr's crc32c codec to every chunk file.
CRC_BYTES = 4
_VERIFY_HINT = "run `facestore verify STORE` to list every damaged member"


def as_str(a) -> np.ndarray:
    """A fixed-width unicode array from anything zarr returns (numpy StringDType included)."""
    a = np.asarray(a)
    if a.dtype.kind == "U":
        return a
    return a.astype(object).astype(str) if a.size else np.zeros(a.shape, dtype="<U1")


def str_array(values) -> np.ndarray:
    """A unicode array of ``values`` (``<U1`` when empty)."""
    return np.asarray(list(values), dtype=object).astype(str) if len(values) else np.zeros(0, dtype="<U1")


# --------------------------------------------------------------------------- creating and writing


def create_array(group, name: str, *, shape, dtype, chunks, fill_value=None, overwrite: bool = False):
    """A format-2 array: checksummed, uncompressed when fixed-width, every written chunk a file."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    is_str = dtype is str or (isinstance(dtype, str) and dtype == "string")
    compressors = [ZstdCodec(), Crc32cCodec()] if is_str else [Crc32cCodec()]
    kw = {} if fill_value is None else {"fill_value": fill_value}
    arr = group.create_array(name, shape=shape, dtype=str if is_str else dtype, chunks=chunks,
                             compressors=compressors, overwrite=overwrite,
                             config={"write_empty_chunks": True}, **kw)
    return arr


def writable(arr):
    """``arr`` reopened so that chunks equal to the fill value are still written as files."""
    return arr.with_config({"write_empty_chunks": True})


def check_no_symlink(store_root: Path, member: Path) -> None:
    """Refuse to write through a symbolic link inside the store (a crafted store could point a
    chunk directory anywhere). ``member`` is a path inside ``store_root``; every existing component
    below the root is checked."""
    rel = Path(member).relative_to(store_root)
    p = Path(store_root)
    for part in rel.parts:
        p = p / part
        if os.path.islink(p):
            raise StoreError(
                f"refusing to write through {p}: it is a symbolic link inside the store (to {os.readlink(p)!r}); "
                "a store's members must be plain directories and files. Remove the link (and copy the real "
                "data in place if it belongs to the store)"
            )


# --------------------------------------------------------------------------- describing arrays


def codec_names(arr) -> list[str]:
    return [c.to_dict()["name"] for c in arr.metadata.codecs]


def is_checked(arr) -> bool:
    """Whether chunks carry a crc32c trailer (format 2)."""
    return codec_names(arr)[-1:] == ["crc32c"]


def fixed_chunk_bytes(arr) -> int | None:
    """The exact size of every chunk file when the pipeline is ``bytes`` (+ ``crc32c``), else None."""
    names = codec_names(arr)
    if names not in (["bytes"], ["bytes", "crc32c"]):
        return None
    size = math.prod(arr.chunks) * np.dtype(arr.dtype).itemsize
    return size + (CRC_BYTES if names[-1] == "crc32c" else 0)


def data_type(arr) -> str:
    """The format's name of an array's dtype: ``string``, ``int32``, ``float16``, ..."""
    dt = arr.metadata.data_type
    name = str(dt.to_json(zarr_format=3)) if hasattr(dt, "to_json") else str(dt)
    return "string" if name in ("string", "str") or np.dtype(arr.dtype).kind in "OTU" else name


def chunk_file(base: Path, c: int, ndim: int) -> Path:
    """The file of row-chunk ``c`` of an array whose directory is ``base`` (one chunk across columns)."""
    return Path(base, "c", str(c), *(["0"] * (ndim - 1)))


def n_chunks(rows: int, chunk_rows: int) -> int:
    return math.ceil(rows / chunk_rows) if rows > 0 else 0


def missing_chunks(base: Path, arr, rows: int) -> list[int]:
    """Row-chunks covering ``[0, rows)`` whose file does not exist."""
    cr = arr.chunks[0]
    want = n_chunks(rows, cr)
    if arr.ndim == 1:
        try:
            have = {int(x) for x in os.listdir(Path(base, "c")) if x.isdigit()}
        except FileNotFoundError:
            have = set()
        return [c for c in range(want) if c not in have]
    return [c for c in range(want) if not chunk_file(base, c, arr.ndim).exists()]


def damaged(what: str, c: int, chunk_rows: int, reason: str, *, rows: int | None = None) -> StoreCorruptError:
    """The error for a damaged chunk, naming the member, the chunk and its rows."""
    last = (c + 1) * chunk_rows - 1 if rows is None else min((c + 1) * chunk_rows, rows) - 1
    return StoreCorruptError(f"{what}: chunk {c} (rows {c * chunk_rows}-{last}) is damaged: {reason}; {_VERIFY_HINT}")


def file_problem(f: Path, arr) -> str | None:
    """Why the chunk file ``f`` of ``arr`` is damaged (size or checksum), or None when it is sound."""
    try:
        raw = np.fromfile(f, dtype=np.uint8)
    except FileNotFoundError:
        return "its chunk file is missing"
    expected = fixed_chunk_bytes(arr)
    if expected is not None and raw.size != expected:
        return f"the chunk file is {raw.size} bytes, its array metadata says {expected}"
    if is_checked(arr):
        if raw.size < CRC_BYTES:
            return f"the chunk file is {raw.size} bytes, too short to hold its checksum"
        if google_crc32c.value(raw[:-CRC_BYTES]) != int.from_bytes(raw[-CRC_BYTES:].tobytes(), "little"):
            return "crc32c checksum mismatch (the bytes changed after they were written)"
    return None


def _reason(e: Exception) -> str:
    text = str(e)
    if "checksum" in text.lower():
        return "crc32c checksum mismatch (the bytes changed after they were written)"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read(arr, stop: int, *, what: str, base: Path | None = None, require_chunks: bool = False) -> np.ndarray:
    """``arr[:stop]`` through zarr, with damage reported as :class:`StoreCorruptError`.

    ``require_chunks``: every chunk covering the rows must have a file (arrays written whole,
    such as the index); otherwise zarr would silently return the fill value for a deleted chunk.
    """
    if require_chunks and base is not None:
        gone = missing_chunks(base, arr, stop)
        if gone:
            raise damaged(what, gone[0], arr.chunks[0], f"its chunk file is missing ({len(gone)} chunk(s) missing)",
                          rows=stop)
    try:
        return np.asarray(arr[:stop])
    except (PermissionError, MemoryError):
        raise
    except Exception as e:  # decode errors of any codec: find the chunk to name it
        raise _locate(arr, stop, what=what, error=e) from None


def read_range(arr, start: int, stop: int, *, what: str) -> np.ndarray:
    """``arr[start:stop]`` (rows) through zarr, with damage reported as :class:`StoreCorruptError`."""
    try:
        return np.asarray(arr[start:stop])
    except (PermissionError, MemoryError):
        raise
    except Exception as e:
        cr = arr.chunks[0]
        return_error = None
        for c in range(start // cr, n_chunks(stop, cr)):
            try:
                arr[max(start, c * cr):min((c + 1) * cr, stop)]
            except (PermissionError, MemoryError):
                raise
            except Exception as e2:
                return_error = damaged(what, c, cr, _reason(e2), rows=arr.shape[0])
                break
        raise (return_error or StoreCorruptError(f"{what} cannot be read ({_reason(e)}); {_VERIFY_HINT}")) from None


def _locate(arr, stop: int, *, what: str, error: Exception) -> StoreCorruptError:
    cr = arr.chunks[0]
    for c in range(n_chunks(stop, cr)):
        try:
            arr[c * cr:min((c + 1) * cr, stop)]
        except (PermissionError, MemoryError):
            raise
        except Exception as e:
            return damaged(what, c, cr, _reason(e), rows=stop)
    return StoreCorruptError(f"{what} cannot be read ({_reason(error)}); {_VERIFY_HINT}")


# --------------------------------------------------------------------------- the fast vector reader


def read_rows(arr, rows: np.ndarray, *, path: Path, out_dtype=None, what: str | None = None) -> np.ndarray:
    """Gather rows of a 2-D row-chunked array, as ``out_dtype`` (default: the stored dtype).

    Uncompressed little-endian arrays (the default) are read straight from their chunk files by
    several threads: a chunk wholly inside a contiguous request is read into the output in place
    (no intermediate copy), and a dtype conversion happens per chunk in those threads. Every
    chunk read is checked: its file size against the array metadata and, in format 2, its
    crc32c trailer. A damaged chunk, or a missing chunk file whose rows are wanted, raises
    :class:`StoreCorruptError` naming ``what`` (model and view), the chunk and its rows.
    """
    what = what or f"array {path}"
    rows = np.asarray(rows, dtype=np.int64)
    n_rows, dim = arr.shape
    chunk_rows = arr.chunks[0]
    dtype = np.dtype(arr.dtype)
    out_dtype = dtype if out_dtype is None else np.dtype(out_dtype)
    out = np.empty((len(rows), dim), dtype=out_dtype)
    if not len(rows):
        return out
    checked = is_checked(arr)
    file_bytes = fixed_chunk_bytes(arr)
    fast = file_bytes is not None and arr.chunks[1] == dim and dtype.byteorder in ("<", "=", "|")
    data_bytes = chunk_rows * dim * dtype.itemsize
    chunk_ids = rows // chunk_rows
    contiguous = bool(np.all(np.diff(rows) == 1))
    # Positions of ``rows`` grouped by chunk, found once (not one scan of ``rows`` per chunk).
    order = np.argsort(chunk_ids, kind="stable")
    uniq, starts = np.unique(chunk_ids[order], return_index=True)
    bounds = dict(zip(uniq.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(rows)])))

    def bad(c: int, reason: str) -> StoreCorruptError:
        return damaged(what, c, chunk_rows, reason, rows=n_rows)

    def check_crc(c: int, data: np.ndarray, trailer: bytes) -> None:
        if checked and google_crc32c.value(data) != int.from_bytes(trailer, "little"):
            raise bad(c, "crc32c checksum mismatch (the bytes changed after they were written)")

    def whole(c: int, f: Path) -> np.ndarray:
        if not fast:
            try:
                return np.asarray(arr[c * chunk_rows:min((c + 1) * chunk_rows, n_rows)])
            except (PermissionError, MemoryError):
                raise
            except Exception as e:
                raise bad(c, _reason(e)) from None
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size != file_bytes:
            raise bad(c, f"the chunk file is {raw.size} bytes, its array metadata says {file_bytes}")
        check_crc(c, raw[:data_bytes], raw[data_bytes:].tobytes())
        return raw[:data_bytes].view(dtype).reshape(chunk_rows, dim)

    def one(c: int) -> None:
        f = chunk_file(path, c, 2)
        if not f.exists():
            raise bad(c, "its chunk file is missing while its rows are marked written (the vectors are lost)")
        first = c * chunk_rows
        if contiguous:
            lo, hi = max(int(rows[0]), first), min(int(rows[-1]) + 1, first + chunk_rows)
            dst = out[lo - rows[0]:hi - rows[0]]
            if fast and out_dtype == dtype and (lo, hi) == (first, first + chunk_rows):
                # The whole chunk is wanted: read it into the output, then check its size and crc there.
                with open(f, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size != file_bytes:
                        raise bad(c, f"the chunk file is {size} bytes, its array metadata says {file_bytes}")
                    if fh.readinto(memoryview(dst).cast("B")) != dst.nbytes:
                        raise bad(c, "the chunk file is shorter than its array metadata says")
                    trailer = fh.read(CRC_BYTES)
                check_crc(c, dst.reshape(-1).view(np.uint8), trailer)
                return
            dst[...] = whole(c, f)[lo - first:hi - first]
            return
        block = whole(c, f)
        a, b = bounds[c]
        sel = order[a:b]
        out[sel] = block[rows[sel] - first]

    if len(uniq) == 1:
        one(int(uniq[0]))
    else:
        # Reads from the page cache are memory-bound: more threads than cores only add start-up cost.
        with ThreadPoolExecutor(max_workers=min(8, len(uniq), max(2, os.cpu_count() or 2))) as pool:
            list(pool.map(one, uniq.tolist()))
    return out
