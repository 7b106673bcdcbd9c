"""`Judge`: JudgeLM-style judging of answer pairs (and single answers, and N answers) on the engine.

    judge = jlm.Judge.load("smollm2")                      # or a JudgeLM / fine-tuned checkpoint
    results = judge.score(samples)                         # score lines only (JudgeLM's fast eval)
    results = judge.score(samples, swap=True)              # both orders, one debiased verdict
    results = judge.score(samples, reasons=lambda r: r.verdict == 0)   # explain only the ties
    grades = judge.grade([(question, reference_answer, answer), ...])   # single-answer, 1..10

Every result carries the generated text (`text`, JudgeLM's `pred_text`), the parsed `scores`, the
`verdict` (1: answer 1 better, 0: tie or unparseable, -1: answer 2 better; JudgeLM's T = 0 rule)
and, unless turned off, the model's score `distribution` (distributions.py). Results come back in
input order; `on_result` sees each one as soon as it is complete (the CLI appends it to a file).

Reasons on demand: the score line is decoded first (stopping at its newline); rows whose reasons
are wanted then continue from their kept cache until EOS, in the same batch, without running the
prompt again. `reasons` may be True, False, or a predicate on a row's score-line judgement. A row
that wants no reasons is delivered (`on_result`) as soon as its score line is read.

The score line may take `score_budget(score_tokens, n)` tokens for n answers; a line cut at that
budget (no newline or EOS yet) never parses as scores. A prompt longer than the model's context
(with room for what is generated) is handled by `on_overflow`: "truncate" (default) cuts the
answers to a common length until it fits, as training does (the question and the score line are
never cut; `input_truncated` holds the tokens removed from each answer), "error" raises
`PromptTooLong`, "skip" leaves the item unjudged (its result has `error` set, and `on_result`
does not see it).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jlm.checkpoint.paths import base_checkpoint
from jlm.formats.prompts import APPENDIX, APPENDIX_SINGLE, build_prompt
from jlm.formats.records import Item
from jlm.formats.scores import parse_scores, win_label
from jlm.infer.distributions import ScoreDistribution, ScoreTree, candidate_tokens, score_tree
from jlm.infer.engine import Engine, default_mesh
from jlm.infer.sampling import GREEDY, Sampling
from jlm.model.load import load_model
from jlm.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The judge's output for one input item (see the module docstring).

    text: the generated judgement, JudgeLM's `pred_text`: the score line alone, or the score line
        and the reasons when they were asked for. In "single" mode it starts after the forced
        "10" (e.g. "7"), as JudgeLM's single-answer script stores it.
    scores: the parsed numbers (2 for a pair, 1 when grading, N for N answers), or None when the
        first line does not parse (JudgeLM then counts a tie). With swap=True: the mean of both
        orders, in the original order.
    verdict: pairs only: 1 / 0 / -1. ranking: N answers: answer indices (0-based), best first.
    reasons: the text after the score line, when asked for.
    distribution: P(scores), pairs and grading only, when asked for.
    swapped: with swap=True, the judgement of the reversed order (its own scores, in that order).
    original: with swap=True, the judgement of the original order alone (its own scores and
        distribution); `scores`, `verdict` and `distribution` above combine it with `swapped`.
    finished: False when generation stopped at its token cap (a score line cut there is not parsed).
    error: why the item was not judged (its prompt does not fit even with empty answers, or it was
        skipped); such an item has no verdict (None, not a tie).
    input_truncated: tokens removed from each answer (original order) to fit the context, or None.
    """
    index: int
    question_id: Any
    mode: str
    text: str
    scores: tuple[float, ...] | None
    verdict: int | None = None
    ranking: tuple[int, ...] | None = None
    reasons: str | None = None
    distribution: ScoreDistribution | None = None
    swapped: "Judgement | None" = None
    original: "Judgement | None" = None
    finished: bool = True
    error: str | None = None
    input_truncated: tuple[int, ...] | None = None


class PromptTooLong(ValueError):
    """on_overflow="error": item `index` does not fit the model's context."""

    def __init__(self, index: int, question_id: Any, message: str):
        self.index, self.question_id = index, question_id
        super().__init__(message)


OVERFLOW = ("truncate", "error", "skip")


def score_budget(score_tokens: int, n_answers: int) -> int:
    """Tokens the score line of an n-answer judgement may take: `score_tokens` per two answers
    (16 fit "10.5 10.5\n" in a byte tokenizer), never less than `score_tokens`."""
    return -(-score_tokens * max(n_answers, 2) // 2)


def as_item(sample: Any, reference: str | None = None) -> Item:
    """A JudgeSample, a JudgeLM record (dict with `question_body`, `answerK_body`), an `Item`, or a
    (question, answer1, answer2, ...) sequence."""
    if isinstance(sample, Item):
        return sample if reference is None else dataclasses.replace(sample, reference=reference)
    if hasattr(sample, "question") and hasattr(sample, "answers"):  # formats.records.JudgeSample
        return Item(sample.question, tuple(sample.answers), reference, getattr(sample, "question_id", None))
    if isinstance(sample, Mapping):
        answers, k = [], 1
        while f"answer{k}_body" in sample:
            answers.append(sample[f"answer{k}_body"])
            k += 1
        if "question_body" not in sample or len(answers) < 2:
            raise ValueError("a judge record needs 'question_body' and at least 'answer1_body', 'answer2_body'")
        return Item(sample["question_body"], tuple(answers), reference, sample.get("question_id"))
    if isinstance(sample, (tuple, list)) and len(sample) >= 3 and all(isinstance(x, str) for x in sample):
        return Item(sample[0], tuple(sample[1:]), reference)
    raise TypeError(f"cannot judge a {type(sample).__name__}: pass JudgeSamples, JudgeLM dicts, Items or "
                    "(question, answer1, answer2, ...) tuples")


@dataclasses.dataclass
class _Job:
    """One prompt to run: an item in one answer order."""
    item: int
    swapped: bool
    ids: list[int]
    result: Judgement | None = None


class _Results:
    """Judgements in input order as their jobs finish: an item is combined (both answer orders) and
    delivered to `on_result` once all its jobs are done."""

    def __init__(self, items: list[Item], modes: list[str], on_result):
        self.items, self.modes, self.on_result = items, modes, on_result
        self.results: list[Judgement | None] = [None] * len(items)
        self.jobs: dict[int, list[_Job]] = {}  # item -> its jobs
        self.cuts: dict[int, tuple[int, ...]] = {}  # item -> tokens removed from each answer

    def fail(self, i: int, why: str, deliver: bool) -> None:
        it = self.items[i]
        self.results[i] = Judgement(index=i, question_id=it.question_id, mode=self.modes[i], text="", scores=None,
                                    finished=False, error=why)
        if deliver and self.on_result is not None:
            self.on_result(self.results[i])

    def done(self, job: _Job, result: Judgement) -> None:
        job.result = result
        sibs = self.jobs[job.item]
        if any(s.result is None for s in sibs):
            return
        res = Judge._combine(job.item, self.items[job.item], self.modes[job.item], sibs)
        if job.item in self.cuts:
            res = dataclasses.replace(res, input_truncated=self.cuts[job.item])
        self.results[job.item] = res
        if self.on_result is not None:
            self.on_result(res)


def _default_dtype():
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


class Judge:
    """A judge model, its tokenizer and a decoding engine.

    max_new_tokens: cap on the reasons' tokens (JudgeLM allows 2048; explanations are ~100-300).
    score_tokens: cap on a pair's score line's tokens ("10 10" is 6 LLaMA tokens); N answers get
        N / 2 times as many (`score_budget`).
    cache_dtype: the KV cache's dtype (default: the compute dtype); "int8" halves what each decode
        step reads, at a small cost in exactness (docs/benchmarks.md).
    """

    def __init__(self, model, tokenizer, *, mesh: jax.sharding.Mesh | None = None, batch_size: int = 16,
                 bucket_step: int = 64, max_new_tokens: int = 512, score_tokens: int = 16, name: str = "judge",
                 cache_dtype=None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.cfg = model.cfg
        self.engine = Engine(model, tokenizer, mesh=mesh, batch_size=batch_size, bucket_step=bucket_step,
                             cache_dtype=cache_dtype)
        self.max_new_tokens, self.score_tokens = max_new_tokens, score_tokens
        self._trees: dict[str, ScoreTree] = {}
        self._checked: set[str] = set()

    @classmethod
    def load(cls, path: str | os.PathLike = "smollm2", *, base: str | os.PathLike | None = None, dtype=None,
             tensor_parallel: int = 1, attn_impl: str = "xla", **kw) -> "Judge":
        """Load a checkpoint (HF directory, .safetensors, .gguf, "smollm2", or a PEFT LoRA adapter
        directory: its base model with the adapter merged) and its tokenizer.

        base: for an adapter directory, the base model instead of the one its config names.
        dtype: compute and weight dtype (default float32 on CPU, bfloat16 on accelerators).
        tensor_parallel: shard the model over this many local devices (heads / MLP); the batch is
            split over the rest (data parallel).
        """
        mesh = kw.pop("mesh", None) or default_mesh(tensor=tensor_parallel)
        dtype = _default_dtype() if dtype is None else dtype
        model, _ = load_model(path, base=base, dtype=dtype, mesh=mesh, attn_impl=attn_impl)
        tokenizer = load_tokenizer(base_checkpoint(path, base)[0])  # an adapter's tokenizer is its base's
        return cls(model, tokenizer, mesh=mesh, name=kw.pop("name", str(path)), **kw)

    # ------------------------------------------------------------------------------ prompts
    def _tree(self, mode: str) -> ScoreTree:
        if mode not in self._trees:
            self._trees[mode] = score_tree(self.tokenizer, self.cfg.vocab_size, mode, (self.cfg.eos_token_id,))
        return self._trees[mode]

    def _check_boundary(self, mode: str, prompt: str) -> None:
        """The candidate tokens were made after a short context; check once on a real prompt that
        the tokenizer splits prompt + score line the same way."""
        if mode in self._checked:
            return
        text = "8 3" if mode == "pair" else " 7"
        context = APPENDIX if mode == "pair" else APPENDIX_SINGLE
        want = self.tokenizer.encode(prompt) + candidate_tokens(self.tokenizer, context, text)
        if self.tokenizer.encode(prompt + text) != want:
            raise ValueError(f"the tokenizer merges the prompt's end with the score line ({mode} mode); "
                             "score distributions would be wrong, pass distributions=False")
        self._checked.add(mode)

    # ------------------------------------------------------------------------------ judging
    def score(self, samples: Sequence[Any], *, reference: Sequence[str | None] | str | None = None,
              reasons: bool | Callable[[Judgement], bool] = False, swap: bool = False,
              distributions: bool = True, mode: str | None = None, sampling: Sampling = GREEDY,
              on_result: Callable[[Judgement], None] | None = None,
              on_overflow: str = "truncate") -> list[Judgement]:
        """Judge every sample; results in input order.

        reference: None (no reference), "samples" (each sample's own reference, if any), or one
            reference text (or None) per sample.
        reasons: False, True, or a predicate on the score-line judgement of one answer order.
        swap: also judge with the answers reversed (pairs only) and combine both orders.
        distributions: compute P(scores) (pairs and single-answer grading).
        mode: None picks "pair" for 2 answers and "multi" for more; "single" grades answer 2 with
            answer 1 as the reference answer (see `grade`).
        on_overflow: "truncate", "error" or "skip": a prompt too long for the context (module doc).
        """
        if on_overflow not in OVERFLOW:
            raise ValueError(f"on_overflow={on_overflow!r}: use one of {', '.join(OVERFLOW)}")
        samples = list(samples)
        refs = self._references(samples, reference)
        items = [as_item(s, r) for s, r in zip(samples, refs)]
        modes = [mode or ("pair" if len(it.answers) == 2 else "multi") for it in items]
        for it, m in zip(items, modes):
            if m in ("pair", "single") and len(it.answers) != 2:
                raise ValueError(f"mode {m!r} needs 2 answers, item {it.question_id!r} has {len(it.answers)}")
        if swap and any(m != "pair" for m in modes):
            raise ValueError("swap=True is for answer pairs")

        want_reasons = reasons is not False
        line_budget = max(score_budget(self.score_tokens, len(it.answers)) for it in items) if items else 1
        reserve = line_budget + (self.max_new_tokens if want_reasons else 0)
        if distributions and any(m in ("pair", "single") for m in modes):
            reserve = max(reserve, max(self._tree(m).tree.size for m in set(modes) if m in ("pair", "single")))
        out = _Results(items, modes, on_result)
        jobs = self._jobs(out, reserve, swap, distributions, on_overflow)
        lengths = [len(j.ids) for j in jobs]
        plan = self.engine.planner.plan(lengths, reserve=reserve) if jobs else []
        if jobs:  # every prefill and decode program the plan needs, compiled at once in parallel threads
            self.engine.warmup(lengths, reserve=reserve, greedy=sampling.greedy, plan=plan,
                               max_new=[line_budget] + ([self.max_new_tokens] if want_reasons else []),
                               threads=os.cpu_count() or 1)
        for rows in plan:
            # rows are job indices, which also seed sampling: results do not depend on batching
            self._run_batch(out, jobs, rows, reserve=reserve, line_budget=line_budget, reasons=reasons,
                            distributions=distributions, sampling=sampling)
        return out.results  # type: ignore[return-value]

    def _jobs(self, out: "_Results", reserve: int, swap: bool, distributions: bool, on_overflow: str) -> list[_Job]:
        """The prompts to run, an item in each answer order; an item too long for the context is
        shortened (its cut recorded in `out`), or gets an error judgement, per `on_overflow`."""
        limit = self.cfg.max_position_embeddings
        jobs: list[_Job] = []
        for i, (it, m) in enumerate(zip(out.items, out.modes)):
            orders = (False, True) if swap else (False,)
            ids = [self._encode(it, m, rev, distributions) for rev in orders]
            if max(map(len, ids)) + reserve > limit:
                fitted = self._fit(it, m, orders, limit - reserve) if on_overflow == "truncate" else None
                if fitted is None:
                    why = (f"prompt of {max(map(len, ids))} tokens + {reserve} new ones exceeds the model's "
                           f"{limit}-token context" + (" even with the answers cut to nothing"
                                                        if on_overflow == "truncate" else ""))
                    if on_overflow == "error":
                        raise PromptTooLong(i, it.question_id, why)
                    out.fail(i, why + (" (skipped)" if on_overflow == "skip" else ""),
                             deliver=on_overflow == "truncate")
                    continue
                out.items[i], out.cuts[i] = fitted
                ids = [self._encode(out.items[i], m, rev, distributions) for rev in orders]
            out.jobs[i] = [_Job(i, rev, x) for rev, x in zip(orders, ids)]
            jobs += out.jobs[i]
        return jobs

    def _run_batch(self, out: "_Results", jobs: list[_Job], rows, *, reserve: int, line_budget: int, reasons,
                   distributions: bool, sampling: Sampling) -> None:
        """Prefill one batch of jobs, read their score distributions, decode their score lines and,
        for the rows that want them, their reasons; each finished item goes to `out`."""
        eng = self.engine
        batch_jobs = [jobs[n] for n in rows]
        batch = eng.prefill([j.ids for j in jobs], rows, reserve=reserve)
        modes = [out.modes[j.item] for j in batch_jobs]
        dists: list[ScoreDistribution | None] = [None] * len(batch_jobs)
        if distributions:
            for m in sorted(set(modes) & {"pair", "single"}):
                st = self._tree(m)
                lp = eng.tree_logprobs(batch, st.tree)
                for r, mode in enumerate(modes):
                    if mode == m:
                        dists[r] = ScoreDistribution.from_logprobs(lp[r], st.labels)
        gens = eng.decode(batch, max_new=line_budget, stop="newline", sampling=sampling)
        first = [self._judgement(j, out.items[j.item], m, g.tokens, g.finished, d)
                 for j, m, g, d in zip(batch_jobs, modes, gens, dists)]
        select = np.zeros(len(batch.rows), bool)
        if reasons is not False:
            for r, (res, g) in enumerate(zip(first, gens)):
                ended_on_eos = bool(g.tokens) and g.tokens[-1] == self.tokenizer.eos_id
                select[r] = not ended_on_eos and (reasons is True or bool(reasons(res)))
        # rows that want no reasons are done: deliver them now, not after the others' reasons
        for r in sorted(np.flatnonzero(~select[:len(batch_jobs)]), key=lambda r: batch_jobs[r].item):
            out.done(batch_jobs[r], first[r])
        if select.any():
            more = eng.decode(batch, max_new=self.max_new_tokens, stop="eos", sampling=sampling, select=select)
            for r in sorted(np.flatnonzero(select), key=lambda r: batch_jobs[r].item):
                j = batch_jobs[r]
                out.done(j, self._judgement(j, out.items[j.item], modes[r], gens[r].tokens + more[r].tokens,
                                            more[r].finished, dists[r], with_reasons=True))

    def grade(self, samples: Sequence[Any], **kw) -> list[Judgement]:
        """Single-answer grading, JudgeLM's way: each sample is (question, reference answer, answer)
        (or a record whose answer 1 is the reference); the reference answer is given a forced 10 and
        the model writes the answer's score."""
        return self.score(samples, mode="single", **kw)

    def _encode(self, it: Item, mode: str, reverse: bool, distributions: bool) -> list[int]:
        text = build_prompt(it.question, it.answers[::-1] if reverse else it.answers, it.reference, mode=mode)
        if distributions and mode in ("pair", "single"):
            self._check_boundary(mode, text)
        return self.tokenizer.encode(text)

    def _fit(self, it: Item, mode: str, orders, room: int) -> tuple[Item, tuple[int, ...]] | None:
        """`it` with its answers cut to the longest common length whose prompts (in every order) take at
        most `room` tokens, longer answers first, as training's truncation (jlm.data.examples); and the
        tokens removed from each answer. None if even empty answers do not fit."""
        def cut(cap: int) -> Item:
            return dataclasses.replace(it, answers=tuple(a[:cap] for a in it.answers))

        def fits(cap: int) -> bool:
            return all(len(self._encode(cut(cap), mode, rev, False)) <= room for rev in orders)

        lo, hi = 0, max(len(a) for a in it.answers)  # fits(lo); not fits(hi)
        if not fits(lo):
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        short = cut(lo)
        size = [len(self.tokenizer.encode(a, add_bos=False)) for a in it.answers + short.answers]
        n = len(it.answers)
        return short, tuple(size[k] - size[n + k] for k in range(n))

    # ----------------------------------------------------------------------------- assembling
    @staticmethod
    def _references(samples, reference) -> list[str | None]:
        if reference is None:
            return [None] * len(samples)
        if isinstance(reference, str):
            if reference != "samples":
                raise ValueError("reference must be None, 'samples' or one text per sample")
            return [getattr(s, "reference", None) if not isinstance(s, Mapping) else _record_reference(s)
                    for s in samples]
        refs = list(reference)
        if len(refs) != len(samples):
            raise ValueError(f"{len(refs)} references for {len(samples)} samples")
        return refs

    def _judgement(self, job: _Job, item: Item, mode: str, tokens: list[int], finished: bool,
                   dist: ScoreDistribution | None, with_reasons: bool = False) -> Judgement:
        return build_judgement(self.tokenizer.decode(tokens, skip_special_tokens=True), index=job.item, item=item,
                               mode=mode, finished=finished, with_reasons=with_reasons, distribution=dist)

    @staticmethod
    def _combine(index: int, item: Item, mode: str, jobs: list[_Job]) -> Judgement:
        orig = next(j.result for j in jobs if not j.swapped)
        rev = next((j.result for j in jobs if j.swapped), None)
        if rev is None:
            return orig
        a = orig.scores
        b = rev.scores[::-1] if rev.scores is not None else None  # back to the original order
        if a is not None and b is not None:
            scores = tuple((x + y) / 2 for x, y in zip(a, b))
        else:
            scores = a if a is not None else b
        dist = orig.distribution
        if orig.distribution is not None and rev.distribution is not None:
            dist = ScoreDistribution.average(orig.distribution, rev.distribution.swapped())
        return dataclasses.replace(orig, scores=scores, verdict=win_label(*scores) if scores else 0,
                                   distribution=dist, swapped=rev, original=orig,
                                   error=orig.error or rev.error)


def build_judgement(raw: str, *, index: int, item: Item, mode: str, finished: bool, with_reasons: bool,
                    distribution: ScoreDistribution | None = None) -> Judgement:
    """The Judgement of one generated text (`Judge.score` and `JudgeChat` both build theirs here).

    JudgeLM's fast eval keeps the text before the first newline, stripped; with reasons, the whole
    text, stripped (without JudgeLM's off-by-one that drops the last character). A line cut at the
    token budget (not `finished`, no newline) may end inside a number ("10 1" of "10 10") and is
    never parsed."""
    line, newline, rest = raw.partition("\n")
    text = raw.strip() if with_reasons else line.strip()
    n = {"pair": 2, "single": 1, "vqa": 1}.get(mode, len(item.answers))  # after a forced "10": one score
    scores = parse_scores(text, n=n) if newline or finished else None
    scores = tuple(scores) if scores is not None else None
    return Judgement(index=index, question_id=item.question_id, mode=mode, text=text, scores=scores,
                     verdict=win_label(*scores) if mode == "pair" and scores else (0 if mode == "pair" else None),
                     ranking=_ranking(scores) if mode == "multi" else None,
                     reasons=rest.strip() if with_reasons else None, distribution=distribution, finished=finished)


def _ranking(scores) -> tuple[int, ...] | None:
    if scores is None:
        return None
    return tuple(int(i) for i in np.argsort(-np.asarray(scores), kind="stable"))


def _record_reference(record: Mapping) -> str | None:
    ref = record.get("reference")
    if isinstance(ref, Mapping):
        return ref.get("text")
    return ref if isinstance(ref, str) else None
