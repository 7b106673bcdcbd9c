"""The engine's device programs: pure functions of (weights, cache, per-row inputs), one builder per
kind, made for one static shape each and compiled by the engine (package docstring, steps 2-4).

`constrain` pins a cache to the engine's shardings; `graphdef` is the model's structure, merged
with the weights `state` inside each program.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jlm.infer.sampling import next_token
from jlm.model.config import LlamaConfig
from jlm.model.llama import KVCache

Array = jax.Array
Constrain = Callable[[KVCache], KVCache]


@struct.dataclass
class DecodeState:
    """What the decode loop carries, and returns when every row is done or `max_new` steps ran."""
    cache: KVCache
    pending: Array  # [B] int32: each row's next token to feed (a stopped row's stopping token)
    active: Array  # [B] bool: still generating
    tokens: Array  # [B, max_new] int32: this call's tokens (a row's first `count` are real)
    count: Array  # [B] int32: tokens generated per row in this call
    step: Array  # [] int32: loop steps taken (= cache slots written)


def prefill(graphdef, cfg: LlamaConfig, size: int, cache_dtype, constrain: Constrain, groups: int = 1):
    """(state, ids [B, T], mask [B, T]) -> a fresh `size`-slot cache holding the prompts.

    With `groups` > 1 the rows run through the model in that many equal groups, one after another
    (a `fori_loop` writing each group's rows into the one cache in place): the CPU's prefill rate
    falls as a call's activations outgrow its caches (docs/benchmarks.md: ~2,000 tokens a call is
    best), while decoding wants all the rows in one batch. One compiled body serves every group,
    so it also compiles faster."""
    def fresh(rows: int) -> KVCache:  # built in its shardings, not replicated and then sharded
        return constrain(KVCache.init(cfg, rows, size, cache_dtype))

    def one(model, ids, mask):
        return model(ids, mask, cache=fresh(ids.shape[0]), cache_empty=True, logits=False).cache

    def run(state, ids, mask):
        model = nnx.merge(graphdef, state)
        if groups == 1:
            return constrain(one(model, ids, mask))
        g = ids.shape[0] // groups

        def group(i, cache):
            part = one(model, *(jax.lax.dynamic_slice_in_dim(x, i * g, g) for x in (ids, mask)))
            put = lambda whole, new: jax.lax.dynamic_update_slice_in_dim(whole, new, i * g, axis=0)
            # every row-leading leaf takes the group's rows; all groups write the same slots
            return jax.tree.map(put, cache.replace(index=None), part.replace(index=None)).replace(index=part.index)
        return constrain(jax.lax.fori_loop(0, groups, group, fresh(ids.shape[0])))
    return run


def decode(graphdef, max_new: int, greedy: bool, constrain: Constrain):
    """(state, cache, pending, active, keys, generated, stop, min_new, temperature, top_k, top_p) ->
    DecodeState: one `lax.while_loop` of single-token steps, no host round trip per token."""
    def run(state, cache, pending, active, keys, generated, stop, min_new, temperature, top_k, top_p):
        model = nnx.merge(graphdef, state)
        b = pending.shape[0]

        def cond(s: DecodeState):
            return (s.step < max_new) & jnp.any(s.active)

        def body(s: DecodeState):
            out = model(s.pending[:, None], s.active[:, None], cache=s.cache, logits="last")
            tok = next_token(out.logits[:, 0], greedy=greedy, keys=keys, steps=generated + s.count,
                             temperature=temperature, top_k=top_k, top_p=top_p)
            tok = jnp.where(s.active, tok, 0)
            count = s.count + s.active.astype(jnp.int32)
            stopping = s.active & stop[tok] & (count >= min_new)
            return DecodeState(cache=constrain(out.cache), pending=jnp.where(s.active, tok, s.pending),
                               active=s.active & ~stopping,
                               tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, tok[:, None], s.step, axis=1),
                               count=count, step=s.step + 1)

        init = DecodeState(cache=cache, pending=pending, active=active, tokens=jnp.zeros((b, max_new), jnp.int32),
                           count=jnp.zeros((b,), jnp.int32), step=jnp.zeros((), jnp.int32))
        return jax.lax.while_loop(cond, body, init)
    return run


def tree(graphdef, static, constrain: Constrain):
    """(state, cache, pending, active, final_set) -> (the cache, rewound; log P of each candidate
    [B, C]): every candidate continuation in one call, each token attending to its ancestors only."""
    depth, anc, edge_node, edge_tok, edge_valid, final_node, nodes = static

    def run(state, cache, pending, active, final_set):
        model = nnx.merge(graphdef, state)
        b, t = pending.shape[0], len(nodes)
        ids = jnp.concatenate([pending[:, None], jnp.broadcast_to(jnp.asarray(nodes[1:]), (b, t - 1))], axis=1)
        positions = cache.next_pos[:, None] + jnp.asarray(depth)[None]
        mask = jnp.broadcast_to(active[:, None], (b, t))
        out = model(ids, mask, positions=positions, cache=cache, chunk_mask=jnp.asarray(anc), logits=True)
        # log-probabilities without a [B, T, V] log-softmax or a [B, C, V] gather (hundreds of MB at
        # batch 8 on a 49k vocabulary): each node's normaliser, and its mass on the ending tokens
        logits = out.logits.astype(jnp.float32)  # [B, T, V]
        lse = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
        ends = jax.nn.logsumexp(jnp.where(final_set[None, None], logits, -jnp.inf), axis=-1)  # [B, T]
        node, tok = jnp.asarray(edge_node), jnp.asarray(edge_tok)
        edges = logits[:, node, tok] - lse[:, node]  # [B, C, E]
        edges = jnp.sum(jnp.where(jnp.asarray(edge_valid)[None], edges, 0.0), axis=-1)
        final = ends[:, jnp.asarray(final_node)] - lse[:, jnp.asarray(final_node)]
        # the tree's slots are junk now: hide them and rewind, so decoding starts where it was
        restored = out.cache.replace(valid=cache.valid, index=cache.index, next_pos=cache.next_pos)
        return constrain(restored), edges + final
    return run


def extend(graphdef, constrain: Constrain):
    """(state, cache, ids [B, W], mask [B, W]) -> the cache with the known tokens appended."""
    def run(state, cache, ids, mask):
        return constrain(nnx.merge(graphdef, state)(ids, mask, cache=cache, logits=False).cache)
    return run
