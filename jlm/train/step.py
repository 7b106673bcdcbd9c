"""The train step: gradient accumulation over micro-batches, clipping, AdamW; one jitted pure function
with in/out shardings and the state donated.

A step takes a global batch laid out as [accum, micro, T] (see `Setup.batch_sharding`), scans over
the micro-batches summing gradient numerators and loss denominators (jlm/train/loss.py) in fp32,
and divides once: the update equals the one-big-batch update for either loss weighting.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jlm.train.loss import head_weight, unembed_cross_entropy, weighted_terms
from jlm.train.state import Setup, TrainState

Array = jax.Array
StepFn = Callable[[TrainState, Mapping[str, Array]], tuple[TrainState, dict[str, Array]]]


def forward_loss(setup: Setup, params, frozen, micro: Mapping[str, Array]):
    """(numerator, (denominator, target tokens)) of one micro-batch [micro, T].

    The vocabulary projection runs only at the positions in `target_index` (the trained tokens,
    see jlm.train.data.target_index), in chunks: [micro, T, vocab] logits never exist. Without
    `target_index` every position is scored (same loss, more work)."""
    model = setup.parts.merge(params, frozen)
    kw = dict(positions=micro.get("positions"), logits=False, output_hidden_states=True)
    if setup.cfg.packing:
        kw["segment_ids"] = micro["segment_ids"]
    # else one right-padded sample per row: plain causal attention is exact for every real token
    # (padding only ever follows it), and fused kernels then need no mask at all
    h = model(micro["input_ids"], **kw).hidden_states[-1]  # after the final norm
    t = h.shape[1]
    picked = dict(micro)
    if "target_index" in micro:
        idx = micro["target_index"]
        safe = jnp.maximum(idx, 0)
        h = jnp.take_along_axis(h, safe[..., None], axis=1)
        picked = {k: jnp.take_along_axis(micro[k], safe, axis=1)
                  for k in ("targets", "loss_mask", "segment_ids") if k in micro}
        picked["loss_mask"] = jnp.where(idx >= 0, picked["loss_mask"], 0.0)
    head_trained = any(k in setup.parts.trainable for k in ("embed", "lm_head"))
    ce = unembed_cross_entropy(h.astype(model.dtype), head_weight(model), picked["targets"],
                               weight_grad=head_trained)
    num, den, ntok = weighted_terms(ce, picked, setup.cfg.weighting, max_segment=t)
    return num, (den, ntok)


def global_norm_fp32(tree) -> Array:
    """Global L2 norm summed in fp32 (bf16 sums of squares lose digits over a billion weights)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(setup: Setup, schedule: optax.Schedule) -> StepFn:
    """The jitted step: (state, batch) -> (new state, metrics). The state is donated."""
    grad_fn = jax.value_and_grad(lambda p, f, mb: forward_loss(setup, p, f, mb), has_aux=True)
    param_sh = setup.state_shardings.params

    def step(state: TrainState, batch: Mapping[str, Array]):
        f32 = jnp.float32

        def micro_grads(mb):
            (num, (den, ntok)), g = grad_fn(state.params, state.frozen, mb)
            return num, den, ntok, jax.tree.map(lambda x: x.astype(f32), g)

        if setup.accum == 1:
            num, den, ntok, grads = micro_grads(jax.tree.map(lambda x: x[0], batch))
        else:
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, f32), state.params)
            zeros = jax.lax.with_sharding_constraint(zeros, param_sh)

            def body(carry, mb):
                acc, num, den, ntok = carry
                n, d, t, g = micro_grads(mb)
                acc = jax.lax.with_sharding_constraint(jax.tree.map(jnp.add, acc, g), param_sh)
                return (acc, num + n, den + d, ntok + t), None

            init = (zeros, jnp.zeros((), f32), jnp.zeros((), f32), jnp.zeros((), f32))
            (grads, num, den, ntok), _ = jax.lax.scan(body, init, batch)

        scale = 1.0 / jnp.maximum(den, 1.0)  # a batch without target tokens: zero loss and gradient
        grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, state.params)
        grad_norm = global_norm_fp32(grads)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        seg = batch.get("segment_ids")
        tokens = jnp.sum(seg > 0) if seg is not None else jnp.asarray(batch["input_ids"].size)
        metrics = {"loss": num * scale, "grad_norm": grad_norm, "lr": schedule(state.step),
                   "weight": den, "target_tokens": ntok, "tokens": tokens.astype(f32)}
        new = TrainState(step=state.step + 1, params=params, frozen=state.frozen, opt_state=opt_state)
        return new, metrics

    replicated = NamedSharding(setup.mesh, P())
    jitted = jax.jit(step, in_shardings=(setup.state_shardings, setup.batch_sharding()),
                     out_shardings=(setup.state_shardings, replicated), donate_argnums=0)

    def call(state: TrainState, batch: Mapping[str, Array]):
        with jax.set_mesh(setup.mesh):  # activation constraints (jlm.model.sharding.constrain) need it
            return jitted(state, batch)

    call.jitted = jitted  # for .lower(...).compile() / memory analysis
    return call


def shard_batch(setup: Setup, host_batch: Mapping[str, np.ndarray]) -> dict[str, Array]:
    """A host batch [rows, T] (this process's share of the global batch) -> device arrays
    [accum, micro, T] split over (data, fsdp); works the same on one host or many."""
    sharding = setup.batch_sharding()
    nproc = jax.process_count()
    local_rows = setup.cfg.global_batch // nproc
    out = {}
    for k, v in host_batch.items():
        v = np.asarray(v)
        if v.shape[0] != local_rows:
            raise ValueError(f"batch {k!r} has {v.shape[0]} rows, expected global_batch/hosts = {local_rows}")
        local = v.reshape(setup.accum, setup.micro_batch // nproc, *v.shape[1:])
        out[k] = jax.make_array_from_process_local_data(sharding, local, (setup.accum, setup.micro_batch, *v.shape[1:]))
    return out
