"""Attention masks and RoPE positions for every kind of call, built outside the model.

`Llama.forward` takes explicit positions and a mask; these build them from the Hugging Face-style
arguments (`attention_mask`, packed `segment_ids`, a KV cache, a tree's `chunk_mask`). There is no
"pad id == 0" anywhere: padding is whatever the mask says.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class CausalMask:
    """Causal self-attention without a cache, kept implicit: fused kernels (cuDNN flash attention)
    skip the upper triangle instead of reading a dense [T, T] mask, and the XLA path attends block
    by block (`blockwise_causal_attention`). `segment_ids` [B, T] restricts attention to packed
    segments (0 = padding); None means one sequence per row."""
    segment_ids: Array | None = None


def segment_positions(segment_ids: Array) -> Array:
    """Position of each token within its packed segment."""
    t = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(t), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - first


def cache_free(attention_mask: Array | None, segment_ids: Array | None, positions: Array | None, shape,
               *, dense: bool) -> tuple[Array, Array | CausalMask]:
    """(positions, mask) of a call without a cache (training, scoring). `dense` builds the [B, T, T]
    boolean mask that attention probabilities need; otherwise causality stays implicit."""
    b, t = shape
    if positions is None:
        if segment_ids is not None:
            positions = segment_positions(segment_ids)
        elif attention_mask is not None:  # left or right padding: real tokens count from 0
            positions = jnp.maximum(jnp.cumsum(attention_mask.astype(bool), axis=1) - 1, 0)
        else:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    if segment_ids is None and attention_mask is not None:
        segment_ids = attention_mask.astype(jnp.int32)  # padding is segment 0
    if not dense:
        return positions, CausalMask(segment_ids)
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    if segment_ids is None:
        return positions, causal
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return positions, causal & same


def with_cache(cache, attention_mask: Array, positions: Array | None, chunk_mask: Array | None,
               *, causal_chunk: bool) -> tuple[Array, Array | CausalMask]:
    """(positions, mask) of T new tokens written at `cache.index` (attention_mask [B, T] bool).

    Query j sits in slot index + j and sees the valid slots up to its own. `chunk_mask` [B, T, T]
    (or [T, T]) narrows what each query sees of this call's own tokens (tree attention).
    `causal_chunk`: the cache is empty, so the chunk attends causally to itself only (the blockwise
    kernel then never forms [T, S] scores)."""
    t = attention_mask.shape[1]
    if positions is None:
        positions = cache.next_pos[:, None] + jnp.cumsum(attention_mask, axis=1) - 1
    new_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask, cache.index, axis=1)
    if causal_chunk and chunk_mask is None:
        return positions, CausalMask(attention_mask.astype(jnp.int32))
    slots = jnp.arange(cache.size)
    mask = new_valid[:, None, :] & (slots[None, None, :] <= cache.index + jnp.arange(t)[None, :, None])
    if chunk_mask is not None:
        within = jnp.broadcast_to(chunk_mask.astype(bool), (attention_mask.shape[0], t, t))
        mask = mask & jax.lax.dynamic_update_slice_in_dim(jnp.ones_like(mask), within, cache.index, axis=2)
    return positions, mask
