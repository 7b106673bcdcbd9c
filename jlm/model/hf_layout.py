"""Hugging Face tensor names and layouts <-> jlm's model state, as one table.

A jlm projection keeps its head structure with inputs leading (q: [embed, heads, head_dim]); HF
stores it flattened as [out, in]. The embedding is [vocab, embed] in both, norms are vectors.
Everything here is derived from `spec.py` and uses numpy only (no JAX), so `jlm convert` checks a
checkpoint with the same code that loads it.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from jlm.model.config import LlamaConfig
from jlm.model.spec import ArraySpec, block_specs, top_specs


class WeightError(ValueError):
    """A checkpoint whose tensors do not fit the model its config describes."""


TOP_NAMES = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "lm_head": "lm_head.weight"}
# a block's weights under model.layers.{i}.
BLOCK_NAMES = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
               "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
               "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
               "w_down": "mlp.down_proj"}
HF_PROJ = {BLOCK_NAMES[p].split(".")[1]: p for p in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}  # q_proj -> wq


def hf_name(path: tuple) -> str:
    """HF name of the weight at model state path ("embed",) or ("layers", i, leaf)."""
    if len(path) == 1:
        return TOP_NAMES[path[0]]
    return f"model.layers.{path[1]}.{BLOCK_NAMES[path[2]]}.weight"


def _is_projection(path: tuple, spec: ArraySpec) -> bool:
    return len(spec.shape) > 1 and path != ("embed",)


def hf_shape(path: tuple, spec: ArraySpec) -> tuple[int, ...]:
    if not _is_projection(path, spec):
        return spec.shape
    return (math.prod(spec.shape[spec.n_in:]), math.prod(spec.shape[: spec.n_in]))


@lru_cache(maxsize=8)
def table(cfg: LlamaConfig) -> dict[str, tuple[tuple, ArraySpec]]:
    """HF name -> (model state path, spec) of every weight a checkpoint of `cfg` holds."""
    entries = {hf_name((k,)): ((k,), s) for k, s in top_specs(cfg).items()}
    block = block_specs(cfg)
    for i in range(cfg.num_layers):
        entries.update({hf_name(("layers", i, k)): (("layers", i, k), s) for k, s in block.items()})
    return entries


def hf_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this config holds, with its shape."""
    return {name: hf_shape(path, spec) for name, (path, spec) in table(cfg).items()}


def to_model(name: str, w: np.ndarray, cfg: LlamaConfig) -> tuple[tuple, np.ndarray]:
    """HF tensor -> (model state path, array in the model's layout)."""
    path, spec = table(cfg)[name]
    return path, (w.T.reshape(spec.shape) if _is_projection(path, spec) else w)


@lru_cache(maxsize=8)
def _by_path(cfg: LlamaConfig) -> dict[tuple, ArraySpec]:
    return {path: spec for path, spec in table(cfg).values()}


def to_hf(path: tuple, w: np.ndarray, cfg: LlamaConfig) -> tuple[str, np.ndarray]:
    """Model state path and array -> (HF name, HF layout); the inverse of `to_model`."""
    spec = _by_path(cfg)[path]
    return hf_name(path), (w.reshape(math.prod(spec.shape[: spec.n_in]), -1).T if _is_projection(path, spec) else w)


def check_tensor(path, cfg: LlamaConfig, expected: dict[str, tuple[int, ...]], name: str, shape) -> bool:
    """Whether checkpoint tensor `name` is loaded (False: a saved tied head, which is skipped); a
    WeightError naming file and tensor when it does not fit the config."""
    if name not in expected:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            return False  # some exporters save the tied head too; the embedding is the weight
        raise WeightError(f"{path}: unexpected tensor {name!r} for a model with {cfg.num_layers} layers"
                          f"{' and tied embeddings' if cfg.tie_word_embeddings else ''}")
    if tuple(shape) != expected[name]:
        raise WeightError(f"{path}: tensor {name!r} has shape {tuple(shape)}, the config says {expected[name]}")
    return True


def check_complete(path, expected, seen) -> None:
    """A WeightError naming the first few tensors of `expected` that are not in `seen`."""
    missing = sorted(set(expected) - set(seen))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise WeightError(f"{path}: missing tensors {missing[:5]}{more}")
