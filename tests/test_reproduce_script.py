"""scripts/reproduce_smollm2_judge.py: the evaluation subsets (--limit) keep every category and keep
ground truth and judged samples aligned, which `jlm eval` matches by question id (Auto-J: by index)."""
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_smollm2_judge.py"
spec = importlib.util.spec_from_file_location("reproduce_smollm2_judge", SCRIPT)
R = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = R
spec.loader.exec_module(R)


@pytest.mark.parametrize("n,limit", [(768, 96), (10, 3), (7, 7), (5, 9), (4, None)])
def test_spread_is_sorted_distinct_and_covers_the_range(n, limit):
    idx = R.spread(n, limit)
    assert len(idx) == min(n, limit or n)
    assert idx == sorted(set(idx)) and idx[0] == 0 and idx[-1] < n
    if limit and limit < n:  # evenly spaced: no gap larger than the stride rounded up
        assert max(b - a for a, b in zip(idx, idx[1:])) <= -(-n // limit)


def _write(path: Path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def test_eval_sets_subsets_stay_aligned(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    for d in (data, work):
        d.mkdir(parents=True)
    cats = ["writing", "math", "coding", "stem"]  # grouped by category, as the built files are
    val = [{"question_id": 1000 + i, "question_body": f"q{i}", "answer1_body": "a", "answer2_body": "b",
            "metadata": {"category": cats[i // 6]}} for i in range(24)]
    _write(data / "val.jsonl", val)
    _write(data / "val_gpt4.jsonl", [{"question_id": r["question_id"], "score": [i % 10, 5]} for i, r in enumerate(val)])
    _write(data / "val_gpt4_with_reference.jsonl",
           [{"question_id": r["question_id"], "score": [3, i % 10]} for i, r in enumerate(val)])
    with_ref = {r["question_id"] for r in val if r["metadata"]["category"] in ("math", "coding")}
    _write(data / "val_references.jsonl",
           [{"question_id": q, "reference": {"text": f"ref{q}"}} for q in sorted(with_ref)])
    autoj = [{"scenario": "s", "label": i % 3, "prompt": f"p{i}", "response 1": "x", "response 2": "y"}
             for i in range(30)]
    autoj_path = tmp_path / "autoj.jsonl.gz"
    _write(autoj_path, autoj, gz=True)

    sets = R.eval_sets(data, work, limit=8, autoj_limit=8, autoj_path=autoj_path)

    mt = sets["mtbench"]
    assert {r["metadata"]["category"] for r in mt["samples"]} == set(cats)
    gt = R.read_jsonl(mt["gt"])
    assert [g["question_id"] for g in gt] == [r["question_id"] for r in mt["samples"]]
    assert all(g["answer1_body"] == "a" and g["answer2_body"] == "b" for g in gt)  # for jlm eval's length_corr_*

    ref = sets["mtbench+ref"]
    assert len(ref["samples"]) == 8 and {r["question_id"] for r in ref["samples"]} <= with_ref
    assert ref["reference"] == [f"ref{r['question_id']}" for r in ref["samples"]]
    assert [g["question_id"] for g in R.read_jsonl(ref["gt"])] == [r["question_id"] for r in ref["samples"]]
    hidden = sets["mtbench+ref-hidden"]  # table 6: the same pairs and labels, no reference in the prompt
    assert hidden["samples"] == ref["samples"] and hidden["gt"] == ref["gt"] and hidden["reference"] is None

    aj = sets["autoj-human"]
    gt_aj = R.read_jsonl(aj["gt"])  # row i is the ground truth of judged sample i
    assert [g["prompt"] for g in gt_aj] == [s.question for s in aj["samples"]]
    assert len(gt_aj) == 8 and gt_aj[-1]["prompt"] != "p7"  # spread over the file, not its head

    full = R.eval_sets(data, work, limit=None, autoj_path=autoj_path)
    assert len(full["mtbench"]["samples"]) == 24 and len(full["autoj-human"]["samples"]) == 30


def test_evaluate_set_reads_every_readout_and_the_margin_from_kept_judgements(tmp_path):
    """Metrics come from the kept judgements file alone: the written line, the distribution's mode and
    its most probable verdict, the expected-score margin (margin_auc), parse failures and P(no score line)."""
    gt = tmp_path / "gt.jsonl"
    teacher = [(8, 3), (2, 9), (7, 7), (9, 1)]
    lengths = [(90, 9), (9, 90), (40, 40), (500, 50)]  # the longer answer wins rows 0 and 3, loses row 1
    _write(gt, [{"question_id": i, "text": f"{a} {b}\nbecause", "answer1_body": "x" * n1, "answer2_body": "y" * n2}
                for i, ((a, b), (n1, n2)) in enumerate(zip(teacher, lengths))])

    def order(text, mode, expected, p_win=(0.2, 0.6, 0.2)):
        return {"pred_text": text, "error": None, "distribution": {
            "mode": list(mode), "expected": list(expected), "p_win": list(p_win), "residual": 0.25}}

    rows = [  # swap records speak of the swapped order: answer 1 there is the original answer 2
        {"question_id": 0, "original": order("8 2", (8, 2), (7.0, 3.0)), "swap": order("2 8", (2, 8), (3.0, 6.0))},
        {"question_id": 1, "original": order("junk", (3, 9), (3.0, 8.0)), "swap": order("?", (9, 3), (8.0, 2.0))},
        {"question_id": 2, "original": order("5 5", (5, 5), (5.0, 5.0)), "swap": order("5 5", (5, 5), (5.0, 5.0))},
        # P(tie) leads in the first order, the original answer 1 in the second: averaged (0.475, 0.425, 0.1)
        {"question_id": 3, "original": order("9 1", (6, 6), (9.0, 2.0), (0.4, 0.45, 0.15)),
         "swap": order("1 9", (6, 6), (2.0, 9.0), (0.05, 0.4, 0.55))},
    ]
    s = {"gt": gt, "format": "judgelm"}
    m = R.evaluate_set(rows, s, str(tmp_path / "j.set"), tmp_path / "log.txt")
    assert m["n"] == 4 and m["parse_failures"] == 1 and m["residual"] == pytest.approx(0.25)
    assert m["agreement"] == pytest.approx(3 / 4)  # row 1 does not parse: a tie against "2 wins"
    assert m["mode"]["agreement"] == pytest.approx(3 / 4)  # row 3's mode "6 6" is a tie against "1 wins"
    # p_win: rows 0-2 are ties in both orders (row 2 right); row 3 a tie in the first, 1st wins averaged
    assert m["p_win"]["agreement_sequential"] == pytest.approx(1 / 4)
    assert m["p_win"]["agreement"] == pytest.approx(2 / 4) and m["p_win"]["consistency"] == pytest.approx(3 / 4)
    # averaged margins (1st wins: rows 0, 3 -> 3.5, 7.0; 2nd wins: row 1 -> -5.5): perfectly separated
    assert m["margin_auc"] == pytest.approx(1.0) and m["mode"]["margin_auc"] == pytest.approx(1.0)
    # the answer texts in the ground truth reach jlm eval: teacher and judge margins lean the same way on length
    assert m["length_corr_truth"] > 0.8 and m["length_corr_margin"] > 0.8
    assert (tmp_path / "eval.j.set" / "metrics.json").exists() and (tmp_path / "eval.j.set.mode").is_dir()
    md = R.results_markdown({"judge": {"mtbench": m}}, {})
    length = f"{m['length_corr_margin']:+.2f} / {m['length_corr_truth']:+.2f}"
    assert "| judge | most probable verdict, orders averaged | 4 | 50.0 |" in md
    assert "| judge | written line | 4 | 75.0 |" in md and f"| 25% | 25.0% | 1.000 | {length} | - |" in md


def test_baselines_are_the_majority_class_and_the_longer_answer(tmp_path):
    """Two judges that read no content, scored by `jlm eval` like any judge: on these four pairs the
    teacher's majority is "2 wins" (2 of 4) and the longer answer wins 3 of 4 (one tie by length)."""
    gt = tmp_path / "gt.jsonl"
    teacher = [(8, 3), (2, 9), (1, 6), (5, 5)]
    bodies = [("xxxx", "y"), ("x", "yyyy"), ("xx", "y"), ("xx", "yy")]
    samples = [{"question_id": i, "answer1_body": a, "answer2_body": b} for i, (a, b) in enumerate(bodies)]
    _write(gt, [{"question_id": i, "text": f"{t[0]} {t[1]}\nwhy", "score": list(t)} for i, t in enumerate(teacher)])
    (tmp_path / "work").mkdir()
    res = R.baselines({"mtbench": {"samples": samples, "gt": gt, "format": "judgelm"}}, tmp_path / "work",
                      tmp_path / "log.txt")
    assert res["majority class"]["mtbench"]["agreement"] == pytest.approx(2 / 4)
    longer = res["longer answer wins"]["mtbench"]
    assert longer["agreement"] == pytest.approx(3 / 4)  # rows 0, 1 and 3 (equal lengths: a tie, as taught)
    assert longer["consistency"] == pytest.approx(1.0)  # it reads lengths, not positions
