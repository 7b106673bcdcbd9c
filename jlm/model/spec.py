"""Every array of the model, described once: shape, logical axes, initialiser, storage.

`llama.py` initialises its weights and `KVCache` from these tables, `sharding.RULES` maps their
logical axes onto a mesh (weights through their `axes` metadata, the cache in the engine), and
`hf_layout.py` derives the Hugging Face names and shapes from them. JAX-free, so that `jlm convert`
checks a checkpoint's shapes without importing the model.
"""
from __future__ import annotations

import dataclasses
import math

from jlm.model.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]  # logical axis names (sharding.RULES)
    init: str = "normal"  # "normal": truncated normal in [-2, 2] std; "ones"; "zeros"
    n_in: int = 1  # leading input dims of a projection: its fan-in, and HF's [out, in] flattening
    fp32: bool = False  # stored in fp32 whatever the model's param_dtype (LoRA factors)
    std: float | None = None  # "normal" only; None: 1 / sqrt(fan-in)

    @property
    def init_std(self) -> float:
        return self.std if self.std is not None else math.prod(self.shape[: self.n_in]) ** -0.5


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Low-rank adapters on the named projections (wq wk wv wo w_gate w_up w_down)."""
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


# the projections of a block, in init order, with their einsums (x @ w)
PROJ_EINSUM = {
    "wq": "btd,dhk->bthk", "wk": "btd,dhk->bthk", "wv": "btd,dhk->bthk", "wo": "bthk,hkd->btd",
    "w_gate": "btd,df->btf", "w_up": "btd,df->btf", "w_down": "btf,fd->btd",
}


def top_specs(cfg: LlamaConfig) -> dict[str, ArraySpec]:
    """Embedding, final norm and (untied) head."""
    d, v = cfg.hidden_size, cfg.vocab_size
    specs = {"embed": ArraySpec((v, d), ("vocab", "embed"), std=1.0),
             "norm": ArraySpec((d,), ("norm",), "ones")}
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ArraySpec((d, v), ("embed", "vocab"))
    return specs


def block_specs(cfg: LlamaConfig) -> dict[str, ArraySpec]:
    """One decoder block's weights: norms, then the projections in PROJ_EINSUM's order."""
    d, h, kv, hd, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    return {
        "attn_norm": ArraySpec((d,), ("norm",), "ones"),
        "mlp_norm": ArraySpec((d,), ("norm",), "ones"),
        "wq": ArraySpec((d, h, hd), ("embed", "q_heads", "head_dim")),
        "wk": ArraySpec((d, kv, hd), ("embed", "kv_heads", "head_dim")),
        "wv": ArraySpec((d, kv, hd), ("embed", "kv_heads", "head_dim")),
        "wo": ArraySpec((h, hd, d), ("q_heads", "head_dim", "embed"), n_in=2),
        "w_gate": ArraySpec((d, f), ("embed", "mlp")),
        "w_up": ArraySpec((d, f), ("embed", "mlp")),
        "w_down": ArraySpec((f, d), ("mlp", "embed")),
    }


def lora_specs(cfg: LlamaConfig, lora: LoRA) -> dict[str, ArraySpec]:
    """A block's LoRA factors: `{proj}_lora_a` [in..., r] (random) and `{proj}_lora_b` [r, out...]
    (zero, so an adapted model starts equal to its base), in fp32."""
    block = block_specs(cfg)
    specs = {}
    for name in lora.targets:
        if name not in PROJ_EINSUM:
            raise ValueError(f"LoRA target {name!r} is not a projection (one of {', '.join(PROJ_EINSUM)})")
        w = block[name]
        specs[f"{name}_lora_a"] = ArraySpec((*w.shape[: w.n_in], lora.rank), (*w.axes[: w.n_in], "lora"),
                                            n_in=w.n_in, fp32=True)
        specs[f"{name}_lora_b"] = ArraySpec((lora.rank, *w.shape[w.n_in:]), ("lora", *w.axes[w.n_in:]),
                                            "zeros", fp32=True)
    return specs


def cache_specs(cfg: LlamaConfig, batch: int, size: int) -> dict[str, ArraySpec]:
    """The KV cache: per layer keys / values (and their int8 scales), slot validity, next positions."""
    kv = (batch, size, cfg.num_kv_heads, cfg.head_dim)
    kv_axes = ("act_batch", None, "act_kv_heads", None)
    return {"kv": ArraySpec(kv, kv_axes, "zeros"),
            "kv_scale": ArraySpec((*kv[:-1], 1), kv_axes, "zeros", fp32=True),
            "valid": ArraySpec((batch, size), ("act_batch", None), "zeros"),
            "index": ArraySpec((), (), "zeros"),
            "next_pos": ArraySpec((batch,), ("act_batch",), "zeros")}


# Activations a block tags with `jax.ad_checkpoint.checkpoint_name` (and its named scopes), in
# order: `remat="save:query,key,value"` keeps these and recomputes the rest in the backward pass.
REMAT_NAMES = ("attn_in", "query", "key", "value", "attn_out", "mlp_in", "mlp_hidden", "block_out")


def parse_remat(remat: str) -> tuple[str, ...] | str:
    """`remat` as a policy: a tuple of REMAT_NAMES to save ("save:a,b"), else a jax.checkpoint_policies
    name (checked where JAX is imported)."""
    if not remat.startswith("save:"):
        return remat
    names = tuple(n.strip() for n in remat[len("save:"):].split(",") if n.strip())
    unknown = [n for n in names if n not in REMAT_NAMES]
    if unknown or not names:
        raise ValueError(f"remat={remat!r}: save what? names are {', '.join(REMAT_NAMES)}")
    return names
