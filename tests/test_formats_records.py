"""Record readers: JudgeLM (+ companions aligned by question_id), PandaLM, Auto-J; every bad-input case."""
import gzip
import json
from pathlib import Path

import pytest

from jlm.formats.records import (
    FormatError,
    JudgeSample,
    check_aligned,
    pandalm_majority,
    read_autoj_pairwise,
    read_judgelm,
    read_keyed,
    read_pandalm,
    to_judgelm_record,
    write_jsonl,
)

REPO = Path(__file__).resolve().parents[1]
PANDALM_SAMPLE = REPO / "tests" / "fixtures" / "pandalm_testset_first50.json"  # see its .SOURCE.md
AUTOJ_TEST = REPO / "data" / "autoj" / "pairwise_test_human.jsonl.gz"  # see data/autoj/SOURCE.md


def rec(qid, **kw):
    r = {"question_id": qid, "question_body": f"q{qid}", "answer1_body": "a1", "answer2_body": "a2",
         "answer1_model_id": "m1", "answer2_model_id": "m2", "text": "2 8\nAssistant 2 is better.",
         "score": [2.0, 8.0], "review_id": f"r{qid}"}
    r.update(kw)
    return r


def write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_judgelm_fields(tmp_path):
    p = write(tmp_path / "train.jsonl", [
        rec(1, reference={"decoding_method": "None", "text": "R"}, text_w_reference="1 9\n\nwith ref",
            score_w_reference=[1, 9], metadata={}),
        rec(2, answer3_body="a3", text="1 2 3\nthree", score=[1, 2, 3]),
    ])
    samples = read_judgelm(p)
    a, b = samples
    assert a == JudgeSample(
        question_id=1, question="q1", answers=("a1", "a2"), reference="R", judgement="2 8\nAssistant 2 is better.",
        scores=(2.0, 8.0), judgement_w_reference="1 9\n\nwith ref", scores_w_reference=(1.0, 9.0),
        answer_ids=("", ""), model_ids=("m1", "m2"), answer_metadata=(None, None),
        extra={"review_id": "r1", "metadata": {}})
    assert b.answers == ("a1", "a2", "a3") and b.scores == (1.0, 2.0, 3.0) and b.model_ids == ("m1", "m2", "")
    assert samples.dropped == {}


def test_error_records_are_dropped_and_counted(tmp_path):
    p = write(tmp_path / "t.jsonl", [rec(1), rec(2, text="error", score=[-1, -1]), "",
                                     rec(3, reference="R", text_w_reference="error"), rec(4, text="error")])
    samples = read_judgelm(p)
    assert [s.question_id for s in samples] == [1, 3]
    assert samples[1].judgement_w_reference is None and samples[1].reference == "R"
    assert samples.dropped == {"error": 2, "error_w_reference": 1}


def test_unparseable_score_line(tmp_path):
    p = write(tmp_path / "t.jsonl", [rec(1), rec(2, text="8/10 9/10\nbad")])
    with pytest.raises(FormatError) as e:
        read_judgelm(p)
    assert e.value.line == 2 and e.value.field == "text" and str(p) in str(e.value)
    samples = read_judgelm(p, strict=False)
    assert len(samples) == 1 and samples.dropped == {"unparseable": 1}


@pytest.mark.parametrize("line,field,message", [
    ("{not json", None, "invalid JSON"),
    ("[1, 2]", None, "JSON object"),
    (json.dumps({k: v for k, v in rec(5).items() if k != "question_id"}), "question_id", "missing"),
    (json.dumps(rec(True)), "question_id", "integer or string"),
    (json.dumps({k: v for k, v in rec(5).items() if k != "question_body"}), "question_body", "missing"),
    (json.dumps(rec(5, question_body=3)), "question_body", "string"),
    (json.dumps({k: v for k, v in rec(5).items() if k != "answer2_body"}), "answer2_body", "at least 2"),
    (json.dumps(rec(5, text=7)), "text", "string"),
    (json.dumps(rec(5, score=[1])), "score", "2 numbers"),
    (json.dumps(rec(5, score=["1", 2])), "score", "2 numbers"),
    (json.dumps(rec(5, reference={"text": 1})), "reference.text", "string"),
    (json.dumps(rec(5, reference=[1])), "reference", "null"),
    (json.dumps(rec(5, text_w_reference="x y z\n")), "text_w_reference", "scores"),
    (json.dumps(rec(5, metadata={"text_uses_reference": True})), "reference", "no reference"),
])
def test_bad_judgelm_records_name_file_line_field(tmp_path, line, field, message):
    p = write(tmp_path / "bad.jsonl", [rec(1), "", line])
    with pytest.raises(FormatError) as e:
        read_judgelm(p)
    err = e.value
    assert (err.path, err.line, err.field) == (str(p), 3, field)
    assert message in str(err)
    assert str(err).startswith(f"{p}:3:")


def test_companions_aligned_by_question_id(tmp_path):
    main = write(tmp_path / "val.jsonl", [
        {k: v for k, v in rec(q).items() if k not in ("text", "score")} for q in (10, 11, 12)])
    # companions in a different order than the main file: alignment is by id, not position
    gpt4 = write(tmp_path / "gpt4.jsonl", [
        {"question_id": 12, "text": "3 3\ntie", "score": [3, 3]},
        {"question_id": 10, "text": "9 1\nfirst", "score": [9, 1]},
        {"question_id": 11, "text": "error", "score": [-1, -1]},
    ])
    gpt4r = write(tmp_path / "gpt4r.jsonl", [{"question_id": q, "text": f"{q - 9} 5\nref"} for q in (11, 12, 10)])
    refs = write(tmp_path / "refs.jsonl", [
        {"question_id": 10, "reference": {"text": "R10"}}, {"question_id": 11, "reference": None},
        {"question_id": 12, "reference": "R12"}])
    samples = read_judgelm(main, gpt4=gpt4, gpt4_w_reference=gpt4r, references=refs)
    assert [s.question_id for s in samples] == [10, 12]
    s10, s12 = samples
    assert (s10.judgement, s10.scores, s10.reference) == ("9 1\nfirst", (9.0, 1.0), "R10")
    assert (s10.judgement_w_reference, s10.scores_w_reference) == ("1 5\nref", None)
    assert (s12.judgement, s12.scores, s12.reference, s12.judgement_w_reference) == ("3 3\ntie", (3.0, 3.0), "R12",
                                                                                     "3 5\nref")
    assert samples.dropped == {"error": 1}


def test_companion_mismatches(tmp_path):
    main = write(tmp_path / "val.jsonl", [rec(1), rec(2)])
    extra = write(tmp_path / "extra.jsonl", [{"question_id": 1, "text": "1 2"}, {"question_id": 2, "text": "1 2"},
                                             {"question_id": 3, "text": "1 2"}])
    with pytest.raises(FormatError) as e:
        read_judgelm(main, gpt4=extra)
    assert (e.value.path, e.value.line, e.value.field) == (str(extra), 3, "question_id")

    missing = write(tmp_path / "missing.jsonl", [{"question_id": 1, "text": "1 2"}])
    with pytest.raises(FormatError) as e:
        read_judgelm(main, gpt4=missing)
    assert (e.value.path, e.value.line, e.value.field) == (str(main), 2, "question_id")
    assert "no line in" in str(e.value)

    dup = write(tmp_path / "dup.jsonl", [{"question_id": 1, "text": "1 2"}, {"question_id": 1, "text": "1 2"}])
    with pytest.raises(FormatError, match="duplicate") as e:
        read_judgelm(main, gpt4=dup)
    assert e.value.line == 2

    no_text = write(tmp_path / "notext.jsonl", [{"question_id": 1}, {"question_id": 2, "text": "1 2"}])
    with pytest.raises(FormatError) as e:
        read_judgelm(main, gpt4=no_text)
    assert (e.value.line, e.value.field) == (1, "text")

    bad_scores = write(tmp_path / "bad.jsonl", [{"question_id": 1, "text": "1 2 3"}, {"question_id": 2, "text": "1 2"}])
    with pytest.raises(FormatError) as e:
        read_judgelm(main, gpt4=bad_scores)
    assert (e.value.path, e.value.line, e.value.field) == (str(bad_scores), 1, "text")

    dup_main = write(tmp_path / "dupmain.jsonl", [rec(1), rec(1)])
    read_judgelm(dup_main)  # duplicates only matter when aligning
    with pytest.raises(FormatError, match="duplicate") as e:
        read_judgelm(dup_main, references=write(tmp_path / "r.jsonl", [{"question_id": 1, "reference": None}]))
    assert (e.value.path, e.value.line) == (str(dup_main), 2)


def test_roundtrip_through_judgelm_record(tmp_path):
    p = write(tmp_path / "t.jsonl", [
        rec(1, reference={"text": "R"}, text_w_reference="1 9\nref", score_w_reference=[1, 9],
            answer1_metadata={"decoding_method": "top_p_sampling"}, answer2_metadata={"decoding_method": "greedy"},
            metadata={"text_uses_reference": True}),
        rec("abc", answer1_id="x", answer2_id=7)])
    first = read_judgelm(p)
    write_jsonl(tmp_path / "again.jsonl", (to_judgelm_record(s) for s in first))
    again = read_judgelm(tmp_path / "again.jsonl")
    assert list(again) == list(first)
    assert first[0].judgement_needs_reference and first[1].answer_ids == ("x", "7")


def test_gzip_input(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps(rec(1)) + "\n")
    assert read_judgelm(p)[0].question_id == 1


def test_read_keyed_and_check_aligned(tmp_path):
    a = read_keyed(write(tmp_path / "a.jsonl", [{"question_id": 1, "pred_text": "1 2"},
                                                {"question_id": 2, "pred_text": "3 3"}]), "pred_text")
    b = read_keyed(write(tmp_path / "b.jsonl", [{"question_id": 2, "pred_text": "x"},
                                                {"question_id": 1, "pred_text": "y"}]), "pred_text")
    check_aligned(a, b)
    c = read_keyed(write(tmp_path / "c.jsonl", [{"question_id": 1, "pred_text": "x"}]), "pred_text")
    with pytest.raises(FormatError) as e:
        check_aligned(a, c)
    assert (e.value.path, e.value.line) == (str(tmp_path / "a.jsonl"), 2)
    with pytest.raises(FormatError) as e:
        check_aligned(c, a)
    assert (e.value.path, e.value.line) == (str(tmp_path / "a.jsonl"), 2)
    with pytest.raises(FormatError) as e:
        read_keyed(write(tmp_path / "d.jsonl", [{"question_id": 1, "pred_text": None}]), "pred_text")
    assert (e.value.line, e.value.field) == (1, "pred_text")
    with pytest.raises(FormatError, match="duplicate"):
        read_keyed(write(tmp_path / "e.jsonl", [{"question_id": 1, "pred_text": "a"}] * 2), "pred_text")


def panda(idx, votes=(1, 1, 2), **kw):
    r = {"idx": idx, "motivation_app": "app", "cmp_key": "bloom-7b_llama-7b", "instruction": "Do it.",
         "input": "", "response1": "r1", "response2": "r2",
         "annotator1": votes[0], "annotator2": votes[1], "annotator3": votes[2]}
    r.update(kw)
    return r


def test_read_pandalm(tmp_path):
    p = tmp_path / "panda.json"
    p.write_text(json.dumps([panda(0), panda(1, (2, 0, 2), input="ctx"), panda(2, (0, 0, 1)), panda(3, (0, 1, 2))],
                            indent=1))
    samples = read_pandalm(p)
    assert [(s.question_id, s.label) for s in samples] == [(0, 1), (1, -1), (2, 0)]
    assert samples[0].question == "Do it." and samples[1].question == "Do it.\nctx"
    assert samples[0].answers == ("r1", "r2") and samples[0].model_ids == ("bloom-7b", "llama-7b")
    assert samples.dropped == {"no_majority": 1}
    assert pandalm_majority([1, 2, 2]) == -1 and pandalm_majority([0, 1, 2]) is None


def test_pandalm_errors_name_the_line(tmp_path):
    p = tmp_path / "panda.json"
    p.write_text(json.dumps([panda(0), panda(1, (1, 5, 1))], indent=1))
    with pytest.raises(FormatError) as e:
        read_pandalm(p)
    text = p.read_text()
    item_line = text[:text.index('"idx": 1')].count("\n") + 1
    assert e.value.field == "annotator2" and e.value.line == item_line - 1  # the line with the item's "{"
    q = tmp_path / "obj.json"
    q.write_text('{"idx": 0}')
    with pytest.raises(FormatError, match="JSON array"):
        read_pandalm(q)
    r = tmp_path / "missing.json"
    r.write_text(json.dumps([{k: v for k, v in panda(0).items() if k != "response2"}]))
    with pytest.raises(FormatError) as e:
        read_pandalm(r)
    assert (e.value.line, e.value.field) == (1, "response2")


def test_read_real_pandalm_sample():
    samples = read_pandalm(PANDALM_SAMPLE)
    assert len(samples) + sum(samples.dropped.values()) == 50
    assert {s.label for s in samples} <= {1, 0, -1}


def test_read_autoj(tmp_path):
    rows = [{"scenario": "s", "label": lab, "prompt": f"p{i}", "response 1": "x", "response 2": "y"}
            for i, lab in enumerate([0, 1, 2])]
    p = tmp_path / "autoj.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    samples = read_autoj_pairwise(p)
    assert [(s.question_id, s.label, s.question) for s in samples] == [(0, 1, "p0"), (1, -1, "p1"), (2, 0, "p2")]
    bad = write(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "label": 3}])
    with pytest.raises(FormatError) as e:
        read_autoj_pairwise(bad)
    assert (e.value.line, e.value.field) == (2, "label")
    bad2 = write(tmp_path / "bad2.jsonl", [{k: v for k, v in rows[0].items() if k != "response 1"}])
    with pytest.raises(FormatError) as e:
        read_autoj_pairwise(bad2)
    assert e.value.field == "response 1"


def test_read_real_autoj():
    samples = read_autoj_pairwise(AUTOJ_TEST)
    assert len(samples) == 1392
    labels = [s.label for s in samples]
    assert (labels.count(1), labels.count(-1), labels.count(0)) == (520, 499, 373)


def test_examples_pairs_file_is_valid_judgelm_input():
    path = Path(__file__).resolve().parents[1] / "examples" / "pairs.jsonl"
    samples = read_judgelm(path)
    assert len(samples) == 6 and not samples.dropped
    assert len({s.question_id for s in samples}) == 6
    assert all(s.judgement is None and len(s.answers) == 2 and max(map(len, s.answers)) < 1500 for s in samples)
