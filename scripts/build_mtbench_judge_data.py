#!/usr/bin/env python3
"""Build JudgeLM-format judge data from GPT-4's MT-bench single-answer grades (stand-in for JudgeLM-100K).

Input (`--data`, default ../shared/data next to the repository):
  mtbench_gpt4_judgments_forks/gpt-4_single.merged.jsonl.gz  19 models x 80 questions x 2 turns, GPT-4 1-10
  mtbench_fastchat/mt_bench/question.jsonl                    questions, categories
  mtbench_fastchat/mt_bench/reference_answer/gpt-4.jsonl      GPT-4 references (math, reasoning, coding)

Pairs: two graded answers to the same (question, turn). Per (question, turn) `--pairs-per-turn` of the 171
model pairs are drawn without replacement, and each pair's order, from a generator seeded by
(seed, question, turn) (0 = all pairs). Scores are GPT-4's; the judgement is
"s1 s2\\nAssistant 1: <GPT-4's explanation of answer 1>\\n\\nAssistant 2: <explanation of answer 2>", with the
closing "Rating: [[k]]" removed (the score line carries it), other "[[k]]" unbracketed, and "Assistant A"
(GPT-4's name for the graded assistant in turn-2 prompts) renamed to the assistant's number.

Turn 2: the two assistants' turn-1 replies differ, so the question body holds both user turns
(`multi_turn_question`) and each answer body that assistant's own two replies (`multi_turn_answer`), as
GPT-4 saw the conversation; GPT-4 graded the turn-2 reply.

References: MT-bench's math / reasoning / coding questions (101-130) were graded by GPT-4 with its reference
answer in view (`single-math-v1` prompts), so those records get `reference` (turn 2: both reference turns),
`text_w_reference` / `score_w_reference` = that grading, and `text` / `score` = the same grading with
metadata.text_uses_reference = true (no reference-free GPT-4 grade exists for them; training then always
shows the reference). The reference hints of questions 95 and 131-145 were not used by GPT-4's grading
(FastChat only references math/reasoning/coding) and are left out.

Split by question, never by pair: `--val-questions` (16) of the 80 questions, an equal share of each
category drawn with `--seed`, both turns, go to validation.

Output (`--out`, default data/mtbench_judgelm):
  train.jsonl                       full JudgeLM training records
  val.jsonl                         validation questions + answers (JudgeLM's judgelm_val_5k.jsonl role)
  val_gpt4.jsonl                    question_id, text, score (GPT-4's judgement; the teacher for `jlm eval`)
  val_gpt4_with_reference.jsonl     the same with reference where one exists (else the judgement above)
  val_references.jsonl              question_id, reference ({"text": ...} or null)
Unique question_id per pair: mtbench_id * 10000 + turn * 1000 + k.
"""
from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jlm.formats.prompts import multi_turn_answer, multi_turn_question
from jlm.formats.records import iter_jsonl, write_jsonl
from jlm.formats.scores import format_score_line, win_label

GRADES = "mtbench_gpt4_judgments_forks/gpt-4_single.merged.jsonl.gz"
QUESTIONS = "mtbench_fastchat/mt_bench/question.jsonl"
REFERENCES = "mtbench_fastchat/mt_bench/reference_answer/gpt-4.jsonl"


@dataclass(frozen=True)
class Grade:
    """One GPT-4 grade of one model's answer to one (question, turn)."""

    question_id: int
    turn: int
    model: str
    replies: tuple[str, ...]  # the model's replies up to this turn, as GPT-4 saw them
    explanation: str
    score: float
    with_reference: bool
    source_repo: str


def read_jsonl(path: Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def _between(text: str, start: str, end: str, where: str) -> str:
    i = text.find(start)
    j = text.rfind(end)
    if i < 0 or j < i + len(start):
        raise ValueError(f"{where}: cannot find {start!r} ... {end!r} in the judge prompt")
    return text[i + len(start):j]


def extract_replies(user_prompt: str, turns: list[str], turn: int, where: str = "") -> tuple[str, ...]:
    """The graded assistant's replies cut out of a FastChat single-grading prompt (turn 1: one, turn 2: two).

    The known question texts anchor the cuts, so replies that contain "### User:" cannot confuse them.
    """
    if turn == 1:
        body = _between(user_prompt, "[The Start of Assistant's Answer]\n", "\n[The End of Assistant's Answer]", where)
        return (body,)
    conv = _between(user_prompt, "<|The Start of Assistant A's Conversation with User|>\n\n",
                    "\n\n<|The End of Assistant A's Conversation with User|>", where)
    head = f"### User:\n{turns[0]}\n\n### Assistant A:\n"
    middle = f"\n\n### User:\n{turns[1]}\n\n### Assistant A:\n"
    if not conv.startswith(head) or middle not in conv:
        raise ValueError(f"{where}: turn-2 conversation does not follow the MT-bench question texts")
    first, _, second = conv[len(head):].partition(middle)
    return first, second


_FINAL_RATING = re.compile(r"\s*\"?Rating:\s*\[\[(\d+(?:\.\d+)?)\]\]\"?\.?\s*$")
_BRACKETS = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def clean_explanation(judgment: str) -> str:
    """GPT-4's explanation without the closing "Rating: [[k]]"; any other "[[k]]" becomes "k"."""
    text = _FINAL_RATING.sub("", judgment)
    return _BRACKETS.sub(r"\1", text).strip()


def load_questions(data: Path) -> dict[int, dict]:
    return {q["question_id"]: q for q in read_jsonl(data / QUESTIONS)}


def load_references(data: Path) -> dict[int, list[str]]:
    return {r["question_id"]: r["choices"][0]["turns"] for r in read_jsonl(data / REFERENCES)}


def load_grades(data: Path, questions: dict[int, dict], stats: Counter) -> dict[tuple[int, int], list[Grade]]:
    """(question_id, turn) -> grades, one per model, sorted by model name."""
    by_key: dict[tuple[int, int], dict[str, Grade]] = defaultdict(dict)
    for i, row in enumerate(read_jsonl(data / GRADES), start=1):
        qid, turn, model = row["question_id"], row["turn"], row["model"]
        where = f"{GRADES} line {i}"
        if qid not in questions:
            raise ValueError(f"{where}: question_id {qid} is not an MT-bench question")
        if model in by_key[(qid, turn)]:
            raise ValueError(f"{where}: second grade of {model} for question {qid} turn {turn}")
        replies = extract_replies(row["user_prompt"], questions[qid]["turns"], turn, where)
        by_key[(qid, turn)][model] = Grade(
            question_id=qid, turn=turn, model=model, replies=replies,
            explanation=clean_explanation(row["judgment"]), score=float(row["score"]),
            with_reference="math" in row["judge"][1], source_repo=row.get("source_repo", ""),
        )
        stats["grades"] += 1
    # a turn-2 prompt repeats the model's turn-1 reply: count where it differs from the turn-1 grade's copy
    for (qid, turn), grades in by_key.items():
        if turn == 2:
            for model, g in grades.items():
                first = by_key.get((qid, 1), {}).get(model)
                if first is not None and first.replies[0] != g.replies[0]:
                    stats["turn1_reply_differs_in_turn2_prompt"] += 1
    return {k: [v[m] for m in sorted(v)] for k, v in sorted(by_key.items())}


def split_questions(questions: dict[int, dict], n_val: int, seed: int) -> set[int]:
    """n_val question ids, spread evenly over the categories (round-robin), drawn with `seed`."""
    by_cat: dict[str, list[int]] = defaultdict(list)
    for qid, q in sorted(questions.items()):
        by_cat[q["category"]].append(qid)
    rng = np.random.default_rng(seed)
    shuffled = {c: [ids[i] for i in rng.permutation(len(ids))] for c, ids in sorted(by_cat.items())}
    val: list[int] = []
    for rnd in itertools.count():
        for c in sorted(shuffled):
            if len(val) < n_val and rnd < len(shuffled[c]):
                val.append(shuffled[c][rnd])
        if len(val) >= n_val or rnd > max(len(v) for v in shuffled.values()):
            break
    return set(val)


def judgement_text(g1: Grade, g2: Grade, answer_names: tuple[str, str] = ("Assistant 1", "Assistant 2")) -> str:
    parts = [f"{name}: {g.explanation.replace('Assistant A', name)}" for name, g in zip(answer_names, (g1, g2))]
    return format_score_line([g1.score, g2.score]) + "\n" + "\n\n".join(parts)


def pair_record(g1: Grade, g2: Grade, k: int, question: dict, reference: list[str] | None) -> dict:
    """A JudgeLM training record for answers g1 (Assistant 1) and g2 (Assistant 2)."""
    qid, turn = g1.question_id, g1.turn
    turns = question["turns"][:turn]
    text = judgement_text(g1, g2)
    uses_ref = g1.with_reference or g2.with_reference
    rec = {
        "review_id": f"mtbench-{qid}-t{turn}-{k:03d}",
        "question_id": qid * 10000 + turn * 1000 + k,
        "answer1_id": "",
        "answer2_id": "",
        "reviewer_id": 0,
        "metadata": {"source": "mt_bench", "mtbench_question_id": qid, "turn": turn,
                     "category": question["category"], "text_uses_reference": uses_ref},
        "question_body": multi_turn_question(turns),
        "answer1_body": multi_turn_answer(g1.replies),
        "answer2_body": multi_turn_answer(g2.replies),
        "answer1_model_id": g1.model,
        "answer2_model_id": g2.model,
        "answer1_metadata": {"decoding_method": "unknown", "source_repo": g1.source_repo},
        "answer2_metadata": {"decoding_method": "unknown", "source_repo": g2.source_repo},
        "text": text,
        "score": [g1.score, g2.score],
    }
    if uses_ref:
        if reference is None:
            raise ValueError(f"question {qid}: graded with a reference, but MT-bench has no reference answer")
        rec["reference"] = {"decoding_method": "None", "model": "gpt-4",
                            "text": multi_turn_answer(reference[:turn])}
        rec["text_w_reference"] = text
        rec["score_w_reference"] = [g1.score, g2.score]
    return rec


def make_pairs(grades: list[Grade], k: int, seed: int) -> list[tuple[Grade, Grade]]:
    """k model pairs (0 = all) of one (question, turn), each in a random order; depends only on the inputs."""
    g0 = grades[0]
    rng = np.random.default_rng([seed, g0.question_id, g0.turn])
    combos = list(itertools.combinations(range(len(grades)), 2))
    chosen = sorted(rng.choice(len(combos), size=min(k, len(combos)), replace=False)) if k else range(len(combos))
    pairs = []
    for c in chosen:
        i, j = combos[c]
        if rng.random() < 0.5:
            i, j = j, i
        pairs.append((grades[i], grades[j]))
    return pairs


def build(data: Path, out: Path, *, pairs_per_turn: int = 24, n_val: int = 16, seed: int = 0) -> dict:
    """Write the files (see module doc) and return the counts that `main` prints."""
    if not 0 <= pairs_per_turn < 1000:
        raise ValueError("--pairs-per-turn must be in 0..999 (it is part of the question_id)")
    stats: Counter = Counter()
    questions = load_questions(data)
    references = load_references(data)
    grades = load_grades(data, questions, stats)
    val_ids = split_questions(questions, n_val, seed)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for (qid, turn), gs in grades.items():
        for k, (g1, g2) in enumerate(make_pairs(gs, pairs_per_turn, seed)):
            rec = pair_record(g1, g2, k, questions[qid], references.get(qid))
            splits["val" if qid in val_ids else "train"].append(rec)

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", splits["train"])
    val = splits["val"]
    drop = {"text", "score", "reference", "text_w_reference", "score_w_reference"}
    write_jsonl(out / "val.jsonl", ({k: v for k, v in r.items() if k not in drop} for r in val))
    write_jsonl(out / "val_gpt4.jsonl",
                ({"question_id": r["question_id"], "text": r["text"], "score": r["score"]} for r in val))
    write_jsonl(out / "val_gpt4_with_reference.jsonl",
                ({"question_id": r["question_id"], "text": r.get("text_w_reference", r["text"]),
                  "score": r.get("score_w_reference", r["score"])} for r in val))
    write_jsonl(out / "val_references.jsonl",
                ({"question_id": r["question_id"], "reference": r.get("reference")} for r in val))

    def balance(records: list[dict]) -> dict[str, int]:
        c = Counter(win_label(*r["score"]) for r in records)
        return {"1 wins": c[1], "tie": c[0], "2 wins": c[-1]}

    summary = {
        "grades": stats["grades"],
        "turn1_reply_differs_in_turn2_prompt": stats["turn1_reply_differs_in_turn2_prompt"],
        "val_questions": sorted(val_ids),
        "val_categories": dict(sorted(Counter(questions[q]["category"] for q in val_ids).items())),
    }
    for name, recs in splits.items():
        summary[name] = {
            "pairs": len(recs),
            "questions": len({r["metadata"]["mtbench_question_id"] for r in recs}),
            "turn 1": sum(r["metadata"]["turn"] == 1 for r in recs),
            "turn 2": sum(r["metadata"]["turn"] == 2 for r in recs),
            "with reference": sum("reference" in r for r in recs),
            "label balance": balance(recs),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    p.add_argument("--out", type=Path, default=Path("data/mtbench_judgelm"), help="output folder")
    p.add_argument("--pairs-per-turn", type=int, default=24, help="pairs per (question, turn), 0 = all 171")
    p.add_argument("--val-questions", type=int, default=16, help="questions held out for validation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    s = build(args.data, args.out, pairs_per_turn=args.pairs_per_turn, n_val=args.val_questions, seed=args.seed)
    print(f"read {s['grades']} GPT-4 grades; turn-1 replies differing inside turn-2 prompts: "
          f"{s['turn1_reply_differs_in_turn2_prompt']}")
    print(f"validation questions ({len(s['val_questions'])}): {s['val_questions']}")
    print(f"validation categories: {s['val_categories']}")
    for name in ("train", "val"):
        t = s[name]
        total = max(t["pairs"], 1)
        bal = ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in t["label balance"].items())
        print(f"{name}: {t['pairs']} pairs from {t['questions']} questions (turn 1: {t['turn 1']}, "
              f"turn 2: {t['turn 2']}, with reference: {t['with reference']}); labels: {bal}")
    print(f"wrote {args.out}/train.jsonl, val.jsonl, val_gpt4.jsonl, val_gpt4_with_reference.jsonl, "
          "val_references.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
