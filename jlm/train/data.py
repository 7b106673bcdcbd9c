"""Training batches for `jlm train`: JudgeLM JSONL -> jlm.data's grain pipeline -> this host's rows.

Every host builds the same global batch stream and keeps its own slice of rows: all hosts then
agree on each batch's (bucketed) length, and the stream is identical whatever the host count.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from jlm.data import BATCH_KEYS, ExampleConfig, train_dataset
from jlm.formats.records import read_judgelm
from jlm.train.config import TrainConfig, TrainConfigError

STEP_KEYS = (*BATCH_KEYS, "target_index")  # what a train step reads: the pipeline's batch + the loss positions


def target_index(loss_mask: np.ndarray) -> np.ndarray:
    """[B, K] int32: each row's trained positions (loss_mask > 0) in order, then -1.

    The train step computes logits at these positions only. K is the smallest of T/16, T/8, T/4,
    T/2, T (multiples of 8) that holds the row with the most targets, so a run compiles a few
    shapes per row length. Computed on the global batch, so every host agrees on K."""
    trained = np.asarray(loss_mask) > 0
    b, t = trained.shape
    need = int(trained.sum(axis=1).max(initial=0))
    sizes = sorted({min(t, max(8, -(-t // d // 8) * 8)) for d in (16, 8, 4, 2, 1)})
    k = next(c for c in sizes if c >= need)
    out = np.full((b, k), -1, np.int32)
    rows, cols = np.nonzero(trained)
    slot = np.arange(rows.size) - np.searchsorted(rows, rows)  # rank of each target within its row
    out[rows, slot] = cols
    return out


def with_target_index(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "target_index" in batch:
        return batch
    return {**batch, "target_index": target_index(batch["loss_mask"])}


class HostRows:
    """This host's rows of each global batch; iterator state passes through (resumable)."""

    def __init__(self, it, process_index: int, process_count: int):
        self.it, self.index, self.count = it, process_index, process_count

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = with_target_index(next(self.it))
        if self.count == 1:
            return batch
        rows = next(iter(batch.values())).shape[0]
        per = rows // self.count
        return {k: v[self.index * per:(self.index + 1) * per] for k, v in batch.items()}

    def get_state(self) -> Any:
        return self.it.get_state()

    def set_state(self, state: Any) -> None:
        self.it.set_state(state)


def read_train_samples(paths: Sequence[str]) -> list:
    """Judge samples of JudgeLM-format JSONL files (records with judgement "error" are dropped)."""
    if not paths:
        raise TrainConfigError("no training data: set train_data (JudgeLM-format JSONL files)")
    samples = []
    for p in paths:
        samples.extend(read_judgelm(p))
    if not samples:
        raise TrainConfigError(f"no usable samples in {', '.join(paths)}")
    return samples


def judge_batches(cfg: TrainConfig, samples: Sequence, tokenizer) -> HostRows:
    """The resumable batch iterator of a run (global batches of `global_batch` rows, sliced per host)."""
    import jax

    # with max_steps the stream may need more than `epochs` passes: make it endless
    num_epochs = None if (cfg.max_steps is not None or cfg.packing) else math.ceil(cfg.epochs)
    ds = train_dataset(samples, tokenizer, batch_size=cfg.global_batch,
                       config=ExampleConfig(max_len=cfg.seq_len, swap_prob=cfg.swap_prob, ref_prob=cfg.ref_prob,
                                            score_weight=cfg.score_weight),
                       seq_len=cfg.seq_len, seed=cfg.seed, num_epochs=num_epochs, shuffle=cfg.shuffle,
                       packing=cfg.packing)
    return HostRows(iter(ds), jax.process_index(), jax.process_count())


def check_batch(batch: dict[str, np.ndarray], vocab_size: int, packing: bool) -> None:
    """Host-side checks that would otherwise fail silently on device (JAX clamps bad gather indices)."""
    missing = [k for k in ("input_ids", "targets", "loss_mask") if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; expected keys {STEP_KEYS}")
    hi = max(int(batch["input_ids"].max()), int(batch["targets"].max()))
    if hi >= vocab_size:
        raise ValueError(f"token id {hi} >= the model's vocab_size {vocab_size}: tokenizer and model do not match")
    seg = batch.get("segment_ids")
    if not packing and seg is not None:
        # the unpacked step uses plain causal attention, exact only for one right-padded sample per row
        if seg.max() > 1 or np.any(np.diff(seg, axis=1) > 0):
            raise ValueError("batch has packed or left-padded rows but packing=False; set packing=True")
