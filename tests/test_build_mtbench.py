"""scripts/build_mtbench_judge_data.py: answer extraction, pairing, split by question, output files."""
import gzip
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from jlm.formats.records import read_judgelm
from jlm.metrics.cli import main as eval_main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_mtbench_judge_data.py"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
spec = importlib.util.spec_from_file_location("build_mtbench_judge_data", SCRIPT)
B = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = B  # dataclasses look their module up there
spec.loader.exec_module(B)


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
    assert B.clean_explanation("Good answer. Rating: [[9]]") == "Good answer."
    assert B.clean_explanation('Fine.\n\nI would rate it as follows: "Rating: [[8.5]]".') == \
        "Fine.\n\nI would rate it as follows:"
    assert B.clean_explanation("Therefore I rate it a [[10]].") == "Therefore I rate it a 10."
    assert B.clean_explanation("Poor. [[1]]\n") == "Poor. 1"


def test_judgement_text():
    g1 = B.Grade(81, 2, "m1", ("a",), "Assistant A's reply to the second question is weak.", 3.0, False, "")
    g2 = B.Grade(81, 2, "m2", ("b",), "Strong.", 8.5, False, "")
    assert B.judgement_text(g1, g2) == ("3 8.5\nAssistant 1: Assistant 1's reply to the second question is weak."
                                        "\n\nAssistant 2: Strong.")


def test_split_questions_stratified_and_seeded():
    questions = {81 + i: {"category": f"c{i // 10}"} for i in range(80)}
    val = B.split_questions(questions, 16, seed=0)
    assert len(val) == 16
    assert Counter(questions[q]["category"] for q in val) == {f"c{k}": 2 for k in range(8)}
    assert B.split_questions(questions, 16, seed=0) == val
    assert B.split_questions(questions, 16, seed=1) != val
    assert len(B.split_questions(questions, 5, seed=0)) == 5


def test_make_pairs():
    grades = [B.Grade(90, 1, f"m{i}", ("x",), "e", float(i), False, "") for i in range(6)]
    pairs = B.make_pairs(grades, 8, seed=0)
    assert pairs == B.make_pairs(grades, 8, seed=0)
    assert len({frozenset((a.model, b.model)) for a, b in pairs}) == 8
    assert all(a.model != b.model for a, b in pairs)
    assert len(B.make_pairs(grades, 0, seed=0)) == 15
    first_sorted = sum(a.model < b.model for a, b in B.make_pairs(grades, 0, seed=0))
    assert 0 < first_sorted < 15  # orders are drawn, not always sorted


TURNS = {81: ("W1?", "W2?"), 82: ("X1?", "X2?"), 111: ("M1?", "M2?"), 112: ("N1?", "N2?")}


def make_data(root: Path) -> Path:
    """A miniature copy of the shared data layout: 4 questions (one math), 4 models, 2 turns."""
    (root / "mtbench_fastchat/mt_bench/reference_answer").mkdir(parents=True)
    (root / "mtbench_gpt4_judgments_forks").mkdir(parents=True)
    questions = [{"question_id": q, "category": "math" if q > 100 else "writing", "turns": list(t)}
                 for q, t in TURNS.items()]
    (root / B.QUESTIONS).write_text("".join(json.dumps(q) + "\n" for q in questions))
    refs = {111: ["m-ref-1", "m-ref-2"], 112: ["n-ref-1", "n-ref-2"]}
    (root / B.REFERENCES).write_text("".join(
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
    with gzip.open(root / B.GRADES, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_build_end_to_end(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    out = tmp_path / "out"
    assert B.main(["--data", str(data), "--out", str(out), "--pairs-per-turn", "4", "--val-questions", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train: 16 pairs from 2 questions" in printed and "val: 16 pairs from 2 questions" in printed
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
    B.main(["--data", str(data), "--out", str(tmp_path / "again"), "--pairs-per-turn", "4", "--val-questions", "2"])
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_build_rejects_bad_grades(tmp_path):
    data = make_data(tmp_path / "data")
    with gzip.open(data / B.GRADES, "rt") as f:
        rows = [json.loads(x) for x in f]
    rows.append(rows[0])
    with gzip.open(data / B.GRADES, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=f"line {len(rows)}: second grade of model0"):
        B.build(data, tmp_path / "out")


@pytest.mark.skipif(not (SHARED / B.GRADES).exists(), reason="shared MT-bench grades not present")
def test_build_real_data(tmp_path):
    s = B.build(SHARED, tmp_path / "out")
    assert s["grades"] == 3040
    assert (s["train"]["pairs"], s["val"]["pairs"]) == (64 * 2 * 24, 16 * 2 * 24)
    assert len(s["val_questions"]) == 16 and set(s["val_categories"].values()) == {2}
    assert sum(s["val"]["label balance"].values()) == s["val"]["pairs"]
