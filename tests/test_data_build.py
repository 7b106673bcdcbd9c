"""`jlm data build` (jlm/data/build.py): every source's pairing and score lines, splits by question,
the documented counts on the shipped data/, determinism, clear errors."""
import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

import jlm.data.build as B
from jlm.cli import main as jlm_main
from jlm.formats.records import read_judgelm
from jlm.metrics.cli import main as eval_main

DATA = Path(__file__).resolve().parents[1] / "data"


def turn1_prompt(q, a, ref=None):
    ref_block = f"[The Start of Reference Answer]\n{ref}\n[The End of Reference Answer]\n\n" if ref else ""
    return (f"[Instruction]\nPlease act as an impartial judge.\n\n[Question]\n{q}\n\n{ref_block}"
            f"[The Start of Assistant's Answer]\n{a}\n[The End of Assistant's Answer]")


def turn2_prompt(q1, q2, a1, a2, ref=None):
    ref_block = ""
    if ref:
        ref_block = (f"<|The Start of Reference Answer|>\n\n### User:\n{q1}\n\n### Reference answer:\n{ref[0]}\n\n"
                     f"### User:\n{q2}\n\n### Reference answer:\n{ref[1]}\n\n<|The End of Reference Answer|>\n\n\n")
    return (f"{ref_block}<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{q1}\n\n"
            f"### Assistant A:\n{a1}\n\n### User:\n{q2}\n\n### Assistant A:\n{a2}\n\n"
            "<|The End of Assistant A's Conversation with User|>")


def test_extract_replies():
    assert B.extract_replies(turn1_prompt("Q?", "line1\nline2"), ["Q?", "F?"], 1) == ("line1\nline2",)
    tricky = "first\n\n### User:\nfake header"
    p = turn2_prompt("Q?", "F?", tricky, "second", ref=("r1", "r2"))
    assert B.extract_replies(p, ["Q?", "F?"], 2) == (tricky, "second")
    with pytest.raises(ValueError, match="turn-2"):
        B.extract_replies(p, ["Other question", "F?"], 2, "x")
    with pytest.raises(ValueError, match="cannot find"):
        B.extract_replies("no markers", ["Q?"], 1, "x")


def test_clean_explanation():
    assert B._clean_rating("Good answer. Rating: [[9]]") == "Good answer."
    assert B._clean_rating('Fine.\n\nI would rate it as follows: "Rating: [[8.5]]".') == \
        "Fine.\n\nI would rate it as follows:"
    assert B._clean_rating("Therefore I rate it a [[10]].") == "Therefore I rate it a 10."
    assert B._clean_rating("Poor. [[1]]\n") == "Poor. 1"


def test_judgement_text():
    g1 = B.Grade(81, 2, "m1", ("a",), "Assistant A's reply to the second question is weak.", 3.0, False)
    g2 = B.Grade(81, 2, "m2", ("b",), "Strong.", 8.5, False)
    rec = B.mtbench_pair(g1, g2, 0, {"turns": ["Q1", "Q2"], "category": "writing"}, None)
    assert rec["text"] == ("3 8.5\nAssistant 1: Assistant 1's reply to the second question is weak."
                           "\n\nAssistant 2: Strong.")


def test_split_questions_stratified_and_seeded():
    questions = {81 + i: {"category": f"c{i // 10}"} for i in range(80)}
    val = B.split_questions(questions, 16, seed=0)
    assert len(val) == 16
    assert Counter(questions[q]["category"] for q in val) == {f"c{k}": 2 for k in range(8)}
    assert B.split_questions(questions, 16, seed=0) == val
    assert B.split_questions(questions, 16, seed=1) != val
    assert len(B.split_questions(questions, 5, seed=0)) == 5


def test_mtbench_pairs():
    grades = [B.Grade(90, 1, f"m{i}", ("x",), "e", float(i), False) for i in range(6)]
    pairs = B.mtbench_pairs(grades, 8, seed=0)
    assert pairs == B.mtbench_pairs(grades, 8, seed=0)
    assert len({frozenset((a.model, b.model)) for a, b in pairs}) == 8
    assert all(a.model != b.model for a, b in pairs)
    assert len(B.mtbench_pairs(grades, 0, seed=0)) == 15
    first_sorted = sum(a.model < b.model for a, b in B.mtbench_pairs(grades, 0, seed=0))
    assert 0 < first_sorted < 15  # orders are drawn, not always sorted


TURNS = {81: ("W1?", "W2?"), 82: ("X1?", "X2?"), 111: ("M1?", "M2?"), 112: ("N1?", "N2?")}


def make_data(root: Path) -> Path:
    """A miniature data/ folder: MT-bench with 4 questions (one math), 4 models, 2 turns; the real
    Auto-J test file (the builder always writes the development set)."""
    (root / "mtbench").mkdir(parents=True)
    (root / "autoj").mkdir(parents=True)
    shutil.copy(DATA / B.AUTOJ_TEST, root / B.AUTOJ_TEST)
    questions = [{"question_id": q, "category": "math" if q > 100 else "writing", "turns": list(t)}
                 for q, t in TURNS.items()]
    (root / B.MTBENCH_QUESTIONS).write_text("".join(json.dumps(q) + "\n" for q in questions))
    refs = {111: ["m-ref-1", "m-ref-2"], 112: ["n-ref-1", "n-ref-2"]}
    (root / B.MTBENCH_REFERENCES).write_text("".join(
        json.dumps({"question_id": q, "choices": [{"index": 0, "turns": t}]}) + "\n" for q, t in refs.items()))
    rows = []
    for q in questions:
        qid, (q1, q2) = q["question_id"], q["turns"]
        math = q["category"] == "math"
        for m in range(4):
            a1, a2 = f"{qid}-model{m}-reply1", f"{qid}-model{m}-reply2"
            rows.append({"question_id": qid, "model": f"model{m}", "turn": 1, "score": (m * 3) % 10 + 1,
                         "judge": ["gpt-4", "single-math-v1" if math else "single-v1"],
                         "user_prompt": turn1_prompt(q1, a1, refs.get(qid, [None])[0]),
                         "judgment": f"The answer of model {m} is fine. Rating: [[{(m * 3) % 10 + 1}]]"})
            rows.append({"question_id": qid, "model": f"model{m}", "turn": 2, "score": 10 - m,
                         "judge": ["gpt-4", "single-math-v1-multi-turn" if math else "single-v1-multi-turn"],
                         "user_prompt": turn2_prompt(q1, q2, a1, a2, refs.get(qid)),
                         "judgment": f"Assistant A did ok. Rating: [[{10 - m}]]"})
    with gzip.open(root / B.MTBENCH_GRADES, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_build_end_to_end(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), "--mtbench-pairs", "4", "--val-questions", "2", "--sources", "mtbench"]
    assert B.main(args) == 0
    printed = capsys.readouterr().out
    assert "mtbench: train 16, val 16, train_questions 2" in printed
    assert "1 wins" in printed and "tie" in printed and "2 wins" in printed

    train = read_judgelm(out / "train.jsonl")
    val = read_judgelm(out / "val.jsonl", gpt4=out / "val_gpt4.jsonl",
                       gpt4_w_reference=out / "val_gpt4_with_reference.jsonl", references=out / "val_references.jsonl")
    assert len(train) == 16 and len(val) == 16 and not train.dropped and not val.dropped
    qs = lambda ss: {s.extra["metadata"]["mtbench_question_id"] for s in ss}
    assert not qs(train) & qs(val) and qs(train) | qs(val) == {81, 82, 111, 112}
    assert {s.extra["metadata"]["category"] for s in val} == {"writing", "math"}  # one of each category
    assert len({s.question_id for s in train} | {s.question_id for s in val}) == 32
    for s in list(train) + list(val):
        meta = s.extra["metadata"]
        math = meta["category"] == "math"
        assert s.judgement_needs_reference == math and (s.reference is not None) == math
        assert s.judgement.split("\n")[0] == " ".join(f"{x:g}" for x in s.scores)
        assert "Rating" not in s.judgement and "Assistant A" not in s.judgement
        assert s.judgement.split("\n", 1)[1].startswith("Assistant 1: ") and "\n\nAssistant 2: " in s.judgement
        m1, m2 = s.model_ids
        if meta["turn"] == 1:
            assert s.answers == (f"{meta['mtbench_question_id']}-{m1}-reply1", f"{meta['mtbench_question_id']}-{m2}-reply1")
        else:
            q1, q2 = TURNS[meta["mtbench_question_id"]]
            assert s.question == f"### User turn 1:\n{q1}\n\n### User turn 2 (judge the replies to this turn):\n{q2}"
            assert s.answers[0].startswith("### Assistant turn 1:\n") and s.answers[0].endswith(f"{m1}-reply2")
            if math:
                assert s.reference.endswith("-ref-2") and "### Assistant turn 1:" in s.reference
        assert m1 != m2
    # the val GPT-4 file can be fed straight to `jlm eval` (a perfect judge agrees 100%)
    preds = out / "preds.jsonl"
    preds.write_text("".join(json.dumps({"question_id": json.loads(x)["question_id"],
                                         "pred_text": json.loads(x)["text"]}) + "\n"
                             for x in (out / "val_gpt4.jsonl").read_text().splitlines()))
    assert eval_main(["--gt", str(out / "val_gpt4.jsonl"), "--pred", str(preds), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["agreement"] == 1.0
    # same inputs, same outputs
    B.main([*args[:2], "--out", str(tmp_path / "again"), *args[4:]])
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_build_rejects_bad_grades(tmp_path):
    data = make_data(tmp_path / "data")
    with gzip.open(data / B.MTBENCH_GRADES, "rt") as f:
        rows = [json.loads(x) for x in f]
    rows.append(rows[0])
    with gzip.open(data / B.MTBENCH_GRADES, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=f"jsonl.gz:{len(rows)}: second grade of model0"):
        B.build(data, tmp_path / "out", sources=["mtbench"])


def test_real_data_counts_and_question_splits(tmp_path):
    """The shipped data/ gives the counts data/README.md documents, and no held-out question, instruction
    or Auto-J test query is trained on."""
    s = B.build(DATA, tmp_path / "out")
    src = s["sources"]
    assert (src["mtbench"]["train"], src["mtbench"]["val"]) == (64 * 2 * 24, 16 * 2 * 24)
    assert len(src["mtbench"]["val_questions"]) == 16
    assert (src["alpaca_eval"]["train"], src["alpaca_eval"]["val"]) == (2407, 124)
    assert src["offsetbias"]["train"] == 1000
    assert (src["autoj"]["train"], src["autoj"]["critiques_dropped_test_query"]) == (94, 127)
    # pairs whose question is also an Auto-J test query are dropped: 39 MT-bench turn-1 questions x 24
    assert s["dropped_autoj_test_query"] == {"mt_bench": 39 * 24, "alpaca_eval": 39}
    assert s["train"] == 2136 + 2368 + 1000 + 94 and s["autoj_test"] == 1392
    train = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert Counter(r["metadata"]["source"] for r in train) == {
        "mt_bench": 2136, "alpaca_eval": 2368, "offsetbias": 1000, "autoj_critiques": 94}
    val_q = set(src["mtbench"]["val_questions"])
    assert not {r["metadata"]["mtbench_question_id"] for r in train if r["metadata"]["source"] == "mt_bench"} & val_q
    alpaca_val = {json.loads(x)["question_body"] for x in (tmp_path / "out" / "alpaca_val.jsonl").read_text().splitlines()}
    assert alpaca_val and not alpaca_val & {r["question_body"] for r in train}
    test_keys = {B._query_key(json.loads(x)["question_body"])
                 for x in (tmp_path / "out" / "autoj_test.jsonl").read_text().splitlines()}
    assert not test_keys & {B._query_key(r["question_body"]) for r in train}
    assert len({r["question_id"] for r in train}) == len(train)  # ids are unique
    # verdict-only sets: positions shuffled, so the first answer wins about half the time
    for source in ("alpaca_eval", "offsetbias"):
        first = [r["score"][0] > r["score"][1] for r in train if r["metadata"]["source"] == source]
        assert 0.45 < sum(first) / len(first) < 0.55, source


def test_verdict_sets_score_lines_and_names():
    row = {"instruction": "Q", "dataset": "oasst", "output_1": "base", "generator_1": "gpt4_1106_preview",
           "output_2": "other", "generator_2": "m2", "preference": 2.0,
           "raw_completion": {"concise_explanation": "Model 'm' was better; Model M's answer was short. 'm' wins."},
           "referenced_models": {"m": "output_2", "M": "output_1"}}
    recs = [B.alpaca_record(row, 0, seed) for seed in range(20)]
    for r in recs:
        flipped = r["metadata"]["flipped"]
        assert (r["answer1_body"], r["answer2_body"]) == (("other", "base") if flipped else ("base", "other"))
        win, lose = ("1", "2") if flipped else ("2", "1")
        assert r["text"] == (("8 4" if flipped else "4 8") + f"\nAssistant {win} was better; Assistant {lose}'s "
                             f"answer was short. Assistant {win} wins.")
        assert r["score"] == ([8.0, 4.0] if flipped else [4.0, 8.0])
    assert {r["metadata"]["flipped"] for r in recs} == {True, False}
    tie = B.alpaca_record({**row, "preference": 1.5, "referenced_models": None}, 1, 0)
    assert tie["text"] == "6 6"  # no name map: the score line alone


def test_jlm_data_build_cli_errors(tmp_path, capsys):
    assert jlm_main(["data", "build", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not found: --data must be the repository's data/ folder" in capsys.readouterr().err
    assert jlm_main(["data"]) == 2
