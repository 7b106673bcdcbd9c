"""Which prompts share a batch: sort by length, cut where a cost model of device time says so (numpy
only; see the package docstring, step 1)."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from jlm.model.config import LlamaConfig

# The device's matmul rate over its memory bandwidth, in FLOP per byte: the planner's one hardware
# constant. It says how many prefilled token-rows one byte read is worth. Accelerators: 800 TFLOP/s
# over 3.0 TB/s, both measured on the H100 of docs/benchmarks.md (an A100 or a TPU v5e is within 2x
# of it). CPUs: 294 GFLOP/s of prefill over 36 GB/s for a decode step's weight read (538 MB of fp32
# weights in 15 ms) is 8, measured on the 2-core EPYC of docs/benchmarks.md: a CPU reads its weights
# far more cheaply relative to its FLOPs, so there a smaller batch pays off sooner than padding does.
FLOP_PER_BYTE = 800 / 3.0
CPU_FLOP_PER_BYTE = 8.0
# What one more batch costs a CPU run besides its device time, in FLOPs of prefill: its program
# shapes are traced, loaded from the compilation cache (or compiled) and set up on their first
# call. Charged as 1 s at the CPU's 294 GFLOP/s; accelerators: nothing (their batches are few and
# large anyway). Measured on the 24-prompt benchmark (docs/benchmarks.md), plans of 6 / 4 / 3
# batches: warm `jlm judge` 31.1 / 27.3 / 28.3 s, cold 38.8 / 34.5 / 33.1 s, judging alone 13.6 /
# 15.2 / 18.0 s; this charge plans the 4.
CPU_BATCH_FLOPS = 1.0 * 294e9
# Tokens a CPU prefill call takes at once (the engine runs a bigger batch in row groups of about
# this many tokens). Per-prompt prefill time on the same EPYC, SmolLM2-135M fp32, against the best:
# 2,048 tokens a call 1.00 (2 x 1,024 or 4 x 512), 4,096 1.11, 8,192 1.25, 8 x 2,816 1.45.
CPU_PREFILL_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class Planner:
    """Cuts prompts into device batches (the package docstring's point 1), with no model needed.

    Prompts are sorted longest first and cut into runs; a run of k prompts is prefilled as
    `batch_bucket(k)` rows left-padded to `bucket(longest)` tokens. The cuts minimise this model of a
    batch's device time, in token-rows (prefilling one token of one row, 2 x parameters FLOPs):

        rows x length                                   prefill, padding included (compute bound)
        + steps x weight_rows                           every decode step reads all the weights ...
        + steps x rows x (length + steps) x slot_rows   ... and every cache slot of every row
        + batch_rows                                    what a batch costs besides (CPU: its programs)

    where steps = the slots reserved after the prompts (the tokens to decode). weight_rows and
    slot_rows are bytes read x FLOP_PER_BYTE / (FLOPs of a token-row), from the model config
    (`for_model`): 267 and 0.010 for a bf16 7B model on one device. A dynamic programme over the
    sorted lengths finds the cheapest cuts exactly, in O(n x batch_size). A smaller batch costs a
    whole batch's decode steps, so it only appears where it saves more padding than that, which also
    keeps the number of (rows, length) programs small.
    """
    batch_size: int
    bucket_step: int = 64
    dp: int = 1  # data-parallel devices: row counts stay multiples of it
    weight_rows: float = 0.0  # one read of the weights, in token-rows
    slot_rows: float = 0.0  # one read of one row's cache slot, in token-rows
    batch_rows: float = 0.0  # a batch's fixed cost besides, in token-rows

    def __post_init__(self):
        if self.bucket_step < 1:
            raise ValueError(f"bucket_step must be >= 1, got {self.bucket_step}")
        if self.batch_size < self.dp or self.batch_size % self.dp:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of the {self.dp} data-parallel devices")

    @classmethod
    def for_model(cls, cfg: LlamaConfig, *, batch_size: int, bucket_step: int = 64, dp: int = 1,
                  param_bytes: float = 2, cache_bytes: float = 2, flop_per_byte: float = FLOP_PER_BYTE,
                  batch_flops: float = 0.0) -> "Planner":
        """The cost model of `cfg` with weights of `param_bytes` and a KV cache of `cache_bytes` per value,
        on a device of `flop_per_byte` (FLOP_PER_BYTE, or CPU_FLOP_PER_BYTE) where a batch costs
        `batch_flops` besides (CPU_BATCH_FLOPS)."""
        row_flops = 2 * cfg.num_params
        slot_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * cache_bytes  # K and V
        # a batch's rows are split over the dp devices, but each of them reads all the weights
        return cls(batch_size, bucket_step, dp,
                   weight_rows=dp * cfg.num_params * param_bytes * flop_per_byte / row_flops,
                   slot_rows=slot_bytes * flop_per_byte / row_flops, batch_rows=batch_flops / row_flops)

    def bucket(self, n: int) -> int:
        """Padded prefill length for a prompt of n tokens (the last one is fed by decoding)."""
        return max(self.bucket_step, math.ceil(max(n - 1, 1) / self.bucket_step) * self.bucket_step)

    def batch_bucket(self, n: int) -> int:
        """Rows of the device batch for n prompts: batch_size, or a power-of-two fraction of it."""
        b = self.batch_size
        while b // 2 >= n and (b // 2) % self.dp == 0 and b // 2 >= self.dp:
            b //= 2
        return b

    def cost(self, rows, length, reserve: int):
        """The model's device time of a batch, in token-rows (works on numpy arrays too)."""
        steps = max(int(reserve), 1)
        return rows * length + steps * (self.weight_rows + rows * (length + steps) * self.slot_rows) + self.batch_rows

    def plan(self, lengths: Sequence[int], reserve: int = 1) -> list[np.ndarray]:
        """Indices of the prompts in each batch, longest first, for prompts that will each keep
        `reserve` cache slots (what `Engine.prefill` is given: the tokens to decode)."""
        lengths = np.asarray(lengths, np.int64)
        if len(lengths) and lengths.min() < 1:
            raise ValueError("every prompt needs at least one token")
        order = np.argsort(-lengths, kind="stable")
        n, step = len(order), self.bucket_step
        padded = np.maximum(step, -(-np.maximum(lengths[order] - 1, 1) // step) * step)  # bucket() of each
        rows = np.array([0] + [self.batch_bucket(k) for k in range(1, self.batch_size + 1)])
        best = np.zeros(n + 1)  # best[j]: the cheapest plan for the j longest prompts ...
        start = np.zeros(n + 1, np.int64)  # ... whose last batch is sorted[start[j]:j]
        for j in range(1, n + 1):
            k = np.arange(min(self.batch_size, j), 0, -1)  # largest first: a tie keeps fewer batches
            total = best[j - k] + self.cost(rows[k], padded[j - k], reserve)
            m = int(np.argmin(total))
            best[j], start[j] = total[m], j - k[m]
        cuts = [n]
        while cuts[-1] > 0:
            cuts.append(int(start[cuts[-1]]))
        cuts.reverse()
        return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def stats(self, lengths: Sequence[int], batches: Sequence[Sequence[int]], reserve: int = 1) -> dict:
        """A plan's padding (share of the prefilled token-rows that are not prompt tokens, filler rows
        included), batches, distinct (rows, length) program shapes, and cost in token-rows."""
        shapes = [(self.batch_bucket(len(b)), self.bucket(max(lengths[r] for r in b))) for b in batches]
        cells = sum(r * n for r, n in shapes)
        real = sum(int(lengths[r]) for b in batches for r in b)
        return dict(padding=1 - real / max(cells, 1), batches=len(batches), shapes=len(set(shapes)),
                    cost=float(sum(self.cost(r, n, reserve) for r, n in shapes)))
