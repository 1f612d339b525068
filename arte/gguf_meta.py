"""A GGUF file's metadata (its key-value header), read without the weights and without the ``gguf`` package.

Contract: ``read_gguf_metadata(path, keys)`` returns ``{key: value}`` for the metadata keys asked for (all
scalars and strings when ``keys`` is None; arrays only when asked for by name, as lists), reading the
header sequentially and skipping what is not wanted. ``gguf.GGUFReader`` parses every field into numpy
views, ~100 k of them for a 49 k-token vocabulary: seconds per file, where this takes milliseconds.
Raises :class:`ModelError` on a file that is not GGUF (v2/v3) or ends inside its header.

Layout (llama.cpp ``ggml/src/gguf.cpp``, little-endian): magic ``GGUF``, uint32 version, uint64 tensor
count, uint64 KV count, then per KV: a string key (uint64 length + UTF-8), a uint32 type, the value.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO, Collection

from arte.errors import ModelError

__all__ = ["read_gguf_metadata"]

# GGUF value types: id -> struct format (None: string 8, array 9)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise EOFError
    return b


def _unpack(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]


def _string(f: BinaryIO, keep: bool = True) -> str | None:
    n = _unpack(f, "<Q")
    if not keep:
        f.seek(n, 1)
        return None
    return _read(f, n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int, keep: bool) -> Any:
    if vtype in _SCALARS:
        return _unpack(f, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(f, keep)
    if vtype == _ARRAY:
        itype, count = _unpack(f, "<I"), _unpack(f, "<Q")
        if itype in _SCALARS and not keep:
            f.seek(count * struct.calcsize(_SCALARS[itype]), 1)
            return None
        items = [_value(f, itype, keep) for _ in range(count)]
        return items if keep else None
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_metadata(path: str | Path, keys: Collection[str] | None = None) -> dict[str, Any]:
    """The metadata ``keys`` of the GGUF at ``path`` that it has (None: every scalar and string key)."""
    want = set(keys) if keys is not None else None
    out: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
            version = _unpack(f, "<I")
            if version not in (2, 3):
                raise ModelError(f"{path} is GGUF version {version}; versions 2 and 3 are supported")
            _unpack(f, "<Q")
            n_kv = _unpack(f, "<Q")
            for _ in range(n_kv):
                key = _string(f)
                vtype = _unpack(f, "<I")
                keep = key in want if want is not None else vtype != _ARRAY
                value = _value(f, vtype, keep)
                if keep:
                    out[key] = value
                    if want is not None and want <= out.keys():
                        break
    except (EOFError, ValueError, struct.error) as e:
        raise ModelError(f"{path} is truncated or corrupt in its GGUF header ({e or 'unexpected end'})") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    return out
