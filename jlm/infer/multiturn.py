"""Multi-turn samples (MT-bench turn 2): the whole conversation as one JudgeLM question and answers.

    item = multi_turn_item(["Q1", "Q2"], ["a1 turn 1", "a1 turn 2"], ["a2 turn 1", "a2 turn 2"])
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from jlm.formats.prompts import multi_turn_answer, multi_turn_question
from jlm.infer.judge import Item


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
