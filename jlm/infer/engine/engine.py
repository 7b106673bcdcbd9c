"""The engine's host side: batches in flight, stop tables, candidate trees, and `Engine`, which places
the weights, compiles the programs (programs.py) per shape and runs them (package docstring)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jlm.infer.engine import programs
from jlm.infer.engine.planner import CPU_BATCH_FLOPS, CPU_FLOP_PER_BYTE, CPU_PREFILL_TOKENS, FLOP_PER_BYTE, Planner
from jlm.infer.sampling import GREEDY, Sampling, row_keys
from jlm.model.config import LlamaConfig
from jlm.model.llama import KVCache, Llama
from jlm.model.sharding import logical_to_spec, make_mesh
from jlm.model.spec import cache_specs

# logical axes of the per-row inputs (the cache's are in spec.cache_specs; sharding.RULES maps both)
_ROW_AXES = ("act_batch",)
_TOKENS_AXES = ("act_batch", None)


def default_mesh(tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    """All local devices: the batch over `data`, the model over `tensor` (1 = replicated)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) % tensor:
        raise ValueError(f"tensor={tensor} does not divide the {len(devices)} local devices")
    return make_mesh(data=len(devices) // tensor, fsdp=1, tensor=tensor, devices=devices)


def stop_table(tokenizer, kind: str, vocab_size: int, extra_eos: Sequence[int | None] = ()) -> np.ndarray:
    """Boolean [vocab_size] table of the tokens that end a row.

    kind "eos": end-of-sequence ids only (generation with reasons). kind "newline": also every
    token whose text contains "\\n" (JudgeLM's fast eval: stop after the score line). Decoding
    each id once here is what lets the decode loop test stops on device.
    """
    if kind not in ("eos", "newline"):
        raise ValueError(f"stop kind must be 'eos' or 'newline', got {kind!r}")
    return token_table(tokenizer, vocab_size, (lambda text: "\n" in text) if kind == "newline" else None, extra_eos)


def token_table(tokenizer, vocab_size: int, text_test=None, eos_ids: Sequence[int | None] = ()) -> np.ndarray:
    """Boolean [vocab_size] table: the EOS ids, and every token whose decoded text passes `text_test`."""
    table = np.zeros(vocab_size, bool)
    if text_test is not None:
        for i in range(min(vocab_size, tokenizer.vocab_size)):
            table[i] = text_test(tokenizer.decode([i], skip_special_tokens=True))
    for i in (tokenizer.eos_id, *eos_ids):
        if i is not None and 0 <= i < vocab_size:
            table[i] = True
    return table


@dataclasses.dataclass
class Batch:
    """A batch in flight: its device cache, pending tokens and per-row bookkeeping.

    rows[i] is the caller's index of row i, -1 for filler rows (batch padding to a bucket).
    """
    rows: np.ndarray  # [B] int
    cache: KVCache
    pending: jax.Array  # [B] int32: each row's next token to feed
    generated: np.ndarray  # [B] int: tokens generated so far (the sampling step counter)
    keys: jax.Array | None  # [B] PRNG keys (None until sampling is first used)
    index: int  # host mirror of cache.index (next slot to write)
    size: int  # cache slots

    @property
    def real(self) -> np.ndarray:
        return self.rows >= 0

    @property
    def room(self) -> int:
        return self.size - self.index


@dataclasses.dataclass(frozen=True)
class Generation:
    tokens: list[int]
    finished: bool  # True: ended on a stop token (kept as the last token); False: hit max_new


@dataclasses.dataclass(frozen=True)
class CandidateTree:
    """Candidate continuations laid out as a token tree for one `Engine.tree_logprobs` call.

    Node 0 is the root (each row's pending token); node i > 0 is `tokens[i]`, whose parent is
    `parent[i]`. Candidate c's probability is the product of its `edges` (node, token) pairs
    (token `tok` following the prefix that ends at `node`) times the mass of `final_set` after
    `final_node[c]` (the set of tokens that may end the candidate, e.g. every token starting with
    a newline, and EOS). Built by distributions.py from tokenizer output, never from fixed ids.
    """
    tokens: np.ndarray  # [T] int32 (tokens[0] unused: the root is the pending token)
    parent: np.ndarray  # [T] int32 (-1 for the root)
    edge_node: np.ndarray  # [C, E] int32
    edge_tok: np.ndarray  # [C, E] int32
    edge_valid: np.ndarray  # [C, E] bool
    final_node: np.ndarray  # [C] int32
    final_set: np.ndarray  # [V] bool

    @property
    def size(self) -> int:
        return len(self.tokens)

    def depth(self) -> np.ndarray:
        d = np.zeros(self.size, np.int32)
        for i in range(1, self.size):
            d[i] = d[self.parent[i]] + 1
        return d

    def ancestors(self) -> np.ndarray:
        """[T, T] bool: entry (i, j) is True when node j is node i or one of its ancestors."""
        a = np.eye(self.size, dtype=bool)
        for i in range(1, self.size):
            a[i] |= a[self.parent[i]]
        return a


class Engine:
    """Runs a Llama on batches of token-id prompts. See the module docstring for the design.

    model: a `Llama` (its weights are placed on `mesh` if they are not already).
    tokenizer: only needed for `stop_table` kinds given by name.
    batch_size: rows per device call (rounded up to a multiple of the data-parallel size).
    bucket_step: prompt lengths are padded up to a multiple of this.
    cache_dtype: KV cache dtype (default: the model's compute dtype); "int8" stores keys and values
        in int8 with a scale per (row, slot, head), half the bytes each decode step reads.
    """

    def __init__(self, model: Llama, tokenizer=None, *, mesh: jax.sharding.Mesh | None = None,
                 batch_size: int = 16, bucket_step: int = 64, cache_dtype=None):
        self.cfg: LlamaConfig = model.cfg
        self.tokenizer = tokenizer
        self.mesh = mesh if mesh is not None else default_mesh()
        self.dp = int(self.mesh.shape.get("data", 1) * self.mesh.shape.get("fsdp", 1))
        self.batch_size = max(self.dp, math.ceil(batch_size / self.dp) * self.dp)
        self.bucket_step = bucket_step
        self.cache_dtype = cache_dtype if cache_dtype is not None else model.dtype
        self.graphdef, state = nnx.split(model)
        weights = jax.tree.leaves(state)
        param_bytes = sum(w.nbytes for w in weights) / max(sum(w.size for w in weights), 1)
        cpu = self._cpu = self.mesh.devices.flat[0].platform == "cpu"
        self.planner = Planner.for_model(self.cfg, batch_size=self.batch_size, bucket_step=bucket_step, dp=self.dp,
                                         param_bytes=param_bytes, cache_bytes=jnp.dtype(self.cache_dtype).itemsize,
                                         flop_per_byte=CPU_FLOP_PER_BYTE if cpu else FLOP_PER_BYTE,
                                         batch_flops=CPU_BATCH_FLOPS if cpu else 0.0)
        self.state = self._place_state(state)
        self._replicated = NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._exe: dict = {}
        self._memo: dict = {}

    # ------------------------------------------------------------------------------ placement
    def _sharding(self, axes, shape, strict: bool | None = None) -> NamedSharding:
        """Silent for inputs and the cache (a small batch need not fill the mesh); weights warn."""
        return NamedSharding(self.mesh, logical_to_spec(axes, shape, self.mesh, strict=strict))

    def _place_state(self, state):
        flat = dict(nnx.to_flat_state(state))
        for key, var in flat.items():
            value = var.get_value()
            sharding = self._sharding(var.get_metadata().get("axes", (None,) * value.ndim), value.shape, strict=False)
            if getattr(value, "sharding", None) != sharding:
                flat[key] = var.replace(jax.device_put(value, sharding))
        return nnx.from_flat_state(flat)

    def _cache_shardings(self, b: int, size: int) -> KVCache:
        return KVCache.from_specs(cache_specs(self.cfg, b, size), self.cfg.num_layers, self.cache_dtype,
                                  lambda spec, _: self._sharding(spec.axes, spec.shape))

    def _put(self, x: np.ndarray, axes) -> jax.Array:
        return jax.device_put(x, self._sharding(axes, x.shape))

    def _abstract(self, tree, shardings=None):
        if shardings is None:
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    def _constrain_cache(self, cache: KVCache) -> KVCache:
        sh = self._cache_shardings(cache.valid.shape[0], cache.size)
        return jax.tree.map(jax.lax.with_sharding_constraint, cache, sh)

    def stop_table(self, stop: str | np.ndarray) -> np.ndarray:
        if not isinstance(stop, str):
            stop = np.asarray(stop, bool)
            if stop.shape != (self.cfg.vocab_size,):
                raise ValueError(f"stop table must have shape ({self.cfg.vocab_size},), got {stop.shape}")
            return stop
        if stop not in self._memo:
            if self.tokenizer is None:
                raise ValueError(f"stop={stop!r} needs a tokenizer; pass Engine(model, tokenizer) or a table")
            self._memo[stop] = stop_table(self.tokenizer, stop, self.cfg.vocab_size, (self.cfg.eos_token_id,))
        return self._memo[stop]

    # ----------------------------------------------------------------------------- compiling
    def _prefill(self, size: int, groups: int):
        return programs.prefill(self.graphdef, self.cfg, size, self.cache_dtype, self._constrain_cache, groups)

    def _prefill_groups(self, rows: int, length: int) -> int:
        """How many row groups a CPU prefill of rows x length runs in: the fewest that keep a group
        near CPU_PREFILL_TOKENS (1 on accelerators, and where rows are split over devices)."""
        if not self._cpu or self.dp > 1:
            return 1
        g = rows
        while g % 2 == 0 and g * length > CPU_PREFILL_TOKENS:
            g //= 2
        return rows // g

    def _decode(self, max_new: int, greedy: bool):
        return programs.decode(self.graphdef, max_new, greedy, self._constrain_cache)

    @staticmethod
    def _signature(name: str, static: tuple, args: tuple) -> tuple:
        return name, static, tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args))

    def _compile(self, fn: Callable, args: tuple, donate: tuple = ()):
        with jax.set_mesh(self.mesh):  # the model's activation constraints need the mesh
            return jax.jit(fn, donate_argnums=donate).lower(*self._abstract(args)).compile()

    def _compiled(self, name: str, fn: Callable, static: tuple, args: tuple, donate: tuple = ()):
        """One AOT-compiled executable per (program, static arguments, argument shapes)."""
        key = self._signature(name, static, args)
        if key not in self._exe:
            self._exe[key] = self._compile(fn, args, donate)
        return self._exe[key]

    def _decode_args(self, cache, pending, active: np.ndarray, keys, generated: np.ndarray, table: np.ndarray,
                     min_new: int, sampling: Sampling) -> tuple:
        """The decode program's arguments (`cache` may be abstract: warmup compiles from these too)."""
        return (self.state, cache, pending, self._put(active, _ROW_AXES), keys,
                self._put(generated.astype(np.int32), _ROW_AXES), self._scalar(table, bool),
                self._scalar(min_new, np.int32), self._scalar(sampling.temperature, np.float32),
                self._scalar(sampling.top_k, np.int32), self._scalar(sampling.top_p, np.float32))

    # ------------------------------------------------------------------------------- running
    def prefill(self, prompts: Sequence[Sequence[int]], rows: Sequence[int] | np.ndarray, reserve: int) -> Batch:
        """Prefill `prompts[r] for r in rows` (at most batch_size) into a cache with `reserve`
        free slots after the prompts (room for every token to be decoded or tree-scored later)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) > self.batch_size:
            raise ValueError(f"{len(rows)} rows exceed batch_size={self.batch_size}")
        b = self.planner.batch_bucket(len(rows))
        length = self.planner.bucket(max(len(prompts[r]) for r in rows))
        ids = np.zeros((b, length), np.int32)
        mask = np.zeros((b, length), bool)
        pending = np.zeros((b,), np.int32)
        for i, r in enumerate(rows):
            p = np.asarray(prompts[r], np.int32)
            body = p[:-1]
            if len(body):
                ids[i, length - len(body):] = body
                mask[i, length - len(body):] = True
            pending[i] = p[-1]
        size = length + max(int(reserve), 1)
        args = (self.state, self._put(ids, _TOKENS_AXES), self._put(mask, _TOKENS_AXES))
        groups = self._prefill_groups(b, length)
        exe = self._compiled("prefill", self._prefill(size, groups), (size, groups), args)
        cache = exe(*args)
        all_rows = np.full((b,), -1, np.int64)
        all_rows[: len(rows)] = rows
        return Batch(rows=all_rows, cache=cache, pending=self._put(pending, _ROW_AXES),
                     generated=np.zeros((b,), np.int64), keys=None, index=length, size=size)

    def decode(self, batch: Batch, *, max_new: int, stop: str | np.ndarray = "newline", min_new: int = 0,
               sampling: Sampling = GREEDY, select: np.ndarray | None = None) -> list[Generation | None]:
        """Decode up to `max_new` tokens for the batch's selected rows (default: all real rows),
        continuing from wherever each row stands. Returns one entry per batch row (None for rows
        not selected). The batch's cache is donated and replaced in place."""
        if max_new < 1:
            raise ValueError(f"max_new must be >= 1, got {max_new}")
        if max_new > batch.room:
            raise ValueError(f"max_new={max_new} exceeds the {batch.room} cache slots left in this batch "
                             "(reserve more at prefill)")
        table = self.stop_table(stop)
        active = batch.real if select is None else (np.asarray(select, bool) & batch.real)
        if batch.keys is None and not sampling.greedy:
            ids = np.where(batch.rows >= 0, batch.rows, 0)
            batch.keys = self._put_keys(row_keys(sampling.seed, ids))
        keys = batch.keys if batch.keys is not None else self._unused_keys(len(batch.rows))
        args = self._decode_args(batch.cache, batch.pending, active, keys, batch.generated, table, min_new, sampling)
        exe = self._compiled("decode", self._decode(max_new, sampling.greedy), (max_new, sampling.greedy),
                             args, donate=(1,))
        end = exe(*args)
        batch.cache, batch.pending = end.cache, end.pending
        tokens, count, still, steps = jax.device_get((end.tokens, end.count, end.active, end.step))
        batch.index += int(steps)
        batch.generated = batch.generated + count
        out: list[Generation | None] = []
        for i in range(len(batch.rows)):
            if not active[i]:
                out.append(None)
                continue
            out.append(Generation(tokens=tokens[i, : count[i]].tolist(), finished=not bool(still[i])))
        return out

    def extend(self, batch: Batch, tokens: Sequence[Sequence[int]]) -> int:
        """Append known tokens to the batch's rows (one list per batch row, [] to leave a row as is),
        e.g. a follow-up question after a judgement, without running anything before them again.

        Each row's pending token and its new tokens but the last are written into the cache (padded
        to a multiple of `bucket_step` with masked slots, so few programs compile); the last new token
        becomes the row's pending token, as after a prefill. Returns the cache slots used."""
        if len(tokens) != len(batch.rows):
            raise ValueError(f"extend: {len(tokens)} token lists for a batch of {len(batch.rows)} rows")
        n = max((len(t) for t in tokens), default=0)
        if n == 0:
            return 0
        width = math.ceil(n / self.bucket_step) * self.bucket_step
        if width > batch.room:
            raise ValueError(f"extend: {n} new tokens need {width} cache slots, the batch has {batch.room} "
                             "(reserve more at prefill)")
        pending = np.array(jax.device_get(batch.pending))  # a writable copy
        ids = np.zeros((len(batch.rows), width), np.int32)
        mask = np.zeros((len(batch.rows), width), bool)
        for i, t in enumerate(tokens):
            if len(t):
                if batch.rows[i] < 0:
                    raise ValueError(f"extend: batch row {i} is padding, not a prompt")
                seq = [int(pending[i]), *map(int, t[:-1])]
                ids[i, : len(seq)], mask[i, : len(seq)] = seq, True
                pending[i] = int(t[-1])
        args = (self.state, batch.cache, self._put(ids, _TOKENS_AXES), self._put(mask, _TOKENS_AXES))
        exe = self._compiled("extend", programs.extend(self.graphdef, self._constrain_cache), (), args, donate=(1,))
        batch.cache = exe(*args)
        batch.pending = self._put(pending, _ROW_AXES)
        batch.index += width
        return width

    def _put_keys(self, keys: jax.Array) -> jax.Array:
        return jax.device_put(keys, self._sharding(_ROW_AXES, keys.shape))

    def _unused_keys(self, b: int) -> jax.Array:
        """Greedy decoding takes no keys, but the program's signature does: one cached dummy per size."""
        if ("keys", b) not in self._memo:
            self._memo[("keys", b)] = self._put_keys(row_keys(0, np.zeros(b, np.int64)))
        return self._memo[("keys", b)]

    def _scalar(self, x, dtype) -> jax.Array:
        """A replicated device value: scalars and tables travel as arguments, so changing them
        (min_new, temperature, top-k, the stop table) never recompiles."""
        return jax.device_put(np.asarray(x, dtype), self._replicated)

    def tree_logprobs(self, batch: Batch, tree: CandidateTree) -> np.ndarray:
        """log P(candidate | row's prompt and generated tokens so far) for every row and candidate:
        [B, C] float64. The cache is rewound afterwards; the batch's decoding state is unchanged."""
        if tree.size > batch.room:
            raise ValueError(f"a tree of {tree.size} tokens needs {tree.size} free cache slots, the batch has "
                             f"{batch.room} (reserve more at prefill)")
        static = (tuple(tree.depth()), tree.ancestors(), tree.edge_node, tree.edge_tok, tree.edge_valid,
                  tree.final_node, tree.tokens)
        key = ("tree", tree.tokens.tobytes(), tree.parent.tobytes(), tree.edge_node.tobytes(),
               tree.edge_tok.tobytes(), tree.edge_valid.tobytes(), tree.final_node.tobytes())
        args = (self.state, batch.cache, batch.pending, self._put(batch.real, _ROW_AXES),
                self._scalar(tree.final_set, bool))
        exe = self._compiled("tree", programs.tree(self.graphdef, static, self._constrain_cache), key, args,
                             donate=(1,))
        cache, logp = exe(*args)
        batch.cache = cache
        return np.asarray(jax.device_get(logp), np.float64)

    # --------------------------------------------------------------------------- convenience
    def generate(self, prompts: Sequence[Sequence[int]], *, max_new: int, stop: str | np.ndarray = "eos",
                 min_new: int = 0, sampling: Sampling = GREEDY,
                 on_batch: Callable[[np.ndarray, list[Generation]], None] | None = None) -> list[Generation]:
        """Generate for every prompt (any number); results in input order. `on_batch(rows, gens)`
        is called as each batch finishes."""
        results: list[Generation | None] = [None] * len(prompts)
        for rows in self.planner.plan([len(p) for p in prompts], reserve=max_new):
            batch = self.prefill(prompts, rows, reserve=max_new)
            gens = self.decode(batch, max_new=max_new, stop=stop, min_new=min_new, sampling=sampling)
            done = []
            for r, g in zip(batch.rows, gens):
                if r >= 0:
                    results[r] = g
                    done.append(g)
            if on_batch is not None:
                on_batch(rows, done)
            del batch  # free this cache before the next prefill allocates one
        return results  # type: ignore[return-value]

    def warmup(self, lengths: Sequence[int], *, reserve: int, max_new: Sequence[int] = (), greedy: bool = True,
               threads: int = 8, plan: Sequence[np.ndarray] | None = None) -> int:
        """Compile, in parallel threads, the prefill and decode programs that running prompts of
        these lengths will need (every shape of `plan`, by default `plan(lengths, reserve)`: the
        plan that `generate` with max_new=reserve runs); returns how many were compiled. (XLA
        compiles outside the GIL.)"""
        jobs = {}  # signature -> (program, arguments, donated)
        for rows in self.planner.plan(lengths, reserve) if plan is None else plan:
            b, length = self.planner.batch_bucket(len(rows)), self.planner.bucket(max(lengths[r] for r in rows))
            size = length + max(int(reserve), 1)
            tokens = jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=self._sharding(_TOKENS_AXES, (b, length)))
            args = (self.state, tokens, tokens.update(dtype=jnp.bool_))
            groups = self._prefill_groups(b, length)
            jobs[self._signature("prefill", (size, groups), args)] = (self._prefill(size, groups), args, ())
            cache = KVCache.from_specs(cache_specs(self.cfg, b, size), self.cfg.num_layers, self.cache_dtype,
                                       lambda spec, dt: jax.ShapeDtypeStruct(spec.shape, dt, sharding=self._sharding(
                                           spec.axes, spec.shape)))
            rows0 = np.zeros(b, np.int32)
            for n in max_new:
                args = self._decode_args(cache, self._put(rows0, _ROW_AXES), rows0.astype(bool), self._unused_keys(b),
                                         rows0, np.zeros(self.cfg.vocab_size, bool), 0, GREEDY)
                jobs[self._signature("decode", (n, greedy), args)] = (self._decode(n, greedy), args, (1,))
        unique = [(sig, job) for sig, job in jobs.items() if sig not in self._exe]

        def compile_one(item):
            sig, (fn, args, donate) = item
            return sig, self._compile(fn, args, donate)

        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            for sig, exe in pool.map(compile_one, unique):
                self._exe[sig] = exe
        return len(unique)
