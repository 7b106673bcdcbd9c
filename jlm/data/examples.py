"""One judge sample -> one training example, the way JudgeLM's `LazyJudgeSupervisedDataset` builds them.

    example = full_prompt + judgement + EOS,   loss on judgement + EOS only

Augmentations (spec 3.1), drawn per (seed, epoch, record index) and applied to a copy, never to the record
(JudgeLM mutates its cached records, so swaps toggle and the with-reference text sticks across epochs):
  * reference support: with probability `ref_prob` (JudgeLM's misnamed `ref_drop_ratio`, 0.5 in its
    scripts) show the reference and train on the with-reference judgement. Only samples that have both a
    reference and a with-reference judgement can; samples whose judgement was written with the reference in
    view (`judgement_needs_reference`) always show it.
  * swap: with probability `swap_prob` exchange the two answers (and ids, models, metadata, scores), the
    two numbers of the score line and "Assistant 1" <-> "Assistant 2" in the explanation. Pairs only.

Tokenization: like JudgeLM, the prompt and the full text (prompt + judgement) are tokenized separately and the
first len(prompt ids) tokens are masked; the prompt ids must be a prefix of the full ids (checked: a
tokenizer that merges across the "### Response:" / score boundary raises). Tokenizing the full text, rather
than prompt ids + judgement ids, keeps the target tokens identical to the released checkpoints' training.
EOS is appended as an id (JudgeLM appends the literal "</s>", which its slow tokenizer maps to EOS); an EOS the
tokenizer itself appends (`add_eos`) is dropped first, so there is exactly one.

Over-long examples are shortened to fit `max_len`, never cutting the score line or EOS: first both answers
(the longer one first, to a common length), then the reference, the question, and last the explanation;
in a first pass no field goes below `truncation_floor` characters (see `fit_view`). The example records
which fields were cut in `truncated`.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jlm.data.tokenizer import TokenizerLike
from jlm.formats.prompts import build_prompt
from jlm.formats.records import JudgeSample

TRUNCATABLE = ("answers", "reference", "question", "explanation")


@dataclass(frozen=True)
class ExampleConfig:
    """How samples become examples: length limit and augmentation probabilities (JudgeLM: 2048, 0.5, 0.5)."""

    max_len: int = 2048
    swap_prob: float = 0.5
    ref_prob: float = 0.5
    truncation_floor: int = 512  # characters a field keeps in the first truncation pass (see fit_view)
    # loss weight of the score line's tokens relative to the reasons' (JudgeLM: 1). Under per-sample
    # averaging the verdict's ~4 tokens carry ~2% of a sample's loss (MT-bench); this is the ablation knob.
    score_weight: float = 1.0

    def __post_init__(self):
        if self.max_len < 8:
            raise ValueError(f"ExampleConfig.max_len={self.max_len} is too small")
        for name in ("swap_prob", "ref_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"ExampleConfig.{name}={p} is not a probability")
        if not self.score_weight > 0:
            raise ValueError(f"ExampleConfig.score_weight={self.score_weight} must be positive")


def epoch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of record `index` in `epoch`: depends on nothing else."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(1, index)))


# ----------------------------------------------------------------------------------------------- swap

_ASSISTANT_12 = re.compile(r"Assistant ([12])(?!\d)")


def swap_judgement(text: str) -> str:
    """"2 8\\n... Assistant 1 ... Assistant 2" -> "8 2\\n... Assistant 2 ... Assistant 1".

    The two tokens of the score line (after JudgeLM's comma-to-space) are exchanged as written; the rest of
    the text gets "Assistant 1" <-> "Assistant 2". A score line that is not two tokens is a ValueError.
    """
    first, sep, rest = text.partition("\n")
    tokens = first.replace(",", " ").split(" ")
    if len(tokens) != 2:
        raise ValueError(f"swap_judgement: score line {first[:60]!r} is not two scores")
    swapped = _ASSISTANT_12.sub(lambda m: "Assistant " + ("2" if m.group(1) == "1" else "1"), rest)
    return f"{tokens[1]} {tokens[0]}{sep}{swapped}"


def swap_sample(sample: JudgeSample) -> JudgeSample:
    """The same pair with answers 1 and 2 exchanged, judgements and scores rewritten to match."""
    if len(sample.answers) != 2:
        raise ValueError(f"swap_sample: question_id {sample.question_id!r} has {len(sample.answers)} answers, not 2")

    def rev(t: tuple) -> tuple:
        return tuple(reversed(t))

    def label(x: int | None) -> int | None:
        return None if x is None else -x

    return sample.replace(
        answers=rev(sample.answers),
        judgement=None if sample.judgement is None else swap_judgement(sample.judgement),
        scores=None if sample.scores is None else rev(sample.scores),
        judgement_w_reference=(None if sample.judgement_w_reference is None
                               else swap_judgement(sample.judgement_w_reference)),
        scores_w_reference=None if sample.scores_w_reference is None else rev(sample.scores_w_reference),
        label=label(sample.label),
        answer_ids=rev(sample.answer_ids),
        model_ids=rev(sample.model_ids),
        answer_metadata=rev(sample.answer_metadata),
    )


# ----------------------------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class View:
    """What one example shows: prompt fields and the target judgement, after augmentation."""

    question: str
    answers: tuple[str, ...]
    reference: str | None
    judgement: str
    swapped: bool
    with_reference: bool

    @property
    def score_line(self) -> str:
        return self.judgement.partition("\n")[0]

    @property
    def explanation(self) -> str:
        return self.judgement.partition("\n")[2]

    def prompt(self) -> str:
        return build_prompt(self.question, self.answers, self.reference)

    def target(self) -> str:
        return self.judgement


def augment(sample: JudgeSample, rng: np.random.Generator, config: ExampleConfig) -> View:
    """Draw reference support and swap for one sample (two uniform draws, always both, in JudgeLM's order)."""
    if sample.judgement is None:
        raise ValueError(f"question_id {sample.question_id!r}: no judgement to train on")
    u_ref, u_swap = rng.random(2)
    can_use_ref = sample.reference is not None and sample.judgement_w_reference is not None
    with_ref = bool(sample.judgement_needs_reference or (can_use_ref and u_ref < config.ref_prob))
    swap = bool(len(sample.answers) == 2 and u_swap < config.swap_prob)
    s = swap_sample(sample) if swap else sample
    if with_ref and s.judgement_w_reference is not None:
        judgement = s.judgement_w_reference
    else:
        judgement = s.judgement  # also for judgement_needs_reference samples without a separate w/ref text
    return View(s.question, s.answers, s.reference if with_ref else None, judgement, swap, with_ref)


# ----------------------------------------------------------------------------------------------- tokenization

def make_example(
    sample: JudgeSample,
    tokenizer: TokenizerLike,
    rng: np.random.Generator | int,
    config: ExampleConfig = ExampleConfig(),
) -> dict[str, Any]:
    """Training example {"input_ids", "loss_mask"} (lists; loss_mask is 1 on judgement + EOS, `score_weight`
    on the score line's tokens, 0 on the prompt) plus bookkeeping:
    "prompt_len", "truncated" (tuple of TRUNCATABLE fields that were cut), "swapped", "with_reference".

    rng: a numpy Generator (see `epoch_rng`) or an int seed for one.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    view = augment(sample, rng, config)
    ids = _encode(tokenizer, view.prompt() + view.target()) + [tokenizer.eos_id]
    truncated: tuple[str, ...] = ()
    if len(ids) > config.max_len:
        view, truncated = fit_view(view, tokenizer, config.max_len, sample.question_id,
                                   floor=config.truncation_floor)
        ids = _encode(tokenizer, view.prompt() + view.target()) + [tokenizer.eos_id]
    prompt_ids = _encode(tokenizer, view.prompt())
    if ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError(f"question_id {sample.question_id!r}: prompt tokens are not a prefix of prompt + target "
                         "tokens; the loss mask would be wrong with this tokenizer")
    if len(ids) > config.max_len:  # fit_view guarantees this; kept as a hard check, not an assert
        raise AssertionError(f"question_id {sample.question_id!r}: {len(ids)} tokens after fitting")
    mask = [0.0] * len(prompt_ids) + [1.0] * (len(ids) - len(prompt_ids))
    if config.score_weight != 1.0:
        head = _encode(tokenizer, view.prompt() + view.score_line)
        if ids[:len(head)] != head:
            raise ValueError(f"question_id {sample.question_id!r}: the score line's tokens are not a prefix of the "
                             "judgement's with this tokenizer; score_weight cannot mark them")
        # the token that ends the line (newline, or EOS) is weighted too: with the digits alone
        # weighted, a CPU pilot learned to run on ("10 10 10 10 ...") in 43% of its score lines
        end = len(head) + 1
        mask[len(prompt_ids):end] = [config.score_weight] * (end - len(prompt_ids))
    return {
        "input_ids": ids,
        "loss_mask": mask,
        "prompt_len": len(prompt_ids),
        "truncated": truncated,
        "swapped": view.swapped,
        "with_reference": view.with_reference,
    }


def _encode(tokenizer: TokenizerLike, text: str) -> list[int]:
    """Ids with BOS as the tokenizer says, without the EOS that some tokenizers append (`add_eos`)."""
    ids = tokenizer.encode(text)
    if getattr(tokenizer, "add_eos", False) and ids and ids[-1] == tokenizer.eos_id:
        ids.pop()
    return ids


def _length(view: View, tokenizer: TokenizerLike) -> int:
    return len(_encode(tokenizer, view.prompt() + view.target())) + 1  # + EOS


def _cut(view: View, field: str, cap: int) -> View:
    """`view` with `field` limited to `cap` characters (for answers: each answer)."""
    if field == "answers":
        return View(view.question, tuple(a[:cap] for a in view.answers), view.reference, view.judgement,
                    view.swapped, view.with_reference)
    if field == "reference":
        return View(view.question, view.answers, view.reference[:cap], view.judgement, view.swapped,
                    view.with_reference)
    if field == "question":
        return View(view.question[:cap], view.answers, view.reference, view.judgement, view.swapped,
                    view.with_reference)
    head, sep, rest = view.judgement.partition("\n")
    return View(view.question, view.answers, view.reference, head + sep + rest[:cap], view.swapped,
                view.with_reference)


def _field_size(view: View, field: str) -> int:
    if field == "answers":
        return max(len(a) for a in view.answers)
    if field == "reference":
        return len(view.reference or "")
    if field == "question":
        return len(view.question)
    return len(view.explanation)


def _removed(view: View, field: str, cap: int) -> int:
    """Characters a cap removes from the field (for answers: from every answer longer than the cap)."""
    if field == "answers":
        return sum(max(0, len(a) - cap) for a in view.answers)
    return max(0, _field_size(view, field) - cap)


def fit_view(view: View, tokenizer: TokenizerLike, max_len: int, qid: Any = None, *,
             floor: int = 512, slack: int = 8) -> tuple[View, tuple[str, ...]]:
    """Shorten the view's fields until prompt + target + EOS fit in max_len tokens.

    Two passes over TRUNCATABLE (answers, reference, question, explanation): the first cuts each field no
    shorter than `floor` characters, the second as far as needed; so the answers go first, but are not
    emptied while the reference or the explanation could still give. Each cut is found by interpolating the
    token count against the characters removed (about linear, also across the kink of cutting two answers
    to a common cap), stopping once at most `slack` tokens of room are left.
    Returns the view and the names of the fields that were cut, in the order they were first cut.
    """
    length = _length(view, tokenizer)
    if length <= max_len:
        return view, ()
    truncated: list[str] = []
    for pass_floor in (floor, 0):
        for field in TRUNCATABLE:
            size = _field_size(view, field)
            if size <= pass_floor:
                continue
            if field not in truncated:
                truncated.append(field)
            cap = _fit_cap(view, field, size, length, tokenizer, max_len, slack, pass_floor)
            view = _cut(view, field, pass_floor if cap is None else cap)
            if cap is not None:
                return view, tuple(truncated)
            length = _length(view, tokenizer)
    raise ValueError(f"question_id {qid!r}: the prompt skeleton and score line alone exceed max_len={max_len}")


def _fit_cap(view: View, field: str, size: int, size_len: int, tokenizer: TokenizerLike, max_len: int,
             slack: int, floor: int = 0) -> int | None:
    """A cap c in [floor, size) that fits, within `slack` tokens of the limit (or the largest that fits);
    None if even cap `floor` does not fit. Regula falsi (Illinois) on (characters removed -> tokens)."""
    def length(c: int) -> int:
        return _length(_cut(view, field, c), tokenizer)

    def cap_removing(r: float) -> int:
        """Largest cap that removes at least r characters (binary search on plain arithmetic)."""
        lo, hi = floor, size
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _removed(view, field, mid) >= r:
                lo = mid
            else:
                hi = mid - 1
        return lo

    lo, lo_len = floor, length(floor)  # lo: fits; hi: too long
    if lo_len > max_len:
        return None
    hi, hi_len = size, size_len
    moved = 0  # which end moved last: 1 = lo, -1 = hi
    while hi - lo > 1 and lo_len < max_len - slack:
        room, excess = float(max_len - lo_len), float(hi_len - max_len)
        if moved == 1:
            excess /= 2  # Illinois: hi stayed put, so pull the next guess toward it
        elif moved == -1:
            room /= 2
        r_lo, r_hi = _removed(view, field, lo), _removed(view, field, hi)
        c = cap_removing(r_hi + (r_lo - r_hi) * excess / (room + excess))
        c = min(max(c, lo + 1), hi - 1)
        c_len = length(c)
        if c_len <= max_len:
            lo, lo_len, moved = c, c_len, 1
        else:
            hi, hi_len, moved = c, c_len, -1
    return lo


def epoch_summary(
    samples: Sequence[JudgeSample],
    tokenizer: TokenizerLike,
    config: ExampleConfig = ExampleConfig(),
    *,
    seed: int = 0,
    epoch: int = 0,
) -> dict[str, Any]:
    """Counts for one epoch's draws: examples, swapped, with_reference, truncated_<field>, token lengths.

    The same draws the pipeline makes (same seed and epoch), computed in one pass; for logging what the
    truncation did to a data set before training.
    """
    counts: Counter[str] = Counter()
    lengths, target_lengths = [], []
    for i, s in enumerate(samples):
        ex = make_example(s, tokenizer, epoch_rng(seed, epoch, i), config)
        counts["examples"] += 1
        counts["swapped"] += ex["swapped"]
        counts["with_reference"] += ex["with_reference"]
        counts["truncated"] += bool(ex["truncated"])
        counts.update(f"truncated_{f}" for f in ex["truncated"])
        lengths.append(len(ex["input_ids"]))
        target_lengths.append(sum(w > 0 for w in ex["loss_mask"]))
    out: dict[str, Any] = {k: counts.get(k, 0) for k in
                           ("examples", "swapped", "with_reference", "truncated",
                            *(f"truncated_{f}" for f in TRUNCATABLE))}
    if lengths:
        out.update(tokens_mean=float(np.mean(lengths)), tokens_max=int(np.max(lengths)),
                   target_tokens_mean=float(np.mean(target_lengths)))
    return out
