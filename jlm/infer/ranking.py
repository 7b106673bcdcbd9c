"""N answers in one prompt vs all pairs + Bradley-Terry, on one question.

    cmp = compare_rankings(judge, question, answers)       # one N-answer prompt vs all pairs
    cmp.multi_ranking, cmp.pairwise_ranking, cmp.kendall_tau, cmp.cost
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from jlm.formats.prompts import build_prompt, number_word
from jlm.infer.judge import Item, Judgement, score_budget
from jlm.metrics.ranking import bradley_terry, kendall_tau


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
