"""The training input pipeline on grain: deterministic, resumable, padded-with-buckets or packed batches.

Stages:
  1. `EpochExamples` (MapDataset): element i is record perm_e[i % N] of epoch e = i // N, where perm_e is
     a seeded per-epoch shuffle, turned into an example with augmentation drawn from (seed, e, record).
     Random access, so grain's iterator state (the next index) is all it takes to resume.
  2a. `BucketedBatches` (MapDataset, padded mode): consecutive windows of `window` batches' worth of examples
     are sorted by length and cut into batches (similar lengths together, less padding), the window's batch
     order is shuffled from (seed, window), and each batch is right-padded to the smallest bucket length
     that holds it (few distinct shapes for jit). Also random access.
  2b. packed mode: grain's `FirstFitPackIterDataset` packs examples into rows of `seq_len` tokens; its
     iterator state covers the packing buffer.

Batches are dicts of numpy arrays, all [B, T]:
  input_ids int32, targets int32 (next token of the same example; 0 where none), loss_mask float32 (1 where
  targets[t] is a judgement/EOS token), segment_ids int32 (0 = padding, 1..k = packed example in the row;
  1 for every real token when not packed), positions int32 (position within the example).
Right padding with zeros.
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import grain
import grain.experimental as grain_exp
import numpy as np

from jlm.data.examples import ExampleConfig, epoch_rng, make_example
from jlm.data.tokenizer import TokenizerLike
from jlm.formats.records import JudgeSample

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")


def example_arrays(example: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-example arrays with next-token targets: targets[t] = ids[t+1], loss_mask[t] = mask[t+1]."""
    ids = np.asarray(example["input_ids"], dtype=np.int32)
    mask = np.asarray(example["loss_mask"], dtype=np.float32)
    targets = np.zeros_like(ids)
    targets[:-1] = ids[1:]
    shifted = np.zeros_like(mask)
    shifted[:-1] = mask[1:]
    return {"input_ids": ids, "targets": targets, "loss_mask": shifted}


def shuffle_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The record order of `epoch` (a stream separate from the augmentation draws)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(0,)))
    return rng.permutation(n)


class EpochExamples(grain.MapDataset):
    """Element i: example of record perm_e[i % N] in epoch e = i // N (`num_epochs=None`: endless)."""

    def __init__(
        self,
        samples: Sequence[JudgeSample],
        tokenizer: TokenizerLike,
        config: ExampleConfig = ExampleConfig(),
        *,
        seed: int = 0,
        num_epochs: int | None = None,
        shuffle: bool = True,
    ):
        super().__init__()
        if not samples:
            raise ValueError("EpochExamples: no samples")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"EpochExamples: num_epochs={num_epochs}")
        self.samples, self.tokenizer, self.config = list(samples), tokenizer, config
        self.seed, self.num_epochs, self.shuffle = seed, num_epochs, shuffle
        self._perm: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize if self.num_epochs is None else self.num_epochs * len(self.samples)

    def __getstate__(self):  # picklable for grain's worker processes: locks and caches are rebuilt
        state = self.__dict__.copy()
        state["_lock"], state["_perm"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"EpochExamples(n={len(self.samples)}, epochs={self.num_epochs}, seed={self.seed})"

    def record_index(self, index: int) -> tuple[int, int]:
        """(epoch, record index) of element `index`."""
        epoch, pos = divmod(index, len(self.samples))
        if not self.shuffle:
            return epoch, pos
        with self._lock:
            if self._perm is None or self._perm[0] != epoch:
                self._perm = (epoch, shuffle_permutation(len(self.samples), self.seed, epoch))
            return epoch, int(self._perm[1][pos])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if not 0 <= index < len(self):
            raise IndexError(f"EpochExamples: index {index} out of range")
        epoch, rec = self.record_index(index)
        ex = make_example(self.samples[rec], self.tokenizer, epoch_rng(self.seed, epoch, rec), self.config)
        return example_arrays(ex)


def default_buckets(seq_len: int) -> tuple[int, ...]:
    """Eight row lengths, seq_len/8, 2 seq_len/8, ..., seq_len (multiples of 8): a judge sample is
    ~1,200 tokens on average and varies widely, so coarser buckets would spend a third of the step
    on padding, while each bucket is one compiled step."""
    return tuple(sorted({max(8, -(-seq_len * k // 8 // 8) * 8) for k in range(1, 9)}))


def pad_batch(examples: Sequence[dict[str, np.ndarray]], length: int) -> dict[str, np.ndarray]:
    """Right-pad per-example arrays (see `example_arrays`) into a [B, length] batch."""
    b = len(examples)
    out = {
        "input_ids": np.zeros((b, length), np.int32),
        "targets": np.zeros((b, length), np.int32),
        "loss_mask": np.zeros((b, length), np.float32),
        "segment_ids": np.zeros((b, length), np.int32),
        "positions": np.zeros((b, length), np.int32),
    }
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        if n > length:
            raise ValueError(f"pad_batch: example of {n} tokens does not fit length {length}")
        for k in ("input_ids", "targets", "loss_mask"):
            out[k][row, :n] = ex[k]
        out["segment_ids"][row, :n] = 1
        out["positions"][row, :n] = np.arange(n)
    return out


class BucketedBatches(grain.MapDataset):
    """Padded batches of `batch_size`, length-sorted within windows of `window` batches (remainder dropped)."""

    def __init__(
        self,
        parent: grain.MapDataset,
        batch_size: int,
        *,
        buckets: Sequence[int],
        window: int = 32,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__(parent)
        if batch_size <= 0 or window <= 0:
            raise ValueError(f"BucketedBatches: batch_size={batch_size}, window={window}")
        self.batch_size, self.window, self.seed, self.shuffle = batch_size, window, seed, shuffle
        self.buckets = tuple(sorted(buckets))
        self._cache: OrderedDict[int, list[list[dict[str, np.ndarray]]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        n = len(self._parent)
        return n if n >= sys.maxsize else n // self.batch_size

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"], state["_cache"] = None, OrderedDict()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"BucketedBatches(batch_size={self.batch_size}, window={self.window}, buckets={self.buckets})"

    def _window_batches(self, w: int) -> list[list[dict[str, np.ndarray]]]:
        # One lock around the whole computation: prefetch threads asking for the same window wait for it
        # instead of tokenizing it again.
        with self._lock:
            if w not in self._cache:
                self._cache[w] = self._compute_window(w)
                while len(self._cache) > 2:
                    self._cache.popitem(last=False)
            return self._cache[w]

    def _compute_window(self, w: int) -> list[list[dict[str, np.ndarray]]]:
        size = self.window * self.batch_size
        start = w * size
        stop = min(start + size, len(self._parent))
        examples = [self._parent[i] for i in range(start, stop)]
        # stable sort by length: equal lengths keep stream order, so the result is deterministic
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        n_batches = len(examples) // self.batch_size
        batches = [[examples[i] for i in order[k * self.batch_size:(k + 1) * self.batch_size]]
                   for k in range(n_batches)]
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, w], spawn_key=(2,)))
            batches = [batches[k] for k in rng.permutation(n_batches)]
        return batches

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if not 0 <= index < len(self):
            raise IndexError(f"BucketedBatches: index {index} out of range")
        w, k = divmod(index, self.window)
        batch = self._window_batches(w)[k]
        longest = max(len(ex["input_ids"]) for ex in batch)
        length = next((b for b in self.buckets if b >= longest), None)
        if length is None:
            raise ValueError(f"BucketedBatches: an example of {longest} tokens exceeds the largest bucket "
                             f"{self.buckets[-1]}")
        return pad_batch(batch, length)


def _packed_to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "input_ids": packed["input_ids"].astype(np.int32),
        "targets": packed["targets"].astype(np.int32),
        "loss_mask": packed["loss_mask"].astype(np.float32),
        "segment_ids": packed["input_ids_segment_ids"].astype(np.int32),
        "positions": packed["input_ids_positions"].astype(np.int32),
    }


def train_dataset(
    samples: Sequence[JudgeSample],
    tokenizer: TokenizerLike,
    *,
    batch_size: int,
    config: ExampleConfig = ExampleConfig(),
    seq_len: int | None = None,
    seed: int = 0,
    num_epochs: int | None = None,
    shuffle: bool = True,
    packing: bool = False,
    buckets: Sequence[int] | None = None,
    window: int | None = None,
    num_packing_bins: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """The training batches as a grain IterDataset; resume with `it.get_state()` / `it.set_state(state)`.

    seq_len: row length, default config.max_len (examples are fitted to config.max_len <= seq_len).
    Padded mode (packing=False): batches padded to the smallest of `buckets` (default `default_buckets`)
    that holds their longest example, length-sorted within windows of `window` batches (default: about
    512 examples; a window is tokenized at once, so larger ones sort better but stall longer); the
    incomplete last batch of a finite run is dropped.
    Packed mode: every row is seq_len long and holds whole examples (first-fit over `num_packing_bins`,
    default batch_size, rows); the last rows of a finite run may be partial, an incomplete batch is dropped.
    """
    seq_len = config.max_len if seq_len is None else seq_len
    if config.max_len > seq_len:
        raise ValueError(f"train_dataset: config.max_len={config.max_len} exceeds seq_len={seq_len}")
    examples = EpochExamples(samples, tokenizer, config, seed=seed, num_epochs=num_epochs, shuffle=shuffle)
    read_options = read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    if not packing:
        buckets = default_buckets(seq_len) if buckets is None else tuple(buckets)
        if max(buckets) < config.max_len:
            raise ValueError(f"train_dataset: largest bucket {max(buckets)} < config.max_len={config.max_len}")
        if window is None:
            window = max(2, -(-512 // batch_size))
        batches = BucketedBatches(examples, batch_size, buckets=buckets, window=window, seed=seed,
                                  shuffle=shuffle)
        return batches.to_iter_dataset(read_options)
    packed = grain_exp.FirstFitPackIterDataset(
        examples.to_iter_dataset(read_options),
        length_struct={"input_ids": seq_len, "targets": seq_len, "loss_mask": seq_len},
        num_packing_bins=num_packing_bins or batch_size,
        seed=seed,
        shuffle_bins=shuffle,
    )
    return packed.batch(batch_size, drop_remainder=True).map(_packed_to_batch)
