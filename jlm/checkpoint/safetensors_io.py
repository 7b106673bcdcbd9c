"""Reading `.safetensors` files one tensor at a time.

The `safetensors` library does the reading; we parse the header ourselves first so that a truncated
file or an unknown dtype fails with a message naming the file and the tensor, instead of the
library's generic "incomplete metadata".
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jlm.checkpoint.errors import CheckpointError

# safetensors dtype tag -> numpy dtype (bf16 has no numpy dtype; ml_dtypes provides one).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

_MAX_HEADER = 100 * 2**20  # the format's own limit on the JSON header


def read_header(path: str | os.PathLike) -> dict[str, dict]:
    """The tensor entries of a safetensors header, `{name: {"dtype", "shape", "data_offsets"}}`,
    in file order, after checking that every tensor's bytes lie inside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, no header)")
        n = int.from_bytes(prefix, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: truncated or not a safetensors file: the header claims "
                                  f"{n} bytes but the file has {size - 8} after the length prefix")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - n
    for name, info in header.items():
        dtype = info.get("dtype")
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which jlm cannot read "
                                  f"(known: {', '.join(DTYPES)})")
        begin, end = info["data_offsets"]
        want = math.prod(info["shape"]) * DTYPES[dtype].itemsize
        if end - begin != want:
            raise CheckpointError(f"{path}: tensor {name!r} ({dtype} {info['shape']}) should take {want} "
                                  f"bytes but its offsets span {end - begin}")
        if end > data_bytes:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data "
                                  f"section, but the file holds only {data_bytes} data bytes")
    return dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    return {name: tuple(info["shape"]) for name, info in read_header(path).items()}


def iter_file(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of one file, in file order, dtypes as stored."""
    names = list(read_header(path))
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in names:
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: {e}") from None


def write_file(tensors: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write a safetensors file that transformers and peft read (they refuse one without "format"),
    with the usual mode (0666 less the umask): safetensors writes through a private 0600 temporary."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)
