"""Hugging Face PEFT LoRA adapters: a directory with `adapter_config.json` and
`adapter_model.safetensors`, as peft's `save_pretrained` writes and `PeftModel.from_pretrained` reads.

Tensors keep PEFT's names and layouts: for each adapted linear layer `W` [out, in] of the base,
`base_model.model.<W's name without .weight>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r];
PEFT computes `W x + (lora_alpha / r) * B (A x)`. Fitting them to a model is jlm.model.load's job.

    is_adapter_dir(path) -> bool
    read_adapter_config(dir) -> AdapterConfig
    weights_file(dir) -> Path                             adapter_model.safetensors (or .bin)
    iter_adapter_tensors(dir) -> Iterator[(name, array)]  PEFT names and layouts, dtypes as stored
    write_adapter(out_dir, tensors, config) -> [paths]
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jlm.checkpoint import safetensors_io, torch_bin
from jlm.checkpoint.errors import CheckpointError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_BIN_FILE = "adapter_model.bin"  # peft before safetensors became its default
PREFIX = "base_model.model."
# the LLaMA projections jlm can adapt: HF module name -> its parent module
TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# PEFT settings that would change the computation without changing the tensors jlm checks (off:
# false, null, {}); other extras (biases, DoRA magnitudes, modules_to_save) show up as tensors
_UNSUPPORTED = ("use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "layers_to_transform",
                "layer_replication")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    rank: int
    alpha: float
    targets: tuple[str, ...]  # HF module names, keys of TARGETS
    base: str | None  # base_model_name_or_path as written: an alias, or a path (relative: to the adapter dir)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def tensor_names(weight: str) -> tuple[str, str]:
    """The (lora_A, lora_B) tensor names of the adapter on HF weight `weight`."""
    stem = PREFIX + weight.removesuffix(".weight")
    return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_adapter_config(path: str | os.PathLike) -> AdapterConfig:
    f = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable adapter config: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{f}: peft_type {raw.get('peft_type')!r}: jlm reads LoRA adapters only (\"LORA\")")
    on = [k for k in _UNSUPPORTED if raw.get(k)]
    if on:
        raise CheckpointError(f"{f}: {', '.join(f'{k}={raw[k]!r}' for k in on)}: not supported by jlm "
                              "(plain LoRA only)")
    rank, alpha, targets = raw.get("r"), raw.get("lora_alpha"), raw.get("target_modules")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise CheckpointError(f"{f}: r={rank!r} must be a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise CheckpointError(f"{f}: lora_alpha={alpha!r} must be a number")
    if not isinstance(targets, list) or not targets:
        # peft also takes a regex string; jlm needs the module names themselves
        raise CheckpointError(f"{f}: target_modules={targets!r}: expected a list of module names "
                              f"(of {', '.join(TARGETS)})")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise CheckpointError(f"{f}: unknown target module(s) {unknown}: jlm adapts {', '.join(TARGETS)}")
    base = raw.get("base_model_name_or_path")
    return AdapterConfig(rank, float(alpha), tuple(t for t in TARGETS if t in targets), base or None)


def weights_file(path: str | os.PathLike) -> Path:
    """The adapter's tensor file: adapter_model.safetensors, or the .bin older peft wrote."""
    d = Path(path)
    for name in (WEIGHTS_FILE, _BIN_FILE):
        if (d / name).is_file():
            return d / name
    raise CheckpointError(f"{d}: adapter directory without {WEIGHTS_FILE} (or {_BIN_FILE})")


def iter_adapter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of the adapter in `weights_file(path)`, dtypes as stored."""
    f = weights_file(path)
    yield from (safetensors_io.iter_file(f) if f.suffix == ".safetensors" else torch_bin.iter_file(f))


def write_adapter(out_dir: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                  config: AdapterConfig) -> list[Path]:
    """Write `adapter_model.safetensors` and `adapter_config.json` (replacing earlier ones)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors_io.write_file({n: np.ascontiguousarray(a) for n, a in tensors}, out / WEIGHTS_FILE)
    alpha: Any = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.rank, "lora_alpha": alpha,
            "target_modules": list(config.targets), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "modules_to_save": None, "inference_mode": True,
            "base_model_name_or_path": config.base}
    (out / CONFIG_FILE).write_text(json.dumps(conf, indent=2) + "\n")
    return [out / WEIGHTS_FILE, out / CONFIG_FILE]
