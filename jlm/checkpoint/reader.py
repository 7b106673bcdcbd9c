"""One entry point for every checkpoint kind jlm reads.

- a Hugging Face directory: `model.safetensors`, sharded `model.safetensors.index.json`,
  `pytorch_model.bin` or sharded `pytorch_model.bin.index.json` (the released JudgeLM checkpoints);
- a single `.safetensors` or `.bin` file, with its `config.json` beside it;
- a `.gguf` file (llama architecture).

Tensors stream shard by shard, tensor by tensor, with Hugging Face names and layouts.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jlm.checkpoint import gguf as gguf_io
from jlm.checkpoint import safetensors_io, torch_bin
from jlm.checkpoint.errors import CheckpointError

# Buffers some checkpoints carry that are not weights (transformers recomputes them).
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)

# Single-file and index names, in the order transformers prefers them.
_LAYOUTS = [
    ("model.safetensors", "model.safetensors.index.json", "safetensors"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", "bin"),
]


@dataclass(frozen=True)
class _Source:
    """What a path resolves to: the files holding tensors, their format, and the config."""
    kind: str                # "safetensors" | "bin" | "gguf"
    files: tuple[Path, ...]  # shards, in the order to read them
    config: Path | None      # config.json (None for GGUF)


def _shards_from_index(index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: unreadable shard index: {type(e).__name__}: {e}") from None
    shards: dict[str, str] = {}  # shard file -> first tensor it holds (for the error message)
    for tensor, shard in weight_map.items():
        shards.setdefault(shard, tensor)
    for shard, tensor in shards.items():
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: missing shard {shard} (it holds {tensor!r} and "
                                  f"{sum(1 for s in weight_map.values() if s == shard) - 1} more tensors)")
    return tuple(index.parent / shard for shard in sorted(shards))


def _resolve(path: str | os.PathLike) -> _Source:
    p = Path(path)
    if p.is_dir():
        for single, index, kind in _LAYOUTS:
            if (p / index).is_file():
                return _Source(kind, _shards_from_index(p / index), p / "config.json")
            if (p / single).is_file():
                return _Source(kind, (p / single,), p / "config.json")
        raise CheckpointError(f"{p}: no checkpoint in this directory (looked for "
                              f"{', '.join(n for layout in _LAYOUTS for n in layout[:2])})")
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.suffix == ".gguf":
        return _Source("gguf", (p,), None)
    if p.name.endswith(".index.json"):
        kind = "safetensors" if "safetensors" in p.name else "bin"
        return _Source(kind, _shards_from_index(p), p.parent / "config.json")
    if p.suffix == ".safetensors":
        return _Source("safetensors", (p,), p.parent / "config.json")
    if p.suffix in (".bin", ".pt", ".pth"):
        return _Source("bin", (p,), p.parent / "config.json")
    raise CheckpointError(f"{p}: unknown checkpoint kind (expected an HF directory, .safetensors, "
                          f".bin, .index.json or .gguf)")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The raw `config.json` dict of an HF checkpoint, or one synthesized from a GGUF's metadata."""
    src = _resolve(path)
    if src.kind == "gguf":
        return gguf_io.read_config(src.files[0])
    assert src.config is not None
    if not src.config.is_file():
        raise CheckpointError(f"{path}: no config.json at {src.config}")
    try:
        return json.loads(src.config.read_text())
    except ValueError as e:
        raise CheckpointError(f"{src.config}: invalid JSON: {e}") from None


_FILE_READERS: dict[str, Callable[[Path], Iterator[tuple[str, np.ndarray]]]] = {
    "safetensors": safetensors_io.iter_file,
    "bin": torch_bin.iter_file,
}


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) for every weight, one at a time, shard after shard.

    Layouts are Hugging Face's ([out, in] for linear weights). dtypes are as stored (float32,
    float16, ml_dtypes.bfloat16) except GGUF, which is dequantized to float32. Arrays may be
    read-only views of a memory-mapped file: copy before writing to them.
    """
    src = _resolve(path)
    if src.kind == "gguf":
        yield from gguf_io.iter_tensors(src.files[0])
        return
    for shard in src.files:
        for name, array in _FILE_READERS[src.kind](shard):
            if not name.endswith(_SKIP_SUFFIXES):
                yield name, array


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{HF name: shape} of every weight, from headers only (no tensor data is read)."""
    src = _resolve(path)
    if src.kind == "gguf":
        return gguf_io.tensor_shapes(src.files[0])
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in src.files:
        per_file = (safetensors_io.tensor_shapes if src.kind == "safetensors" else torch_bin.tensor_shapes)
        shapes.update({k: v for k, v in per_file(shard).items() if not k.endswith(_SKIP_SUFFIXES)})
    return shapes
