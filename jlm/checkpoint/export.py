"""Writing Hugging Face checkpoints: safetensors shards and config.json (tokenizer files: jlm.tokenizer)."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jlm.checkpoint import safetensors_io
from jlm.checkpoint.errors import CheckpointError

# the weight dtypes jlm reads and writes, by the name configs and flags use
FLOAT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
_TORCH_DTYPE_NAMES = {d: n for n, d in FLOAT_DTYPES.items()} | {np.dtype(np.float64): "float64"}
# Files of an earlier export in the same directory that a new one would contradict.
_STALE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


@dataclass
class ExportSummary:
    """What `write_hf_checkpoint` wrote."""
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    tensors: int = 0
    bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype name -> tensor count
    dtype_bytes: dict[str, int] = field(default_factory=dict)  # dtype name -> bytes


def hf_config(config: dict[str, Any], torch_dtype: str | None = None) -> dict[str, Any]:
    """`config` in the transformers 4.4x dialect (top-level `rope_theta` / `rope_scaling`, `torch_dtype`),
    which 4.3x-4.5x and 5.x all read. Accepts any of the three dialects (see docs/checkpoints.md)."""
    cfg = dict(config)
    params = cfg.pop("rope_parameters", None) or {}
    if "rope_theta" not in cfg:
        cfg["rope_theta"] = float(params.get("rope_theta", 10000.0))  # 4.28 configs: absent means 10000
    kind = params.get("rope_type", params.get("type", "default"))
    if cfg.get("rope_scaling") is None and kind != "default":
        cfg["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, dict):  # 4.3x reads "type", 4.45+ "rope_type": write both
        kind = scaling.get("rope_type", scaling.get("type"))
        cfg["rope_scaling"] = {**scaling, "type": kind, "rope_type": kind}
    else:
        cfg["rope_scaling"] = None
    dtype = cfg.pop("dtype", None)
    cfg["torch_dtype"] = torch_dtype or cfg.get("torch_dtype") or dtype or "float32"
    return cfg


def _flush(out: Path, index: int, shard: dict[str, np.ndarray]) -> Path:
    return safetensors_io.write_file(shard, out / f"model-{index:05d}.safetensors.partial")


def write_hf_checkpoint(out_dir: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                        config: dict[str, Any], max_shard_bytes: int = 2**31) -> ExportSummary:
    """Write an HF checkpoint directory that transformers (4.3x+ and 5.x) and jlm load.

    Tensors are consumed one at a time and buffered up to `max_shard_bytes` before each shard is
    written, so at most one shard is in memory. One shard is `model.safetensors`; more are
    `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`. `config.json` is
    written in the 4.4x dialect with `torch_dtype` set to the floating dtype of most of the bytes.
    Files of an earlier export in `out_dir` are replaced. The tokenizer is the caller's
    (`jlm.tokenizer.export_tokenizer`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(out)
    partials: list[Path] = []
    weight_map: dict[str, int] = {}  # tensor -> shard number
    shard: dict[str, np.ndarray] = {}
    shard_bytes = 0
    try:
        for name, array in tensors:
            array = np.ascontiguousarray(array)
            if name in weight_map or name in shard:
                raise CheckpointError(f"{out}: tensor {name!r} given twice")
            if shard and shard_bytes + array.nbytes > max_shard_bytes:
                partials.append(_flush(out, len(partials) + 1, shard))
                shard, shard_bytes = {}, 0
            shard[name] = array
            shard_bytes += array.nbytes
            weight_map[name] = len(partials) + 1
            summary.tensors += 1
            summary.bytes += array.nbytes
            dname = _TORCH_DTYPE_NAMES.get(array.dtype, str(array.dtype))
            summary.dtypes[dname] = summary.dtypes.get(dname, 0) + 1
            summary.dtype_bytes[dname] = summary.dtype_bytes.get(dname, 0) + array.nbytes
        if shard or not partials:
            partials.append(_flush(out, len(partials) + 1, shard))
        shard = {}
    except BaseException:
        for p in partials:
            p.unlink(missing_ok=True)
        raise

    n = len(partials)
    names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for stale in out.iterdir():
        if _STALE.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
    for partial, name in zip(partials, names, strict=True):
        partial.replace(out / name)
        summary.files.append(out / name)
    if n > 1:
        index = {"metadata": {"total_size": summary.bytes},
                 "weight_map": {t: names[i - 1] for t, i in sorted(weight_map.items())}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        summary.files.append(out / "model.safetensors.index.json")

    # torch_dtype: the floating dtype holding most of the bytes (mixed checkpoints keep norms in fp32).
    floating = {d: n for d, n in summary.dtype_bytes.items() if d in _TORCH_DTYPE_NAMES.values()}
    torch_dtype = max(floating, key=floating.get) if floating else None
    (out / "config.json").write_text(json.dumps(hf_config(config, torch_dtype), indent=2) + "\n")
    summary.files.append(out / "config.json")
    return summary
