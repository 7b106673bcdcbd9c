"""`jlm data build`: the judge sets shipped in data/ -> JudgeLM-format training and validation files.

    jlm data build                          # data/ -> runs/data/ (all training sources)
    jlm data build --sources mtbench alpaca_eval --out runs/data-small

Sources (each folder's SOURCE.md says where it comes from and how it is used):
  mtbench      GPT-4 single-answer grades, paired within a (question, turn); 16 questions held out
  alpaca_eval  GPT-4-turbo pairwise preferences, positions shuffled; 5% of instructions held out
  offsetbias   constructed pairs (the better answer is usually the shorter), score line only
  autoj        GPT-4 single-answer critiques, paired within a query; queries of the test set dropped
The human-labelled Auto-J test set is never trained on: it is written, in JudgeLM's input format,
as the development set `autoj_test.jsonl` (ids = row index; ground truth for `jlm eval --format
autoj` is the shipped file itself).

Every split is by question (MT-bench question, AlpacaEval instruction, Auto-J query), never by pair.
Every draw (which pairs, which order) comes from a generator seeded by (seed, the item's own key), so
one source's output does not depend on which others are built.

Output (`--out`):
  train.jsonl                      all training records (metadata.source names the set)
  val.jsonl                        held-out MT-bench questions + answers (JudgeLM's judgelm_val_5k role)
  val_gpt4.jsonl                   question_id, text, score: GPT-4's judgement, the teacher for `jlm eval`
  val_gpt4_with_reference.jsonl    the same with the reference in view, where one exists
  val_references.jsonl             question_id, reference ({"text": ...} or null)
  alpaca_val.jsonl, alpaca_val_gpt4.jsonl    held-out AlpacaEval instructions and GPT-4-turbo's verdicts
  autoj_test.jsonl                 the Auto-J development set as judge input
  summary.json                     the counts printed at the end
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import re
import sys
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jlm.formats.prompts import multi_turn_answer, multi_turn_question
from jlm.formats.records import iter_jsonl, write_jsonl
from jlm.formats.scores import format_score_line, win_label

SOURCES = ("mtbench", "alpaca_eval", "offsetbias", "autoj")

MTBENCH_GRADES = "mtbench/gpt4_single_grades.jsonl.gz"
MTBENCH_QUESTIONS = "mtbench/questions.jsonl"
MTBENCH_REFERENCES = "mtbench/reference_answers_gpt4.jsonl"
ALPACA = "alpaca_eval/annotations_rebalanced.jsonl.gz"
OFFSETBIAS = "offsetbias/offsetbias_1k.json.gz"
AUTOJ_CRITIQUES = "autoj/single_critiques_gpt4.jsonl.gz"
AUTOJ_TEST = "autoj/pairwise_test_human.jsonl.gz"

# verdict-only sets (AlpacaEval, OffsetBias): the score line a verdict becomes (first better, tie, second better)
VERDICT_SCORES = {1: (8, 4), 0: (6, 6), -1: (4, 8)}


def read_jsonl(path: Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def read_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _rng(seed: int, *key: Any) -> np.random.Generator:
    """A generator for one item, from the seed and the item's own key (CRC32 of its parts: Python's
    hash() is salted per process)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode("utf-8")) for k in key)])


def _clean_rating(text: str) -> str:
    """A judge text without its closing "Rating: [[k]]"; any other "[[k]]" becomes "k"."""
    text = re.sub(r"\s*\"?Rating:\s*\[\[(\d+(?:\.\d+)?)\]\]\"?\.?\s*$", "", text)
    return re.sub(r"\[\[(\d+(?:\.\d+)?)\]\]", r"\1", text).strip()


def _two_explanations(e1: str, e2: str, rename: str | None = None) -> str:
    """"Assistant 1: e1\\n\\nAssistant 2: e2", with `rename` (the source's name for the graded
    assistant) replaced by the assistant's number."""
    parts = []
    for k, e in ((1, e1), (2, e2)):
        parts.append(f"Assistant {k}: " + (e.replace(rename, f"Assistant {k}") if rename else e))
    return "\n\n".join(parts)


def _record(source: str, key: str, qid: int, question: str, a1: str, a2: str, text: str,
            score: tuple[float, float], models: tuple[str, str] = ("", ""), **metadata) -> dict:
    return {
        "review_id": key, "question_id": qid, "answer1_id": "", "answer2_id": "", "reviewer_id": 0,
        "metadata": {"source": source, **metadata},
        "question_body": question, "answer1_body": a1, "answer2_body": a2,
        "answer1_model_id": models[0], "answer2_model_id": models[1],
        "text": text, "score": [float(score[0]), float(score[1])],
    }


# ------------------------------------------------------------------------------------------ MT-bench
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


def _between(text: str, start: str, end: str, where: str) -> str:
    i, j = text.find(start), text.rfind(end)
    if i < 0 or j < i + len(start):
        raise ValueError(f"{where}: cannot find {start!r} ... {end!r} in the judge prompt")
    return text[i + len(start):j]


def extract_replies(user_prompt: str, turns: list[str], turn: int, where: str = "") -> tuple[str, ...]:
    """The graded assistant's replies cut out of a FastChat single-grading prompt (turn 1: one, turn 2: two).
    The known question texts anchor the cuts, so replies that contain "### User:" cannot confuse them."""
    if turn == 1:
        return (_between(user_prompt, "[The Start of Assistant's Answer]\n", "\n[The End of Assistant's Answer]", where),)
    conv = _between(user_prompt, "<|The Start of Assistant A's Conversation with User|>\n\n",
                    "\n\n<|The End of Assistant A's Conversation with User|>", where)
    head = f"### User:\n{turns[0]}\n\n### Assistant A:\n"
    middle = f"\n\n### User:\n{turns[1]}\n\n### Assistant A:\n"
    if not conv.startswith(head) or middle not in conv:
        raise ValueError(f"{where}: turn-2 conversation does not follow the MT-bench question texts")
    first, _, second = conv[len(head):].partition(middle)
    return first, second


def load_mtbench(data: Path) -> tuple[dict[int, dict], dict[int, list[str]], dict[tuple[int, int], list[Grade]]]:
    """(questions, references, (question_id, turn) -> grades sorted by model)."""
    questions = {q["question_id"]: q for q in read_jsonl(data / MTBENCH_QUESTIONS)}
    references = {r["question_id"]: r["choices"][0]["turns"] for r in read_jsonl(data / MTBENCH_REFERENCES)}
    by_key: dict[tuple[int, int], dict[str, Grade]] = defaultdict(dict)
    for line, row in iter_jsonl(data / MTBENCH_GRADES):
        qid, turn, model = row["question_id"], row["turn"], row["model"]
        where = f"{data / MTBENCH_GRADES}:{line}"
        if qid not in questions:
            raise ValueError(f"{where}: question_id {qid} is not an MT-bench question")
        if model in by_key[(qid, turn)]:
            raise ValueError(f"{where}: second grade of {model} for question {qid} turn {turn}")
        by_key[(qid, turn)][model] = Grade(
            qid, turn, model, extract_replies(row["user_prompt"], questions[qid]["turns"], turn, where),
            _clean_rating(row["judgment"]), float(row["score"]), "math" in row["judge"][1])
    return questions, references, {k: [v[m] for m in sorted(v)] for k, v in sorted(by_key.items())}


def split_questions(questions: dict[int, dict], n_val: int, seed: int) -> set[int]:
    """n_val question ids, spread evenly over the categories (round-robin), drawn with `seed`."""
    by_cat: dict[str, list[int]] = defaultdict(list)
    for qid, q in sorted(questions.items()):
        by_cat[q["category"]].append(qid)
    rng = np.random.default_rng(seed)
    shuffled = {c: [ids[i] for i in rng.permutation(len(ids))] for c, ids in sorted(by_cat.items())}
    val: list[int] = []
    for rnd in range(max(len(v) for v in shuffled.values())):
        for c in sorted(shuffled):
            if len(val) < n_val and rnd < len(shuffled[c]):
                val.append(shuffled[c][rnd])
    return set(val)


def mtbench_pair(g1: Grade, g2: Grade, k: int, question: dict, reference: list[str] | None) -> dict:
    """A JudgeLM record for answers g1 (Assistant 1) and g2 (Assistant 2). Unique question_id:
    mtbench_id * 10000 + turn * 1000 + k."""
    qid, turn = g1.question_id, g1.turn
    text = format_score_line([g1.score, g2.score]) + "\n" + _two_explanations(g1.explanation, g2.explanation,
                                                                               "Assistant A")
    uses_ref = g1.with_reference or g2.with_reference
    rec = _record("mt_bench", f"mtbench-{qid}-t{turn}-{k:03d}", qid * 10000 + turn * 1000 + k,
                  multi_turn_question(question["turns"][:turn]), multi_turn_answer(g1.replies),
                  multi_turn_answer(g2.replies), text, (g1.score, g2.score), (g1.model, g2.model),
                  mtbench_question_id=qid, turn=turn, category=question["category"], text_uses_reference=uses_ref)
    if uses_ref:
        if reference is None:
            raise ValueError(f"MT-bench question {qid}: graded with a reference, but none is shipped")
        rec["reference"] = {"decoding_method": "None", "model": "gpt-4", "text": multi_turn_answer(reference[:turn])}
        rec["text_w_reference"] = text
        rec["score_w_reference"] = rec["score"]
    return rec


def mtbench_pairs(grades: list[Grade], k: int, seed: int) -> list[tuple[Grade, Grade]]:
    """k model pairs (0 = all) of one (question, turn), each in a random order."""
    g0 = grades[0]
    rng = np.random.default_rng([seed, g0.question_id, g0.turn])
    combos = list(itertools.combinations(range(len(grades)), 2))
    chosen = sorted(rng.choice(len(combos), size=min(k, len(combos)), replace=False)) if k else range(len(combos))
    out = []
    for c in chosen:
        i, j = combos[c]
        if rng.random() < 0.5:
            i, j = j, i
        out.append((grades[i], grades[j]))
    return out


def build_mtbench(data: Path, *, pairs_per_turn: int, n_val: int, seed: int) -> tuple[list[dict], list[dict], set[int]]:
    """(training records, validation records, validation question ids)."""
    if not 0 <= pairs_per_turn < 1000:
        raise ValueError("pairs per (question, turn) must be in 0..999 (it is part of the question_id)")
    questions, references, grades = load_mtbench(data)
    val_ids = split_questions(questions, n_val, seed)
    train, val = [], []
    for (qid, _), gs in grades.items():
        for k, (g1, g2) in enumerate(mtbench_pairs(gs, pairs_per_turn, seed)):
            (val if qid in val_ids else train).append(mtbench_pair(g1, g2, k, questions[qid], references.get(qid)))
    return train, val, val_ids


# --------------------------------------------------------------------------------------- AlpacaEval
_MODEL_NAME = re.compile(r"\b[Mm]odel\s+(?:'([mM])'|([mM])\b)|'([mM])'")  # Model 'm', Model m('s), 'M'


def alpaca_record(row: dict, index: int, seed: int) -> dict:
    """One AlpacaEval comparison in a seeded random order, verdict -> score line, names -> numbers."""
    pref = row["preference"]
    label = {1.0: 1, 2.0: -1, 1.5: 0}[pref]  # in the file's order: output_1 first
    flip = bool(_rng(seed, "alpaca", row["instruction"], row["generator_2"]).random() < 0.5)
    outputs = ("output_2", "output_1") if flip else ("output_1", "output_2")
    models = tuple(row[o.replace("output", "generator")] for o in outputs)
    label = -label if flip else label
    text = format_score_line(VERDICT_SCORES[label])
    explanation = (row.get("raw_completion") or {}).get("concise_explanation")
    names = row.get("referenced_models")
    if explanation and names:
        number = {name: outputs.index(out) + 1 for name, out in names.items() if out in outputs}

        def rename(m):
            k = number.get(m.group(1) or m.group(2) or m.group(3))
            return f"Assistant {k}" if k else m.group(0)
        text += "\n" + _MODEL_NAME.sub(rename, explanation.strip())
    return _record("alpaca_eval", f"alpaca-{index:05d}", 2_000_000 + index, row["instruction"],
                   row[outputs[0]], row[outputs[1]], text, VERDICT_SCORES[label], models,
                   dataset=row["dataset"], flipped=flip)


def build_alpaca(data: Path, *, val_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    rows = read_jsonl(data / ALPACA)
    instructions = sorted({r["instruction"] for r in rows})
    held = {q for q in instructions if _rng(seed, "alpaca-split", q).random() < val_share}
    train, val = [], []
    for i, r in enumerate(rows):
        if r.get("preference") not in (1.0, 2.0, 1.5):
            raise ValueError(f"{data / ALPACA}:{i + 1}: preference {r.get('preference')!r} is not 1, 2 or 1.5")
        (val if r["instruction"] in held else train).append(alpaca_record(r, i, seed))
    return train, val


# --------------------------------------------------------------------------------------- OffsetBias
def build_offsetbias(data: Path, *, seed: int) -> list[dict]:
    out = []
    for i, r in enumerate(read_json(data / OFFSETBIAS)):
        if r.get("label") not in ("A", "B"):
            raise ValueError(f"{data / OFFSETBIAS}: item {i}: label {r.get('label')!r} is not 'A' or 'B'")
        flip = bool(_rng(seed, "offsetbias", i).random() < 0.5)
        a, b = (r["response_B"], r["response_A"]) if flip else (r["response_A"], r["response_B"])
        label = 1 if (r["label"] == "A") != flip else -1
        out.append(_record("offsetbias", f"offsetbias-{i:04d}", 3_000_000 + i, r["instruction"], a, b,
                           format_score_line(VERDICT_SCORES[label]), VERDICT_SCORES[label], flipped=flip))
    return out


# ------------------------------------------------------------------------------------------- Auto-J
_AUTOJ_DATA = re.compile(r"\[Query\]: (.*?)\n\*\*\*\n\[Response\]: (.*?)\n\*\*\*\n\[END DATA\]", re.S)


def _query_key(text: str) -> str:
    """What two copies of one chatbot-arena query share: their first 100 characters, whitespace
    collapsed and lower-cased (the critique prompts re-wrap some queries)."""
    return " ".join(text.split()).lower()[:100]


def build_autoj(data: Path, *, seed: int) -> tuple[list[dict], int]:
    """(training pairs from the critiques, number of critiques dropped for sharing a test query)."""
    test = {_query_key(r["prompt"]) for r in read_jsonl(data / AUTOJ_TEST)}
    by_query: dict[str, list[tuple[str, str, float, str]]] = defaultdict(list)
    dropped = 0
    for line, r in iter_jsonl(data / AUTOJ_CRITIQUES):
        m = _AUTOJ_DATA.search(r["usrmsg"])
        if m is None:
            raise ValueError(f"{data / AUTOJ_CRITIQUES}:{line}: usrmsg has no [Query] / [Response] block")
        query, response = m.group(1).strip(), m.group(2).strip()
        if _query_key(query) in test:
            dropped += 1
            continue
        by_query[query].append((response, _clean_rating(r["target_output"]), float(r["pred_score"]), r["scenario"]))
    out = []
    for q_index, (query, graded) in enumerate(sorted(by_query.items())):
        for k, (i, j) in enumerate(itertools.combinations(range(len(graded)), 2)):
            if _rng(seed, "autoj", query, k).random() < 0.5:
                i, j = j, i
            (r1, c1, s1, scen), (r2, c2, s2, _) = graded[i], graded[j]
            out.append(_record("autoj_critiques", f"autoj-{q_index:04d}-{k:02d}", 4_000_000 + q_index * 100 + k,
                               query, r1, r2, format_score_line([s1, s2]) + "\n" + _two_explanations(c1, c2),
                               (s1, s2), scenario=scen))
    return out, dropped


def autoj_test_inputs(data: Path) -> Iterable[dict]:
    """The human-labelled development set as `jlm judge` input (question_id = row index)."""
    for i, (_, r) in enumerate(iter_jsonl(data / AUTOJ_TEST)):
        yield {"question_id": i, "question_body": r["prompt"], "answer1_body": r["response 1"],
               "answer2_body": r["response 2"], "metadata": {"source": "autoj_test", "scenario": r["scenario"]}}


# -------------------------------------------------------------------------------------------- build
def _balance(records: list[dict]) -> dict[str, int]:
    c = Counter(win_label(*r["score"]) for r in records)
    return {"1 wins": c[1], "tie": c[0], "2 wins": c[-1]}


def build(data: Path, out: Path, *, sources: Iterable[str] = SOURCES, mtbench_pairs_per_turn: int = 24,
          val_questions: int = 16, alpaca_val_share: float = 0.05, seed: int = 0) -> dict:
    """Write the files of the module docstring; returns the summary (also out/summary.json)."""
    data, out = Path(data), Path(out)
    sources = tuple(sources)
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(unknown)}; sources: {', '.join(SOURCES)}")
    missing = [str(data / p) for p in (MTBENCH_GRADES, AUTOJ_TEST) if not (data / p).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found: --data must be the repository's data/ folder")
    train: list[dict] = []
    summary: dict[str, Any] = {"sources": {}}
    if "mtbench" in sources:
        tr, val, val_ids = build_mtbench(data, pairs_per_turn=mtbench_pairs_per_turn, n_val=val_questions, seed=seed)
        train += tr
        drop = {"text", "score", "reference", "text_w_reference", "score_w_reference"}
        write_jsonl(out / "val.jsonl", ({k: v for k, v in r.items() if k not in drop} for r in val))
        write_jsonl(out / "val_gpt4.jsonl",
                    ({"question_id": r["question_id"], "text": r["text"], "score": r["score"]} for r in val))
        write_jsonl(out / "val_gpt4_with_reference.jsonl",
                    ({"question_id": r["question_id"], "text": r.get("text_w_reference", r["text"]),
                      "score": r.get("score_w_reference", r["score"])} for r in val))
        write_jsonl(out / "val_references.jsonl",
                    ({"question_id": r["question_id"], "reference": r.get("reference")} for r in val))
        summary["sources"]["mtbench"] = {
            "train": len(tr), "val": len(val), "val_questions": sorted(val_ids),
            "train_questions": len({r["metadata"]["mtbench_question_id"] for r in tr}),
            "train_with_reference": sum("reference" in r for r in tr), "val_with_reference": sum("reference" in r for r in val),
            "train_labels": _balance(tr), "val_labels": _balance(val)}
    if "alpaca_eval" in sources:
        tr, val = build_alpaca(data, val_share=alpaca_val_share, seed=seed)
        train += tr
        write_jsonl(out / "alpaca_val.jsonl", ({k: v for k, v in r.items() if k not in ("text", "score")} for r in val))
        write_jsonl(out / "alpaca_val_gpt4.jsonl",
                    ({"question_id": r["question_id"], "text": r["text"], "score": r["score"]} for r in val))
        summary["sources"]["alpaca_eval"] = {
            "train": len(tr), "val": len(val), "val_instructions": len({r["question_body"] for r in val}),
            "train_labels": _balance(tr), "val_labels": _balance(val)}
    if "offsetbias" in sources:
        tr = build_offsetbias(data, seed=seed)
        train += tr
        summary["sources"]["offsetbias"] = {"train": len(tr), "train_labels": _balance(tr)}
    if "autoj" in sources:
        tr, dropped = build_autoj(data, seed=seed)
        train += tr
        summary["sources"]["autoj"] = {"train": len(tr), "critiques_dropped_test_query": dropped,
                                       "train_labels": _balance(tr)}
    # the Auto-J test set shares queries with the other sets (39 MT-bench turn-1 questions, 11 AlpacaEval
    # instructions): drop those pairs, so that no development-set question is ever trained on
    test = {_query_key(r["question_body"]) for r in autoj_test_inputs(data)}
    shared = Counter(r["metadata"]["source"] for r in train if _query_key(r["question_body"]) in test)
    train = [r for r in train if _query_key(r["question_body"]) not in test]
    summary["dropped_autoj_test_query"] = dict(sorted(shared.items()))
    summary["train"] = len(train)
    summary["autoj_test"] = write_jsonl(out / "autoj_test.jsonl", autoj_test_inputs(data))
    write_jsonl(out / "train.jsonl", train)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jlm data build", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data"), help="the repository's data/ folder (default: data)")
    p.add_argument("--out", type=Path, default=Path("runs/data"), help="output folder (default: runs/data)")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES, help="training sources")
    p.add_argument("--mtbench-pairs", type=int, default=24, help="MT-bench pairs per (question, turn); 0 = all 171")
    p.add_argument("--val-questions", type=int, default=16, help="MT-bench questions held out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        s = build(args.data, args.out, sources=args.sources, mtbench_pairs_per_turn=args.mtbench_pairs,
                  val_questions=args.val_questions, seed=args.seed)
    except (OSError, ValueError) as e:
        print(f"jlm data build: {e}", file=sys.stderr)
        return 2
    for name, c in s["sources"].items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items() if not isinstance(v, (dict, list))) +
              (f"; labels {c['train_labels']}" if "train_labels" in c else ""))
    print(f"dropped for sharing a question with the Auto-J test set: {s['dropped_autoj_test_query']}")
    print(f"wrote {args.out}/train.jsonl ({s['train']} pairs), val*.jsonl, autoj_test.jsonl ({s['autoj_test']} pairs)")
    return 0


def data_main(argv: list[str]) -> int:
    """`jlm data SUBCOMMAND`: only `build` for now."""
    if not argv or argv[0] != "build":
        print("usage: jlm data build [--data DIR] [--out DIR] [--sources ...]", file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
