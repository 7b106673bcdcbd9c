"""Next-token choice: greedy, or seeded temperature / top-k / top-p sampling.

Every row draws from its own key, `fold_in(fold_in(key(seed), row_id), step)`, where `row_id` is the
sample's index in the caller's list and `step` counts the tokens that row has generated so far. A
sample's draws therefore do not depend on which batch it lands in, the batch size, its position in
the batch, or the number of devices.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (top_k / top_p are then ignored). top_k 0 and top_p 1.0 disable
    those filters. JudgeLM's own scripts sample with temperature 0.2, top_k 50, top_p 1.0."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = Sampling()


def row_keys(seed: int, row_ids) -> jax.Array:
    """One PRNG key per row, from the sample's own index (not its batch slot)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.asarray(row_ids, jnp.uint32))


def filter_logits(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Scaled logits [B, V] with everything outside top-k / the top-p nucleus set to -inf.

    top_k and top_p are traced values, so changing them does not recompile: both filters work on
    one descending sort of the row.
    """
    x = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    sorted_x = jnp.sort(x, axis=-1)[:, ::-1]
    v = x.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jnp.take_along_axis(sorted_x, jnp.broadcast_to(k - 1, (x.shape[0], 1)), axis=-1)
    # nucleus: keep the smallest prefix of the sorted tokens whose mass reaches top_p (always >= 1 token)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each sorted token
    in_nucleus = before < top_p
    last = jnp.maximum(jnp.sum(in_nucleus, axis=-1, keepdims=True) - 1, 0)
    pth = jnp.take_along_axis(sorted_x, last, axis=-1)
    cutoff = jnp.maximum(kth, pth)
    return jnp.where(x >= cutoff, x, -jnp.inf)


def next_token(logits: jax.Array, *, greedy: bool, keys: jax.Array, steps: jax.Array,
               temperature=0.0, top_k=0, top_p=1.0) -> jax.Array:
    """Token ids [B] from fp32 logits [B, V]. `keys` [B] row keys, `steps` [B] per-row token counts."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature, top_k, top_p)
    step_keys = jax.vmap(jax.random.fold_in)(keys, steps.astype(jnp.uint32))
    return jax.vmap(jax.random.categorical)(step_keys, x).astype(jnp.int32)
