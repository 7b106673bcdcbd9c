"""MM-Vet files and judging: the reader, seeded <OR> resolution, the VQA prompt, 0-1 scores and totals.

The fixture under tests/fixtures/mmvet is hand-written in MM-Vet's format (no MM-Vet data ships).
Judging uses the bigram judge of test_judge.py, whose greedy output after "### Response:10" is " 3".
"""
import json
from pathlib import Path

import pytest

from jlm.formats.mmvet import mmvet_item, read_mmvet, resolve_ground_truth
from jlm.formats.prompts import VQA_PROMPT, build_prompt
from jlm.formats.records import FormatError
from jlm.infer.judge import Judgement
from jlm.infer.mmvet import judge_mmvet, mmvet_score
from test_judge import bigram_judge

FIX = Path(__file__).parent / "fixtures" / "mmvet"
GT, PRED = FIX / "mm-vet-gt.json", FIX / "predictions.json"


def test_reader_joins_gt_and_predictions():
    s = read_mmvet(GT, PRED)
    assert [x.sample_id for x in s] == ["v1_0", "v1_1", "v1_2"]
    assert s[0].ground_truth == "-1<AND>-5" and s[0].prediction == "x = -1 or x = -5"
    assert s[0].capability == ("ocr", "math") and s[0].imagename == "v1_0.png"


def test_reader_errors_name_file_and_field(tmp_path):
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"v1_0": "a", "v1_1": "b"}))
    with pytest.raises(FormatError, match=r"p\.json: field 'v1_2': no prediction"):
        read_mmvet(GT, pred)
    assert [x.sample_id for x in read_mmvet(GT, pred, allow_missing=True)] == ["v1_0", "v1_1"]
    pred.write_text(json.dumps({"v1_0": "a", "v1_1": "b", "v1_2": 3}))
    with pytest.raises(FormatError, match="'v1_2': expected the predicted answer string"):
        read_mmvet(GT, pred)
    pred.write_text(json.dumps({"v1_0": "a", "v1_1": "b", "v1_2": "c", "v9": "d"}))
    with pytest.raises(FormatError, match="'v9': sample id not in the ground truth"):
        read_mmvet(GT, pred)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"v1_0": {"question": "q"}}))
    with pytest.raises(FormatError, match=r"gt\.json: field 'v1_0.answer': missing"):
        read_mmvet(gt, pred)
    gt.write_text("{\n  oops")
    with pytest.raises(FormatError, match=r"gt\.json:2: not valid JSON"):
        read_mmvet(gt, pred)


def test_ground_truth_resolution_is_seeded_per_sample():
    gt = "red<OR>dark red<OR>crimson<OR>scarlet"
    picks = {resolve_ground_truth(gt, f"v1_{i}", seed=0) for i in range(40)}
    assert picks == {"red", "dark red", "crimson", "scarlet"}  # every alternative can be picked
    assert [resolve_ground_truth(gt, "v1_1", 0) for _ in range(5)] == [resolve_ground_truth(gt, "v1_1", 0)] * 5
    assert len({resolve_ground_truth(gt, "v1_1", s) for s in range(40)}) > 1  # the seed matters
    assert resolve_ground_truth("-1<AND>-5", "v1_0") == "-1 and -5"
    assert resolve_ground_truth("3", "v1_2") == "3"


def test_vqa_item_and_prompt():
    s = read_mmvet(GT, PRED)[0]
    it = mmvet_item(s, seed=0)
    assert it.answers == ("-1 and -5", "x = -1 or x = -5") and it.reference == "-1<AND>-5"
    p = build_prompt(it.question, it.answers, it.reference, mode="vqa")
    assert "[Reference Answer]\n-1<AND>-5\n\n" in p and VQA_PROMPT in p and p.endswith("### Response:10")


def test_judge_mmvet_scores_and_totals():
    samples = read_mmvet(GT, PRED)
    res = judge_mmvet(bigram_judge(), samples, seed=0)
    assert {k: r.text for k, r in res.judgements.items()} == {"v1_0": "3", "v1_1": "3", "v1_2": "3"}
    assert res.scores == {"v1_0": 0.3, "v1_1": 0.3, "v1_2": 0.3}
    assert res.total == pytest.approx(30.0)
    assert res.by_capability == pytest.approx({"math": 30.0, "ocr": 30.0, "rec": 30.0})
    # two missing predictions count as 0 in MM-Vet's total
    assert judge_mmvet(bigram_judge(), samples, n_total=5).total == pytest.approx(18.0)


def test_mmvet_score_clips_and_counts_failures_as_zero():
    def j(scores):
        return Judgement(index=0, question_id=None, mode="vqa", text="", scores=scores)
    assert mmvet_score(j((7.0,))) == 0.7
    assert mmvet_score(j((12.0,))) == 1.0 and mmvet_score(j((-3.0,))) == 0.0
    assert mmvet_score(j(None)) == 0.0
