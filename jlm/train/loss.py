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

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from jlm.model.sharding import constrain

Array = jax.Array


# positions (rows x chunk) whose logits exist at once: 512 x 49k fp32 is 100 MB
CE_CHUNK_TOKENS = 512


def unembed_cross_entropy(h: Array, w: Array, targets: Array, *, chunk: int | None = None,
                          weight_grad: bool = True) -> Array:
    """Per-token CE [B, K] (fp32) of final hidden states h [B, K, D] against head w [D, V].

    Memory: the logits exist one chunk of `chunk` positions per row at a time (default: about
    CE_CHUNK_TOKENS over the batch), in the forward pass and again (recomputed) in the backward
    pass, so nothing of size [B, K, V] is ever held; the train step passes only the positions that
    carry a loss (`target_index`), not all T.

    Speed: the logits are an fp32 product of the compute-dtype operands, as `Llama.unembed` makes
    them. Autodiff of a bf16 x bf16 -> fp32 product would hand the fp32 cotangent to two
    mixed-dtype matmuls, which XLA runs as fp32 GEMMs; here d(logits) is formed in fp32 and cast to
    the compute dtype once, so both backward GEMMs run in bf16 with fp32 accumulation.
    `weight_grad=False` (a frozen head, e.g. tied embeddings under LoRA) skips the d(w) GEMM.
    """
    if chunk is None:
        chunk = max(8, CE_CHUNK_TOKENS // h.shape[0])
    return _chunked_ce(h, w, targets, min(chunk, h.shape[1]), weight_grad)


def _logits(h, w):
    y = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
    return constrain(y, ("act_batch", "act_seq", "act_vocab"))


def _to_chunks(x: Array, chunk: int) -> Array:
    """[B, K, ...] -> [n, B, chunk, ...], zero-padded at the end of K."""
    b, k = x.shape[:2]
    n = -(-k // chunk)
    x = jnp.pad(x, [(0, 0), (0, n * chunk - k)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def _from_chunks(x: Array, k: int) -> Array:
    """[n, B, chunk, ...] -> [B, k, ...]."""
    n, b, c = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape(b, n * c, *x.shape[3:])[:, :k]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_ce(h, w, targets, chunk, weight_grad):
    return _chunked_ce_fwd(h, w, targets, chunk, weight_grad)[0]


def _chunked_ce_fwd(h, w, targets, chunk, weight_grad):
    def one(args):
        hc, tc = args
        logits = _logits(hc, w)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tc[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return lse - picked, lse

    ce, lse = jax.lax.map(one, (_to_chunks(h, chunk), _to_chunks(targets, chunk)))
    k = h.shape[1]
    return _from_chunks(ce, k), (h, w, targets, _from_chunks(lse, k))


def _chunked_ce_bwd(chunk, weight_grad, res, g):
    h, w, targets, lse = res

    def body(dw, args):
        hc, tc, lc, gc = args
        d = jnp.exp(_logits(hc, w) - lc[..., None])  # softmax, fp32, recomputed
        d = d - jax.nn.one_hot(tc, w.shape[-1], dtype=d.dtype)
        d = (d * gc[..., None]).astype(h.dtype)  # padded positions have g = 0
        dh = jnp.einsum("btv,dv->btd", d, w, preferred_element_type=jnp.float32).astype(h.dtype)
        if weight_grad:
            dw = dw + jnp.einsum("btd,btv->dv", hc, d, preferred_element_type=jnp.float32)
        return dw, dh

    dw0 = jnp.zeros(w.shape, jnp.float32) if weight_grad else None
    xs = tuple(_to_chunks(x, chunk) for x in (h, targets, lse, g))
    dw, dh = jax.lax.scan(body, dw0, xs)
    dw = dw.astype(w.dtype) if weight_grad else jnp.zeros_like(w)
    return _from_chunks(dh, h.shape[1]), dw, None


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def head_weight(model) -> Array:
    """The output projection [D, V] in the model's compute dtype (tied embeddings transposed)."""
    w = model.embed[...].T if model.lm_head is None else model.lm_head[...]
    return w.astype(model.dtype)


def weighted_terms(ce: Array, batch: Mapping[str, Array], weighting: str,
                   max_segment: int | None = None) -> tuple[Array, Array, Array]:
    """(numerator, denominator, target tokens) of one micro-batch from its per-token CE [B, T];
    see the module docstring.

    batch: `loss_mask` [B, T] (the weight of targets[t]: 0 untrained, 1 trained, or the score line's
    `score_weight`; a sample's loss is its weighted token mean), `segment_ids` int [B, T]
    (0 padding, 1..k samples; optional: one sample per row). `max_segment`: the largest segment id
    that may occur (default T; the row length when `ce` holds selected positions only).
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
    # one id per (row, segment)
    per_row = (t if max_segment is None else max_segment) + 1
    ids = (jnp.arange(b, dtype=jnp.int32)[:, None] * per_row + seg).reshape(-1)
    n_seg = b * per_row
    count = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=n_seg)
    total = jax.ops.segment_sum(ce.reshape(-1), ids, num_segments=n_seg)
    has = count > 0  # padding (segment 0) never has target tokens: its mask is 0
    per_sample = jnp.where(has, total / jnp.maximum(count, 1.0), 0.0)
    return jnp.sum(per_sample), jnp.sum(has.astype(jnp.float32)), n_tokens
