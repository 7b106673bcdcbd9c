"""How a model runs, beside what it is: `LlamaConfig` comes from the checkpoint, `ModelOptions` from
the caller (a train config, `Judge.load`), and travels as one object through `load_model` to `Llama`.

Sharding is not an option: weights and activations carry logical axis names and `sharding.RULES`
maps them onto whatever mesh the caller places the model on.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jlm.model.spec import LoRA, parse_remat

ATTN_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    dtype: Any = np.float32  # compute dtype
    param_dtype: Any = None  # storage dtype of the weights (None: dtype); LoRA factors are fp32 always
    attn_impl: str = "xla"  # "cudnn": cuDNN flash attention for multi-token calls (GPU)
    remat: str | None = None  # a jax.checkpoint_policies name or save:NAMES (spec.REMAT_NAMES); None keeps all
    scan_layers: bool = False  # cache-free calls run the blocks as one lax.scan (compile time flat in depth)
    lora: LoRA | None = None  # adapters on the projections (B = 0: the model starts equal to its checkpoint)

    def __post_init__(self):
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={self.attn_impl!r}: use one of {', '.join(ATTN_IMPLS)}")
        if self.remat is not None:
            parse_remat(self.remat)  # the name syntax; the policy itself is checked where JAX is

    @property
    def storage_dtype(self):
        return self.dtype if self.param_dtype is None else self.param_dtype

    def replace(self, **kw) -> "ModelOptions":
        return dataclasses.replace(self, **kw)
