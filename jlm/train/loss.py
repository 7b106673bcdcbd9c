"""Masked next-token cross-entropy with per-sample or per-token weighting, as (numerator, denominator).

The loss of a global batch is sum(numerators) / sum(denominators) over its micro-batches, divided
once at the end, so gradient accumulation gives exactly the update of one big batch:

  weighting="token":  numerator = sum of token losses,           denominator = number of target tokens
  weighting="sample": numerator = sum over samples of their       denominator = number of samples with
                      token-mean loss (JudgeLM: micro-batch 1 x   at least one target token
                      accumulation 32 gives every sample equal
                      weight whatever its length)

A sample is a (row, segment) pair: packed rows hold several, told apart by `segment_ids`.
Everything here is fp32.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jlm.model.sharding import constrain

Array = jax.Array


def token_losses(logits: Array, targets: Array) -> Array:
    """Cross-entropy of each position, fp32 [B, T], from logits [B, T, V] (any float dtype)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked


@jax.custom_vjp
def unembed_cross_entropy(h: Array, w: Array, targets: Array) -> Array:
    """Per-token CE [B, T] (fp32) of final hidden states h [B, T, D] against head w [D, V].

    The logits are an fp32 product of the compute-dtype operands, as `Llama.unembed` makes them.
    The point is the backward pass: autodiff of a bf16 x bf16 -> fp32 product hands the fp32
    cotangent to two *mixed-dtype* matmuls, which XLA runs as fp32 GEMMs (half the speed of bf16
    at best, an eighth at worst) over the largest matrix of a small model. Here d(logits) is
    formed in fp32 and cast to the compute dtype once, so both backward GEMMs run in bf16 with
    fp32 accumulation, like every other matmul of the step.
    """
    return _unembed_ce_fwd(h, w, targets)[0]


def _logits(h, w):
    y = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
    return constrain(y, ("act_batch", "act_seq", "act_vocab"))


def _unembed_ce_fwd(h, w, targets):
    logits = _logits(h, w)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return lse - picked, (h, w, targets, logits, lse)


def _unembed_ce_bwd(res, g):
    h, w, targets, logits, lse = res
    d = jnp.exp(logits - lse[..., None])  # softmax, fp32
    d = d - jax.nn.one_hot(targets, logits.shape[-1], dtype=d.dtype)
    d = (d * g[..., None]).astype(h.dtype)
    dh = jnp.einsum("btv,dv->btd", d, w, preferred_element_type=jnp.float32).astype(h.dtype)
    dw = jnp.einsum("btd,btv->dv", h, d, preferred_element_type=jnp.float32).astype(w.dtype)
    return dh, dw, None


unembed_cross_entropy.defvjp(_unembed_ce_fwd, _unembed_ce_bwd)


def head_weight(model) -> Array:
    """The output projection [D, V] in the model's compute dtype (tied embeddings transposed)."""
    w = model.embed[...].T if model.lm_head is None else model.lm_head[...]
    return w.astype(model.dtype)


def loss_terms(logits: Array, batch: Mapping[str, Array], weighting: str) -> tuple[Array, Array, Array]:
    """(numerator, denominator, target tokens) of one micro-batch from its logits [B, T, V]."""
    return weighted_terms(token_losses(logits, batch["targets"]), batch, weighting)


def weighted_terms(ce: Array, batch: Mapping[str, Array], weighting: str) -> tuple[Array, Array, Array]:
    """(numerator, denominator, target tokens) of one micro-batch from its per-token CE [B, T];
    see the module docstring.

    batch: `loss_mask` [B, T] (the weight of targets[t]: 0 untrained, 1 trained, or the score line's
    `score_weight`; a sample's loss is its weighted token mean), `segment_ids` int [B, T]
    (0 padding, 1..k samples; optional: one sample per row).
    """
    mask = batch["loss_mask"].astype(jnp.float32)
    trained = mask > 0
    # where, not multiply: a padding position may hold inf/NaN and NaN * 0 is NaN
    ce = jnp.where(trained, ce, 0.0) * mask
    n_tokens = jnp.sum(trained.astype(jnp.float32))
    if weighting == "token":
        return jnp.sum(ce), jnp.sum(mask), n_tokens
    if weighting != "sample":
        raise ValueError(f"weighting={weighting!r}: use 'sample' or 'token'")
    b, t = mask.shape
    seg = batch.get("segment_ids")
    seg = jnp.ones((b, t), jnp.int32) if seg is None else seg.astype(jnp.int32)
    # one id per (row, segment): row * (t + 1) + segment, segment in [0, t]
    ids = (jnp.arange(b, dtype=jnp.int32)[:, None] * (t + 1) + seg).reshape(-1)
    n_seg = b * (t + 1)
    count = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=n_seg)
    total = jax.ops.segment_sum(ce.reshape(-1), ids, num_segments=n_seg)
    has = count > 0  # padding (segment 0) never has target tokens: its mask is 0
    per_sample = jnp.where(has, total / jnp.maximum(count, 1.0), 0.0)
    return jnp.sum(per_sample), jnp.sum(has.astype(jnp.float32)), n_tokens
