"""Judging tasks built on `Judge.score`: N answers in one prompt vs pairwise + Bradley-Terry, MM-Vet
scoring, and multi-turn (MT-bench turn 2) samples.

    cmp = compare_rankings(judge, question, answers)       # one N-answer prompt vs all pairs
    cmp.multi_ranking, cmp.pairwise_ranking, cmp.kendall_tau, cmp.cost
    res = judge_mmvet(judge, read_mmvet("mm-vet-gt.json", "preds.json"), seed=0)
    res.total, res.by_capability
    item = multi_turn_item(["Q1", "Q2"], ["a1 turn 1", "a1 turn 2"], ["a2 turn 1", "a2 turn 2"])
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from jlm.formats.mmvet import MMVetSample, mmvet_item
from jlm.formats.prompts import build_prompt, multi_turn_answer, multi_turn_question, number_word
from jlm.infer.judge import Item, Judgement, score_budget
from jlm.metrics.ranking import bradley_terry, kendall_tau


# ----------------------------------------------------------------------------------- N answers
@dataclasses.dataclass(frozen=True)
class Cost:
    """What a method ran: prompts prefilled, their tokens, and tokens generated (one decode step each)."""
    prompts: int
    prompt_tokens: int
    generated_tokens: int


@dataclasses.dataclass(frozen=True)
class RankingComparison:
    """One question's answers ranked two ways. Rankings are 0-based answer indices, best first.

    multi: the N-answer judgement (scores None when the line does not hold N numbers).
    pairwise: every pair (i < j) judged, with verdicts for answer i vs answer j.
    bt: `bradley_terry` rows over the answer indices (rating on the Elo scale).
    kendall_tau: tau-b between the N-answer scores and the BT ratings (None if the N-answer line did
        not parse); 1 = same order, -1 = reversed.
    """
    n: int
    multi: Judgement
    pairwise: list[tuple[int, int, Judgement]]
    bt: list[dict[str, Any]]
    multi_ranking: tuple[int, ...] | None
    pairwise_ranking: tuple[int, ...]
    kendall_tau: float | None
    cost: dict[str, Cost]


def max_answers(judge, question: str, answers: Sequence[str], reference: str | None = None) -> int:
    """How many of `answers` (a prefix) fit one N-answer prompt in the judge's context, with room for
    the N scores: the score-line budget `Judge.score` gives N answers (README: JudgeLM's 2048 tokens
    fit a few). At most 19, the template's number words."""
    limit = judge.cfg.max_position_embeddings
    best = 0
    for k in range(2, min(len(answers), 19) + 1):
        ids = judge.tokenizer.encode(build_prompt(question, answers[:k], reference, mode="multi"))
        if len(ids) + score_budget(judge.score_tokens, k) > limit:
            break
        best = k
    return best


def _generated(judge, res: Judgement) -> int:
    """Tokens the judge generated for `res` (its text, plus the newline / EOS that stopped it)."""
    return len(judge.tokenizer.encode(res.text, add_bos=False)) + (1 if res.finished else 0)


def compare_rankings(judge, question: str, answers: Sequence[str], *, reference: str | None = None,
                     swap: bool = False) -> RankingComparison:
    """Rank `answers` with one N-answer prompt (JudgeLM's PR #10 template, zero-shot) and with every
    pair judged (both orders with swap=True) plus Bradley-Terry, and compare the two."""
    n = len(answers)
    if n < 3:
        raise ValueError(f"compare_rankings: need at least 3 answers, got {n}")
    number_word(n)  # the template has number words up to nineteen
    fit = max_answers(judge, question, answers, reference)
    if fit < n:
        raise ValueError(f"compare_rankings: {n} answers do not fit one prompt in the judge's "
                         f"{judge.cfg.max_position_embeddings}-token context; the first {fit} do "
                         "(see max_answers)")
    (multi,) = judge.score([Item(question, tuple(answers), reference)], mode="multi", distributions=False)
    if multi.error:
        raise ValueError(f"compare_rankings: {multi.error}")
    pairs = list(itertools.combinations(range(n), 2))
    res = judge.score([Item(question, (answers[i], answers[j]), reference) for i, j in pairs],
                      swap=swap, distributions=False)
    pairwise = [(i, j, r) for (i, j), r in zip(pairs, res)]
    bt = bradley_terry([(i, j, r.verdict) for i, j, r in pairwise])
    bt_rating = {row["model"]: row["rating"] for row in bt}
    tau = None
    if multi.scores is not None:
        tau = kendall_tau({i: s for i, s in enumerate(multi.scores)}, bt_rating)

    def prompt_tokens(item_answers):
        return len(judge.tokenizer.encode(build_prompt(question, item_answers, reference)))

    orders = [(answers[i], answers[j]) for i, j in pairs]
    if swap:
        orders += [(b, a) for a, b in orders]
    pair_gen = sum(_generated(judge, r) + (_generated(judge, r.swapped) if r.swapped else 0) for r in res)
    cost = {"multi": Cost(1, prompt_tokens(list(answers)), _generated(judge, multi)),
            "pairwise": Cost(len(orders), sum(prompt_tokens(list(o)) for o in orders), pair_gen)}
    return RankingComparison(n=n, multi=multi, pairwise=pairwise, bt=bt, multi_ranking=multi.ranking,
                             pairwise_ranking=tuple(row["model"] for row in bt), kendall_tau=tau, cost=cost)


# ------------------------------------------------------------------------------------- MM-Vet
@dataclasses.dataclass(frozen=True)
class MMVetResult:
    """Per-sample scores in [0, 1] and MM-Vet-style totals in percent.

    scores[id]: the judge's score for the prediction / 10, clipped to [0, 1]; an unparseable score
    line counts 0 (MM-Vet's GPT grader gives 0 after failed retries). total: mean over `n_total`
    samples x 100 (pass MM-Vet's sample count to count missing predictions as 0). by_capability:
    the same mean over the samples tagged with each capability (a sample counts for all its tags).
    """
    scores: dict[str, float]
    judgements: dict[str, Judgement]
    total: float
    by_capability: dict[str, float]


def mmvet_score(res: Judgement) -> float:
    """One sample's 0-1 score from a "vqa" judgement (the generated second score after the forced 10)."""
    if not res.scores:
        return 0.0
    return float(np.clip(res.scores[0] / 10.0, 0.0, 1.0))


def judge_mmvet(judge, samples: Sequence[MMVetSample], *, seed: int = 0, n_total: int | None = None,
                **score_kw) -> MMVetResult:
    """Judge MM-Vet predictions with JudgeLM's VQA template (ground truth as the reference, a
    placeholder resolved from it with `seed` as Assistant 1 with a forced 10, the prediction as
    Assistant 2). `score_kw` goes to `Judge.score` (e.g. reasons=True)."""
    if not samples:
        raise ValueError("judge_mmvet: no samples")
    items = [mmvet_item(s, seed) for s in samples]
    res = judge.score(items, reference=[it.reference for it in items], mode="vqa", distributions=False, **score_kw)
    scores = {s.sample_id: mmvet_score(r) for s, r in zip(samples, res)}
    denom = len(samples) if n_total is None else n_total
    if denom < len(samples):
        raise ValueError(f"judge_mmvet: n_total={n_total} is less than the {len(samples)} samples given")
    by_cap: dict[str, list[float]] = {}
    for s in samples:
        for c in s.capability:
            by_cap.setdefault(c, []).append(scores[s.sample_id])
    return MMVetResult(scores=scores, judgements={s.sample_id: r for s, r in zip(samples, res)},
                       total=100.0 * sum(scores.values()) / denom,
                       by_capability={c: 100.0 * float(np.mean(v)) for c, v in sorted(by_cap.items())})


# -------------------------------------------------------------------------------- multi-turn
def multi_turn_item(user_turns: Sequence[str], replies_1: Sequence[str], replies_2: Sequence[str], *,
                    reference: Sequence[str] | None = None, question_id: Any = None) -> Item:
    """A judge item for the last turn of a conversation: all user turns in the question slot, each
    assistant's replies to every turn in its answer slot (see prompts.multi_turn_question), and the
    reference replies (if any) rendered like an answer."""
    for name, replies in (("replies_1", replies_1), ("replies_2", replies_2), ("reference", reference)):
        if replies is not None and len(replies) != len(user_turns):
            raise ValueError(f"multi_turn_item: {len(user_turns)} user turns but {len(replies)} {name}")
    ref = multi_turn_answer(reference) if reference is not None else None
    return Item(multi_turn_question(user_turns), (multi_turn_answer(replies_1), multi_turn_answer(replies_2)),
                ref, question_id)


def mtbench_items(questions: Sequence[Mapping], answers_1: Sequence[Mapping], answers_2: Sequence[Mapping],
                  *, turn: int = 2, references: Sequence[Mapping] | None = None) -> list[Item]:
    """Items judging MT-bench `turn` (1-based) from FastChat's files: questions
    {"question_id", "turns": [...]}, model answers {"question_id", "choices": [{"turns": [...]}]},
    optional reference answers in the answer format. Matched by question_id."""
    def by_id(rows, what):
        out = {}
        for k, r in enumerate(rows):
            if "question_id" not in r:
                raise ValueError(f"mtbench_items: {what} row {k} has no 'question_id'")
            out[r["question_id"]] = r
        return out

    def reply_turns(rows, qid, what):
        if qid not in rows:
            raise ValueError(f"mtbench_items: no {what} for question_id {qid!r}")
        try:
            turns = rows[qid]["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"mtbench_items: {what} for question_id {qid!r} has no choices[0].turns") from None
        if len(turns) < turn:
            raise ValueError(f"mtbench_items: {what} for question_id {qid!r} has {len(turns)} turns, need {turn}")
        return turns[:turn]

    a1, a2 = by_id(answers_1, "answers_1"), by_id(answers_2, "answers_2")
    refs = by_id(references, "references") if references is not None else None
    items = []
    for q in questions:
        qid, turns = q.get("question_id"), q.get("turns")
        if not isinstance(turns, list) or len(turns) < turn:
            raise ValueError(f"mtbench_items: question {qid!r} needs at least {turn} 'turns'")
        ref = reply_turns(refs, qid, "reference") if refs is not None and qid in refs else None
        items.append(multi_turn_item(turns[:turn], reply_turns(a1, qid, "answers_1"),
                                     reply_turns(a2, qid, "answers_2"), reference=ref, question_id=qid))
    return items
