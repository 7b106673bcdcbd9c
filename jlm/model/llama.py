"""LLaMA / Vicuna decoder in Flax NNX, written for judges.

Layout choices (see docs/design.md):
- weights keep their head structure (q: [embed, heads, head_dim]) and carry logical axis names in
  their `axes` metadata; `sharding.py` maps the names to a device mesh;
- RoPE is half-split (Hugging Face's `rotate_half` layout), so HF weights load as they are, with
  phases computed in fp32 from explicit positions (left padding never shifts them);
- attention always takes an explicit mask (padding, causal, packed segments, cache validity):
  there is no "pad id == 0" anywhere;
- norms, softmax and the logits are fp32 whatever the compute dtype;
- one KV cache type serves prefill, decoding and continuing a kept cache (reasons on demand, chat).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name

from jlm.model import masks
from jlm.model.config import LlamaConfig
from jlm.model.masks import CausalMask
from jlm.model.options import ModelOptions
from jlm.model.sharding import constrain
from jlm.model.spec import PROJ_EINSUM, ArraySpec, LoRA, block_specs, cache_specs, lora_specs, parse_remat, top_specs

__all__ = ["Block", "CausalMask", "KVCache", "Int8KV", "Llama", "LoRA", "LoRAParam", "ModelOptions", "ModelOutput"]

Array = jax.Array
# A large finite negative instead of -inf: a fully masked row (a left-pad query) then gets a
# uniform softmax instead of NaNs, and its output is never read.
NEG_INF = -0.7 * float(jnp.finfo(jnp.float32).max)


# ------------------------------------------------------------------------------------- outputs
@struct.dataclass
class Int8KV:
    """One layer's keys or values in int8 with an fp32 scale per (row, slot, head): decoding reads
    the whole cache every step, and this halves its bytes against bf16 (MaxText's KV quantisation)."""
    values: Array  # [B, S, kv_heads, head_dim] int8
    scale: Array  # [B, S, kv_heads, 1] float32

    @staticmethod
    def quantize(x: Array) -> tuple[Array, Array]:
        scale = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True) / 127.0
        q = jnp.round(x.astype(jnp.float32) / jnp.maximum(scale, 1e-30))
        return jnp.clip(q, -127, 127).astype(jnp.int8), scale

    def write(self, x: Array, index) -> "Int8KV":
        q, scale = self.quantize(x)
        return Int8KV(jax.lax.dynamic_update_slice_in_dim(self.values, q, index, axis=1),
                      jax.lax.dynamic_update_slice_in_dim(self.scale, scale, index, axis=1))

    def dequantize(self, dtype) -> Array:
        return (self.values.astype(jnp.float32) * self.scale).astype(dtype)


@struct.dataclass
class KVCache:
    """Keys/values of every layer, in slots [0, size). All rows share one write cursor `index`;
    `valid` marks slots holding real tokens (left padding leaves holes) and `next_pos` is each
    row's next RoPE position, so rows of different lengths decode in lock step."""
    k: tuple[Array | Int8KV, ...]  # per layer [B, S, kv_heads, head_dim] (an Int8KV for dtype int8)
    v: tuple[Array | Int8KV, ...]
    valid: Array  # [B, S] bool
    index: Array  # [] int32, next slot to write
    next_pos: Array  # [B] int32

    @property
    def size(self) -> int:
        return self.valid.shape[1]

    @classmethod
    def init(cls, cfg: LlamaConfig, batch: int, size: int, dtype=jnp.bfloat16) -> "KVCache":
        return cls.from_specs(cache_specs(cfg, batch, size), cfg.num_layers, dtype,
                              lambda spec, dt: jnp.zeros(spec.shape, dt))

    @classmethod
    def from_specs(cls, specs, num_layers: int, dtype, make) -> "KVCache":
        """A cache-shaped tree with `make(spec, dtype)` at every leaf: zeros, shardings, abstract arrays."""
        def kv():
            if jnp.dtype(dtype) == jnp.int8:
                return Int8KV(make(specs["kv"], jnp.int8), make(specs["kv_scale"], jnp.float32))
            return make(specs["kv"], dtype)
        return cls(k=tuple(kv() for _ in range(num_layers)), v=tuple(kv() for _ in range(num_layers)),
                   valid=make(specs["valid"], jnp.bool_), index=make(specs["index"], jnp.int32),
                   next_pos=make(specs["next_pos"], jnp.int32))


@struct.dataclass
class ModelOutput:
    logits: Array | None  # [B, T, V] float32
    hidden_states: tuple[Array, ...] | None = None  # embeddings, then each layer (last one normed)
    attentions: tuple[Array, ...] | None = None  # per layer [B, heads, T, S] float32
    cache: KVCache | None = None


# -------------------------------------------------------------------------------------- pieces
class LoRAParam(nnx.Param):
    """Low-rank adapter weights: the only trainable variables when fine-tuning with LoRA."""


def initial_value(spec: ArraySpec, key: Array | None) -> Array:
    """A weight's initial fp32 value per its spec (`key` only for random ones)."""
    if spec.init == "normal":
        return spec.init_std * jax.random.truncated_normal(key, -2.0, 2.0, spec.shape, jnp.float32)
    return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)


def _param(rngs: nnx.Rngs, spec: ArraySpec, param_dtype, kind=nnx.Param):
    """A weight with its logical axis names, initialised per its spec."""
    value = initial_value(spec, rngs.params() if spec.init == "normal" else None)
    return kind(value.astype(jnp.float32 if spec.fp32 else param_dtype), axes=spec.axes)


def _dot(spec: str, a: Array, b: Array, out_dtype=None) -> Array:
    """einsum of two compute-dtype operands, result in `out_dtype` (default: theirs), accumulated
    in fp32. On CPU, forward and backward GEMMs all take compute-dtype operands: XLA CPU runs a
    bf16 GEMM 2-3x slower when its result is bf16 rather than fp32 (measured 140 vs 340 GFLOP/s on
    [2048, 576] x [576, 1536]), and autodiff would hand fp32 cotangents to slow mixed-dtype GEMMs.
    Other backends keep the plain product."""
    out_dtype = a.dtype if out_dtype is None else out_dtype
    if jax.default_backend() == "cpu" and a.dtype != jnp.float32:
        if a.dtype != b.dtype:
            raise TypeError(f"_dot: operands of {spec} have dtypes {a.dtype} and {b.dtype}")
        return _dot_cpu(spec, out_dtype, a, b)
    if out_dtype == a.dtype:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=out_dtype)


def _acc(spec: str, a: Array, b: Array, dtype) -> Array:
    """fp32-accumulated einsum with batch dims leading and the lhs laid out [batch, free,
    contracted]: XLA CPU's fast bf16 GEMMs (YNNPACK) take only that lhs form, and fell back to an
    fp32 GEMM, 3-5x slower, for the transposed lhs of the backward products."""
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    batch = [c for c in sa if c in sb and c in out]
    la = "".join(batch + [c for c in sa if c not in sb] + [c for c in sa if c in sb and c not in out])
    lb = "".join(batch + [c for c in sb if c not in batch])
    a = jnp.transpose(a, [sa.index(c) for c in la]) if la != sa else a
    b = jnp.transpose(b, [sb.index(c) for c in lb]) if lb != sb else b
    return jnp.einsum(f"{la},{lb}->{out}", a, b, preferred_element_type=jnp.float32).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dot_cpu(spec: str, out_dtype, a: Array, b: Array) -> Array:
    return _acc(spec, a, b, out_dtype)


def _dot_cpu_fwd(spec, out_dtype, a, b):
    # symbolic zeros: `perturbed` says which operand gets a gradient. A frozen weight (the base
    # model under LoRA) needs none, so its GEMM is skipped and the activation is not kept for it.
    y = _acc(spec, a.value, b.value, out_dtype)
    return y, (b.value if a.perturbed else None, a.value if b.perturbed else None)


def _dot_cpu_bwd(spec, out_dtype, res, g):
    b, a = res  # both operands are in the compute dtype (`_dot` checks)
    ins, out = spec.split("->")
    sa, sb = ins.split(",")
    dtype = (a if b is None else b).dtype
    g = g.astype(dtype)
    da = None if b is None else _acc(f"{out},{sb}->{sa}", g, b, dtype)
    db = None if a is None else _acc(f"{sa},{out}->{sb}", a, g, dtype)
    return da, db


_dot_cpu.defvjp(_dot_cpu_fwd, _dot_cpu_bwd, symbolic_zeros=True)


# Under autodiff these two save only their inputs and recompute the rest (a few elementwise passes):
# otherwise every layer would keep their fp32 statistics and [T, mlp] intermediates alive for the
# backward pass, about 40% of a LoRA step's activation memory.
@functools.partial(jax.checkpoint, static_argnums=(2,))
def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """LLaMA RMSNorm as Hugging Face computes it: statistics in fp32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


@jax.checkpoint
def swiglu(gate: Array, up: Array) -> Array:
    return jax.nn.silu(gate) * up


def rope(x: Array, positions: Array, theta: float, factor: float) -> Array:
    """Half-split rotary embedding of x [B, T, H, D] at integer `positions` [B, T], in fp32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    # HIGHEST: a bf16 product would round position 257 to 256 (jax-llm-examples' note)
    angles = jnp.einsum("bt,f->btf", positions.astype(jnp.float32) / factor, inv_freq,
                        precision=jax.lax.Precision.HIGHEST)
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention(q: Array, k: Array, v: Array, mask: Array, *, impl: str = "xla",
              return_probs: bool = False) -> tuple[Array, Array | None]:
    """q [B,T,H,D], k/v [B,S,K,D] (K divides H), mask [B,T,S] bool -> ([B,T,H,D], probs|None).

    impl="xla", or probabilities asked for: `reference_attention`. Otherwise a multi-token call
    (prefill, tree scoring) takes `fused_attention` and a one-token decode step `decode_attention`.
    """
    if impl == "xla" or return_probs:
        return reference_attention(q, k, v, mask, return_probs=return_probs)
    if q.shape[1] > 1:
        return fused_attention(q, k, v, mask, impl=impl), None
    return decode_attention(q, k, v, mask), None


def reference_attention(q: Array, k: Array, v: Array, mask: Array, *,
                        return_probs: bool = False) -> tuple[Array, Array | None]:
    """Einsums with an fp32 softmax: parity checks, `output_attentions`, and CPU."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(d))
    scores = jnp.where(mask[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v).reshape(b, t, h, d)
    return out, (probs.reshape(b, h, t, -1) if return_probs else None)


def fused_attention(q: Array, k: Array, v: Array, mask: Array, *, impl: str) -> Array:
    """A fused kernel (impl="cudnn": cuDNN flash attention). Our masks are arbitrary (left padding,
    cache holes, packed segments, candidate trees), so the mask goes in as an additive bias (jax
    turns a boolean mask into 0 / large negative); a fully masked query row (a left-pad position)
    gets a finite uniform softmax, never NaN."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=1.0 / math.sqrt(q.shape[-1]),
                                        implementation=impl)


def decode_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """One query per row (a decode step), which only reads the cache. As an einsum, the cache's
    [B, S, K, D] layout (batch dims B and K not leading) makes XLA transpose all of it for a
    batched GEMM on every step; multiply-and-reduce reads it once, in place, in fp32."""
    b, _, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, 1, kv, h // kv, d).astype(jnp.float32)
    scores = jnp.sum(qg * k[:, :, :, None, :].astype(jnp.float32), axis=-1) * (1.0 / math.sqrt(d))  # [B, S, K, G]
    scores = jnp.where(mask[:, 0, :, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=1)
    out = jnp.sum(probs[..., None] * v[:, :, :, None, :].astype(jnp.float32), axis=1)  # [B, K, G, D]
    return out.reshape(b, 1, h, d).astype(v.dtype)


# Query block of the XLA causal path: each block of queries attends to the keys up to its end, so
# scores take [B, heads, ATTN_BLOCK, T] at a time and the upper triangle is mostly skipped.
ATTN_BLOCK = 256


def causal_attention(q: Array, k: Array, v: Array, mask: CausalMask, *, impl: str) -> Array:
    """q [B,T,H,D], k/v [B,T,K,D] -> [B,T,H,D]: causal attention within segments (training path).

    Padding tokens share segment 0, so a padding query attends to earlier padding keys and no row
    is ever fully masked (fully masked rows can give NaNs in fused kernels, and NaN * 0 would leak
    into the gradients). Real tokens never see padding or other segments, so their outputs equal
    `attention()` with the dense packed mask.
    """
    if impl == "xla":
        return blockwise_causal_attention(q, k, v, mask.segment_ids)
    same = None
    if mask.segment_ids is not None:
        seg = mask.segment_ids
        same = (seg[:, :, None] == seg[:, None, :])[:, None]  # [B, 1, T, S]
    return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True,
                                        scale=1.0 / math.sqrt(q.shape[-1]), implementation=impl)


def blockwise_causal_attention(q: Array, k: Array, v: Array, segment_ids: Array | None,
                               block: int | None = None) -> Array:
    """`causal_attention` in plain XLA (CPU, and any backend without a fused kernel), as flash
    attention does it: one block of queries at a time against the keys up to the block's end, an
    fp32 softmax whose division waits until after the PV product, and a custom backward pass that
    recomputes each block's probabilities from the saved log-sum-exp. So the largest temporary is
    one block's scores, nothing of size [heads, T, T] is ever held (forward or backward, with or
    without remat), and about half of the dense FLOPs are skipped. Same numbers as the dense
    softmax (masked keys contribute exactly 0).

    Layout: heads lead ([B, kv_heads, group * block, D] against [B, kv_heads, S, D]) so that every
    product is one batched GEMM; on XLA CPU this is ~4x faster than einsums over [B, T, K, G, D]."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    qh = jnp.transpose(q.reshape(b, t, kv, g, d), (0, 2, 3, 1, 4))  # [B, K, G, T, D]
    kh, vh = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [B, K, S, D]
    out = _flash(qh, kh, vh, seg, ATTN_BLOCK if block is None else block)
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h, d)


def _flash_blocks(t: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, t)) for start in range(0, t, block)]


def _flash_scores(qh, kh, seg, start: int, stop: int) -> Array:
    """Scaled, masked fp32 scores of queries [start, stop) against keys [0, stop): [B, K, G, c, stop]."""
    b, kv, g, _, d = qh.shape
    c = stop - start
    qb = qh[:, :, :, start:stop].reshape(b, kv, g * c, d)
    scores = _dot("bkqd,bksd->bkqs", qb, kh[:, :, :stop], jnp.float32).reshape(b, kv, g, c, stop)
    allowed = (jnp.arange(stop)[None, :] <= jnp.arange(start, stop)[:, None])[None] & (
        seg[:, start:stop, None] == seg[:, None, :stop])  # [B, c, stop]
    return jnp.where(allowed[:, None, None], scores / math.sqrt(d), NEG_INF)


def _flash_pv(p: Array, vh: Array, stop: int) -> Array:
    """[B, K, G, c, stop] probabilities (any float) x values [B, K, :stop, D] -> fp32 [B, K, G, c, D]."""
    b, kv, g, c, _ = p.shape
    o = _dot("bkqs,bksd->bkqd", p.astype(vh.dtype).reshape(b, kv, g * c, stop), vh[:, :, :stop], jnp.float32)
    return o.reshape(b, kv, g, c, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(qh, kh, vh, seg, block):
    return _flash_fwd(qh, kh, vh, seg, block)[0]


def _flash_fwd(qh, kh, vh, seg, block):
    outs, lses = [], []
    for start, stop in _flash_blocks(qh.shape[3], block):
        s = _flash_scores(qh, kh, seg, start, stop)
        m = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        denom = jnp.sum(e, axis=-1, keepdims=True)
        outs.append(_flash_pv(e, vh, stop) / denom)
        lses.append((m + jnp.log(denom))[..., 0])
    out = jnp.concatenate(outs, axis=3).astype(vh.dtype)  # [B, K, G, T, D]
    return out, (qh, kh, vh, seg, out, jnp.concatenate(lses, axis=3))


def _flash_bwd(block, res, dout):
    qh, kh, vh, seg, out, lse = res
    b, kv, g, t, d = qh.shape
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]
    dk = jnp.zeros(kh.shape, jnp.float32)
    dv = jnp.zeros(vh.shape, jnp.float32)
    dqs = []
    for start, stop in _flash_blocks(t, block):
        c = stop - start
        p = jnp.exp(_flash_scores(qh, kh, seg, start, stop) - lse[..., start:stop, None])
        do = dout[:, :, :, start:stop].astype(vh.dtype).reshape(b, kv, g * c, d)
        dp = _dot("bkqd,bksd->bkqs", do, vh[:, :, :stop], jnp.float32).reshape(p.shape)
        ds = (p * (dp - delta[..., start:stop, None]) / math.sqrt(d)).astype(qh.dtype).reshape(b, kv, g * c, stop)
        dqs.append(_dot("bkqs,bksd->bkqd", ds, kh[:, :, :stop]).reshape(b, kv, g, c, d))
        qb = qh[:, :, :, start:stop].reshape(b, kv, g * c, d)
        dk = dk.at[:, :, :stop].add(_dot("bkqs,bkqd->bksd", ds, qb, jnp.float32))
        pb = p.astype(vh.dtype).reshape(b, kv, g * c, stop)
        dv = dv.at[:, :, :stop].add(_dot("bkqs,bkqd->bksd", pb, do, jnp.float32))
    dq = jnp.concatenate(dqs, axis=3)
    return dq, dk.astype(kh.dtype), dv.astype(vh.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------------------- block
class Block(nnx.Module):
    def __init__(self, cfg: LlamaConfig, options: ModelOptions, *, rngs: nnx.Rngs):
        self.cfg, self.dtype, lora = cfg, options.dtype, options.lora
        for name, spec in block_specs(cfg).items():
            setattr(self, name, _param(rngs, spec, options.storage_dtype))
        self.lora_scale = 0.0 if lora is None else lora.alpha / lora.rank
        for name, spec in ({} if lora is None else lora_specs(cfg, lora)).items():
            setattr(self, name, _param(rngs, spec, options.storage_dtype, kind=LoRAParam))

    def proj(self, name: str, x: Array) -> Array:
        spec = PROJ_EINSUM[name]
        y = _dot(spec, x, getattr(self, name)[...].astype(self.dtype))
        if hasattr(self, f"{name}_lora_a"):
            a = getattr(self, f"{name}_lora_a")[...].astype(self.dtype)
            bm = getattr(self, f"{name}_lora_b")[...].astype(self.dtype)
            (lhs, rhs), out = spec.split("->")[0].split(","), spec.split("->")[1]
            ins = "".join(c for c in rhs if c not in out)  # the contracted input dims
            outs = out[2:]
            z = _dot(f"{lhs},{ins}r->btr", x, a)
            y = y + self.lora_scale * _dot(f"btr,r{outs}->bt{outs}", z, bm)
        return y

    def __call__(self, x: Array, positions: Array, mask: Array, layer_cache, cache_index,
                 *, attn_impl: str, return_probs: bool):
        cfg = self.cfg
        with jax.named_scope("attn"):
            out, layer_cache, probs = self._attend(x, positions, mask, layer_cache, cache_index,
                                                   attn_impl=attn_impl, return_probs=return_probs)
        x = constrain(x + out, ("act_batch", "act_seq", "act_embed"))
        with jax.named_scope("mlp"):
            h = checkpoint_name(rms_norm(x, self.mlp_norm[...], cfg.rms_norm_eps), "mlp_in")
            g = swiglu(self.proj("w_gate", h), self.proj("w_up", h))
            g = checkpoint_name(constrain(g, ("act_batch", "act_seq", "act_mlp")), "mlp_hidden")
            x = x + self.proj("w_down", g)
        return checkpoint_name(constrain(x, ("act_batch", "act_seq", "act_embed")), "block_out"), layer_cache, probs

    def _attend(self, x, positions, mask, layer_cache, cache_index, *, attn_impl: str, return_probs: bool):
        """The attention half of the block: its output projection (before the residual), the
        updated layer cache and the probabilities (with return_probs)."""
        cfg = self.cfg
        h = checkpoint_name(rms_norm(x, self.attn_norm[...], cfg.rms_norm_eps), "attn_in")
        q = rope(self.proj("wq", h), positions, cfg.rope_theta, cfg.rope_scaling_factor)
        k = rope(self.proj("wk", h), positions, cfg.rope_theta, cfg.rope_scaling_factor)
        v = self.proj("wv", h)
        q = checkpoint_name(constrain(q, ("act_batch", "act_seq", "act_heads", None)), "query")
        k, v = checkpoint_name(k, "key"), checkpoint_name(v, "value")
        if layer_cache is not None:  # write this chunk at the shared cursor, attend over the cache
            layer_cache = tuple(_cache_write(c, new, cache_index) for c, new in zip(layer_cache, (k, v)))
            # attention reads what the cache holds (quantised included), as later decode steps will
            if isinstance(mask, CausalMask):  # an empty cache: the chunk attends to itself only
                k, v = (_as_cached(c, new, self.dtype) for c, new in zip(layer_cache, (k, v)))
            else:
                k, v = (c.dequantize(self.dtype) if isinstance(c, Int8KV) else c for c in layer_cache)
        if isinstance(mask, CausalMask):  # causal within this chunk: fused or blockwise kernel
            out, probs = causal_attention(q, k.astype(self.dtype), v.astype(self.dtype), mask, impl=attn_impl), None
        else:
            out, probs = attention(q, k.astype(self.dtype), v.astype(self.dtype), mask,
                                   impl=attn_impl, return_probs=return_probs)
        return self.proj("wo", checkpoint_name(out, "attn_out")), layer_cache, probs


# ---------------------------------------------------------------------------------------- model
class Llama(nnx.Module):
    """LLaMA decoder: what it is from `cfg` (the checkpoint's config), how it runs from `options`
    (jlm/model/options.py: compute and storage dtypes, attention kernel, remat policy, scanned
    layers, LoRA).

    `remat` recomputes each block in the backward pass, keeping what the policy names (e.g.
    "nothing_saveable", or "save:query,key,value" from the activations each block tags).
    `attn_impl="cudnn"` runs cache-free calls (training, scoring) through `causal_attention`, so
    cuDNN flash attention sees `is_causal` instead of a dense mask. `scan_layers` runs cache-free
    calls without attention probabilities as one `lax.scan` over the layers: compile time no
    longer grows with depth. The weights stay one module per layer (checkpoints, LoRA and export
    are unchanged); compute-dtype copies are stacked inside the call, one extra pass over the
    weights per call.
    """

    def __init__(self, cfg: LlamaConfig, options: ModelOptions | None = None, *, rngs: nnx.Rngs | None = None):
        options = ModelOptions() if options is None else options
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg, self.options = cfg, options
        self.dtype, self.attn_impl, self.remat = options.dtype, options.attn_impl, options.remat
        self.scan_layers = options.scan_layers
        if options.remat is not None:
            remat_policy(options.remat)  # fail here, not at the first call
        top, storage = top_specs(cfg), options.storage_dtype
        self.embed = _param(rngs, top["embed"], storage)
        self.layers = nnx.List([Block(cfg, options, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = _param(rngs, top["norm"], storage)
        self.lm_head = _param(rngs, top["lm_head"], storage) if "lm_head" in top else None

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 positions: Array | None = None, segment_ids: Array | None = None,
                 cache: KVCache | None = None, chunk_mask: Array | None = None,
                 cache_empty: bool = False, output_hidden_states: bool = False,
                 output_attentions: bool = False, logits: bool | str = True) -> ModelOutput:
        """Run the decoder on `input_ids` [B, T], Hugging Face style: masks and positions are built
        here (jlm/model/masks.py) and passed to `forward`.

        attention_mask: [B, T], 1 for real tokens, 0 for padding (left or right).
        segment_ids: [B, T] for packed training rows (0 = padding); tokens attend within their segment.
        positions: [B, T] RoPE positions; derived from the mask / segments / cache when omitted.
        cache: a KVCache; the T new tokens are written at `cache.index` and the updated cache is
            returned in the output (donate it under jit).
        cache_empty: the cache holds nothing yet (a first prefill): its rows' tokens can only see
            each other, so attention runs causally within the chunk instead of over all S slots.
        chunk_mask: [B, T, T] (or [T, T]) bool, only with a cache: which of this call's own tokens
            each query may see, instead of all earlier ones (tree attention: many candidate
            continuations of one prompt in a single call; pass their `positions` too).
        logits: True for all positions, "last" for the last position only ([B, 1, V]), False to
            skip the vocabulary projection (hidden states only).
        """
        shape = input_ids.shape
        if cache is None:
            positions, mask = masks.cache_free(attention_mask, segment_ids, positions, shape,
                                               dense=output_attentions)
            real = None
        else:
            real = (attention_mask if attention_mask is not None else
                    jnp.ones(shape, bool) if segment_ids is None else segment_ids > 0).astype(bool)
            causal_chunk = cache_empty and not output_attentions and self.attn_impl == "xla"
            positions, mask = masks.with_cache(cache, real, positions, chunk_mask, causal_chunk=causal_chunk)
        return self.forward(input_ids, positions.astype(jnp.int32), mask, cache, real,
                            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                            logits=logits)

    def forward(self, input_ids: Array, positions: Array, mask, cache: KVCache | None = None,
                real: Array | None = None, *, output_hidden_states: bool = False,
                output_attentions: bool = False, logits: bool | str = True) -> ModelOutput:
        """The decoder itself: token ids [B, T] at RoPE `positions` [B, T] under `mask` (a
        masks.CausalMask or a [B, T, S] bool array; jlm/model/masks.py builds them). With `cache`,
        the tokens are written at its cursor and `real` [B, T] bool says which of them are tokens
        (not padding): the slots the cache marks valid, and how far each row's position moves."""
        x = self.embed[...].astype(self.dtype)[input_ids]
        x = constrain(x, ("act_batch", "act_seq", "act_embed"))
        if self.scan_layers and cache is None and not output_attentions:
            return self._forward_scanned(x, positions, mask, output_hidden_states, logits)
        hidden, probs_all, new_k, new_v = [x], [], [], []
        block = functools.partial(_block_call, attn_impl=self.attn_impl, return_probs=output_attentions)
        if self.remat is not None:
            block = nnx.remat(block, policy=remat_policy(self.remat))
        for i, layer in enumerate(self.layers):
            layer_cache = (cache.k[i], cache.v[i]) if cache is not None else None
            index = cache.index if cache is not None else None
            x, layer_cache, probs = block(layer, x, positions, mask, layer_cache, index)
            if cache is not None:
                new_k.append(layer_cache[0])
                new_v.append(layer_cache[1])
            hidden.append(x)
            probs_all.append(probs)
        x = rms_norm(x, self.norm[...], self.cfg.rms_norm_eps)
        hidden[-1] = x  # Hugging Face's convention: the last entry is after the final norm
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=tuple(new_k), v=tuple(new_v),
                                valid=jax.lax.dynamic_update_slice_in_dim(cache.valid, real, cache.index, axis=1),
                                index=cache.index + x.shape[1],
                                next_pos=cache.next_pos + real.sum(axis=1).astype(jnp.int32))
        return ModelOutput(logits=self._final(x, logits), hidden_states=tuple(hidden) if output_hidden_states else None,
                           attentions=tuple(probs_all) if output_attentions else None, cache=new_cache)

    def _forward_scanned(self, x: Array, positions: Array, mask, output_hidden_states: bool,
                         logits: bool | str) -> ModelOutput:
        embedded = x
        x, per_layer = self._scan_layers(x, positions, mask, keep=output_hidden_states)
        x = rms_norm(x, self.norm[...], self.cfg.rms_norm_eps)
        hidden = None
        if output_hidden_states:  # embeddings, each layer's output, the last one normed
            hidden = (embedded, *[per_layer[i] for i in range(self.cfg.num_layers - 1)], x)
        return ModelOutput(logits=self._final(x, logits), hidden_states=hidden)

    def _final(self, x: Array, logits: bool | str) -> Array | None:
        """The requested logits of the final (normed) hidden states."""
        if not logits:
            return None
        return self.unembed(x[:, -1:] if logits == "last" else x)

    def _scan_layers(self, x: Array, positions: Array, mask, keep: bool = False) -> tuple[Array, Array | None]:
        """All blocks as one `lax.scan` over weights stacked on a leading layer axis; with `keep`,
        also every layer's output stacked [L, B, T, D]."""
        graphdefs, states = zip(*(nnx.split(layer) for layer in self.layers))
        if any(g != graphdefs[0] for g in graphdefs[1:]):
            raise ValueError("scan_layers needs identical layers (same LoRA targets in every block)")
        # stack compute-dtype copies: the blocks cast every weight to self.dtype anyway, so this is
        # the same arithmetic (and the same gradients) with half the copy under fp32 masters
        cast = lambda w: w.astype(self.dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w
        stacked = jax.tree.map(lambda *ws: jnp.stack([cast(w) for w in ws]), *states)

        def body(h, state):
            h, _, _ = nnx.merge(graphdefs[0], state)(h, positions, mask, None, None,
                                                       attn_impl=self.attn_impl, return_probs=False)
            return h, (h if keep else None)

        if self.remat is not None:  # inside scan, CSE cannot undo the remat: prevent_cse=False is safe
            body = jax.checkpoint(body, policy=remat_policy(self.remat), prevent_cse=False)
        return jax.lax.scan(body, x, stacked)

    def unembed(self, x: Array) -> Array:
        """Final hidden states [..., D] (already normed) -> fp32 logits [..., V]."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        y = jnp.einsum("...d,dv->...v", x.astype(self.dtype), w.astype(self.dtype),
                       preferred_element_type=jnp.float32)
        return constrain(y, ("act_batch", "act_seq", "act_vocab")) if y.ndim == 3 else y


def _as_cached(c: Array | Int8KV, x: Array, dtype) -> Array:
    """x [B, T, K, D] as the cache `c` stores it (rounded to its dtype, or quantised), in `dtype`."""
    if isinstance(c, Int8KV):
        q, scale = Int8KV.quantize(x)
        return (q.astype(jnp.float32) * scale).astype(dtype)
    return x.astype(c.dtype).astype(dtype)


def _cache_write(c: Array | Int8KV, x: Array, index) -> Array | Int8KV:
    if isinstance(c, Int8KV):
        return c.write(x, index)
    return jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), index, axis=1)


def remat_policy(remat: str):
    """The jax.checkpoint policy `remat` names (see `Llama`)."""
    policy = parse_remat(remat)
    if isinstance(policy, tuple):
        return jax.checkpoint_policies.save_only_these_names(*policy)
    if not hasattr(jax.checkpoint_policies, policy):
        raise ValueError(f"remat={remat!r} is not a jax.checkpoint_policies entry (e.g. nothing_saveable, "
                         "dots_with_no_batch_dims_saveable) nor save:NAMES")
    return getattr(jax.checkpoint_policies, policy)


def _block_call(layer, *args, **kw):
    return layer(*args, **kw)
