"""`jlm eval` end to end: JudgeLM and PandaLM formats, outputs, and input errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from jlm.metrics import judge_metrics, length_correlation, pandalm_protocol
from jlm.metrics.cli import guess_format, main

KEYS = ("agreement", "precision", "recall", "f1", "consistency", "bias_first", "bias_second", "delta_bias",
        "total_bias", "n")
MODELS = ["m-a", "m-b", "m-c"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def judgelm_files(tmp_path):
    rng = np.random.default_rng(0)
    gt, seq, rev = [], [], []
    for i in range(60):
        a, b = rng.choice(3, size=2, replace=False)
        s1, s2 = rng.integers(1, 11, size=2)
        text = "error" if i == 7 else f"{s1} {s2}\nteacher"
        gt.append({"question_id": 1000 + i, "text": text, "score": [float(s1), float(s2)]})
        p1, p2 = (s1, s2) if rng.random() < 0.7 else rng.integers(1, 11, size=2)
        rec = {"question_id": 1000 + i, "answer1_model_id": MODELS[a], "answer2_model_id": MODELS[b]}
        seq.append({**rec, "pred_text": f"{p1} {p2}\njudge" if i != 3 else "garbage"})
        q1, q2 = (p2, p1) if rng.random() < 0.8 else (p1, p2)
        rev.append({**rec, "pred_text": f"{q1} {q2}"})
    rev.reverse()  # order does not matter: aligned by question_id
    return (write_jsonl(tmp_path / "gt.jsonl", gt), write_jsonl(tmp_path / "seq.jsonl", seq),
            write_jsonl(tmp_path / "rev.jsonl", rev))


def test_eval_judgelm(judgelm_files, tmp_path, capsys):
    gt, seq, rev = judgelm_files
    out = tmp_path / "out"
    assert main(["--gt", str(gt), "--pred", str(seq), "--pred-swapped", str(rev), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    g = [json.loads(x)["text"] for x in gt.read_text().splitlines()]
    by_id = {json.loads(x)["question_id"]: json.loads(x)["pred_text"] for x in rev.read_text().splitlines()}
    s = [json.loads(x)["pred_text"] for x in seq.read_text().splitlines()]
    r = [by_id[json.loads(x)["question_id"]] for x in gt.read_text().splitlines()]
    want = judge_metrics(g, s, r)
    for k in KEYS:
        assert m[k] == pytest.approx(want[k])
        if k != "n":
            assert 0.0 <= m[k] <= 1.0
    assert m["n"] == 59 and m["n_teacher_failures"] == 1 and m["pred_failures"] == 1
    for name in ("confusion.png", "position_bias.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| agreement | precision | recall | f1 | consistency |" in report
    assert f"{100 * want['agreement']:.2f}" in report and "![confusion](confusion.png)" in report
    ranking = json.loads((out / "ranking.json").read_text())
    assert {r["model"] for r in ranking["judge"]} == set(MODELS) and "teacher" in ranking
    assert "agreement" in capsys.readouterr().out


def test_eval_without_swapped(judgelm_files, tmp_path):
    gt, seq, _ = judgelm_files
    out = tmp_path / "o"
    assert main(["--gt", str(gt), "--pred", str(seq), "--out", str(out), "--T", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "consistency" not in m and m["T"] == 1.0
    assert (out / "position_bias.png").exists()


def test_eval_margin_auc_from_distributions(judgelm_files, tmp_path, capsys):
    """Predictions with jlm's score distribution get margin_auc: of the original order's margins, or of
    both orders' averaged margins (the swapped record's margin counted for the original answer 1)."""
    gt, _, _ = judgelm_files
    rows = [json.loads(x) for x in gt.read_text().splitlines()]
    rng = np.random.default_rng(1)
    e1, e2 = rng.uniform(1, 10, len(rows)), rng.uniform(1, 10, len(rows))
    f1, f2 = rng.uniform(1, 10, len(rows)), rng.uniform(1, 10, len(rows))
    pred = write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": r["question_id"], "pred_text": "5 5", "distribution": {"expected": [a, b]}}
        for r, a, b in zip(rows, e1, e2)])
    rev = write_jsonl(tmp_path / "r.jsonl", [
        {"question_id": r["question_id"], "pred_text": "5 5", "distribution": {"expected": [a, b]}}
        for r, a, b in zip(rows, f1, f2)])
    keep = [i for i, r in enumerate(rows) if r["text"] != "error"]
    y = [int(np.sign(rows[i]["score"][0] - rows[i]["score"][1])) for i in keep]

    def hand_auc(margin):
        pos = [margin[i] for i, t in zip(keep, y) if t == 1]
        neg = [margin[i] for i, t in zip(keep, y) if t == -1]
        return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))

    assert main(["--gt", str(gt), "--pred", str(pred), "--out", str(tmp_path / "a")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["margin_auc"] == pytest.approx(hand_auc(e1 - e2))
    assert "Margin AUC" in (tmp_path / "a" / "report.md").read_text()
    assert main(["--gt", str(gt), "--pred", str(pred), "--pred-swapped", str(rev), "--out", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["margin_auc"] == pytest.approx(hand_auc((e1 - e2) - (f1 - f2)))
    # one record without a distribution: no margin_auc rather than a partial one
    _, seq, _ = judgelm_files
    assert main(["--gt", str(gt), "--pred", str(seq), "--out", str(tmp_path / "c")]) == 0
    assert "margin_auc" not in json.loads((tmp_path / "c" / "metrics.json").read_text())


def test_eval_length_correlations(judgelm_files, tmp_path):
    """With the answer texts in the predictions (as `jlm judge` writes them), the teacher's labels, the
    judge's verdicts and its (two-order) margins are each correlated with the answers' length ratio."""
    gt, seq, _ = judgelm_files
    rows = [json.loads(x) for x in gt.read_text().splitlines()]
    rng = np.random.default_rng(2)
    n1, n2 = rng.integers(1, 400, len(rows)), rng.integers(1, 400, len(rows))
    e1, e2 = rng.uniform(1, 10, len(rows)), rng.uniform(1, 10, len(rows))
    texts = [json.loads(x)["pred_text"] for x in seq.read_text().splitlines()]
    pred = write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": r["question_id"], "answer1_body": "a" * a, "answer2_body": "b" * b, "pred_text": t,
         "distribution": {"expected": [x, y]}} for r, a, b, t, x, y in zip(rows, n1, n2, texts, e1, e2)])
    rev = write_jsonl(tmp_path / "r.jsonl", [  # swapped input: its answer 1 is the original answer 2
        {"question_id": r["question_id"], "answer1_body": "b" * b, "answer2_body": "a" * a, "pred_text": "5 5",
         "distribution": {"expected": [y, x]}} for r, a, b, x, y in zip(rows, n1, n2, e1, e2)])
    assert main(["--gt", str(gt), "--pred", str(pred), "--pred-swapped", str(rev), "--out", str(tmp_path / "o")]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    keep = [i for i, r in enumerate(rows) if r["text"] != "error"]
    lengths = [(n1[i], n2[i]) for i in keep]
    teacher = [np.sign(rows[i]["score"][0] - rows[i]["score"][1]) for i in keep]
    judge = [0 if i == 3 else np.sign(int(texts[i].split()[0]) - int(texts[i].split()[1])) for i in keep]
    assert m["length_corr_truth"] == pytest.approx(length_correlation(teacher, lengths))
    assert m["length_corr_judge"] == pytest.approx(length_correlation(judge, lengths))
    assert m["length_corr_margin"] == pytest.approx(length_correlation([e1[i] - e2[i] for i in keep], lengths))
    assert "Length preference" in (tmp_path / "o" / "report.md").read_text()
    # no answer texts anywhere: no length metrics
    assert main(["--gt", str(gt), "--pred", str(seq), "--out", str(tmp_path / "n")]) == 0
    assert not any(k.startswith("length_corr") for k in json.loads((tmp_path / "n" / "metrics.json").read_text()))


def test_eval_readouts_from_distributions(judgelm_files, tmp_path):
    """--readout mode reads each record's most probable score line, --readout p_win its most probable
    verdict, reported for the two orders' probabilities averaged; a null distribution is a failure (tie)."""
    gt, _, _ = judgelm_files
    rows = [json.loads(x) for x in gt.read_text().splitlines()]
    rng = np.random.default_rng(3)
    modes, modes_rev = rng.integers(1, 11, (len(rows), 2)), rng.integers(1, 11, (len(rows), 2))
    pw, pw_rev = rng.dirichlet([1, 1, 1], len(rows)), rng.dirichlet([1, 1, 1], len(rows))

    def record(r, mode, p, i):
        dist = None if i == 5 else {"mode": mode.tolist(), "p_win": p.tolist(), "expected": [5.0, 5.0]}
        return {"question_id": r["question_id"], "pred_text": "garbage", "distribution": dist}

    pred = write_jsonl(tmp_path / "p.jsonl", [record(r, m, p, i) for i, (r, m, p) in enumerate(zip(rows, modes, pw))])
    rev = write_jsonl(tmp_path / "r.jsonl", [record(r, m, p, -1) for r, m, p in zip(rows, modes_rev, pw_rev)])
    args = ["--gt", str(gt), "--pred", str(pred), "--pred-swapped", str(rev)]

    assert main([*args, "--readout", "mode", "--out", str(tmp_path / "m")]) == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    want = judge_metrics([r["text"] for r in rows], [None if i == 5 else list(x) for i, x in enumerate(modes)],
                         [list(x) for x in modes_rev])
    for k in KEYS:
        assert m[k] == pytest.approx(want[k])
    assert m["pred_failures"] == 1 and m["readout"] == "mode"

    assert main([*args, "--readout", "p_win", "--out", str(tmp_path / "w")]) == 0
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    keep = [i for i, r in enumerate(rows) if r["text"] != "error"]
    label = {0: 1, 1: 0, 2: -1}
    truth = [int(np.sign(rows[i]["score"][0] - rows[i]["score"][1])) for i in keep]
    first = [0 if i == 5 else label[int(np.argmax(pw[i]))] for i in keep]
    second = [label[int(np.argmax(pw_rev[i]))] for i in keep]  # in the swapped run's own order
    both = [label[int(np.argmax(pw_rev[i][::-1] if i == 5 else (pw[i] + pw_rev[i][::-1]) / 2))] for i in keep]
    assert m["agreement"] == pytest.approx(np.mean(np.array(both) == truth))
    assert m["agreement_sequential"] == pytest.approx(np.mean(np.array(first) == truth))
    assert m["consistency"] == pytest.approx(np.mean(-np.array(first) == np.array(second)))
    assert m["pred_failures"] == 1 and m["n"] == len(keep)
    assert "probabilities averaged" in (tmp_path / "w" / "report.md").read_text()


def test_eval_readout_errors_name_file_line_field(judgelm_files, tmp_path, capsys):
    gt, seq, _ = judgelm_files
    assert main(["--gt", str(gt), "--pred", str(seq), "--readout", "p_win", "--out", str(tmp_path / "o")]) == 2
    assert f"{seq}:1: field 'distribution': missing" in capsys.readouterr().err
    rows = [{**json.loads(x), "distribution": {"p_win": [0.5, 0.5], "mode": [3, 4]}}
            for x in seq.read_text().splitlines()]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(["--gt", str(gt), "--pred", str(bad), "--readout", "p_win", "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:1: field 'distribution.p_win': expected a list of 3 numbers" in capsys.readouterr().err
    assert main(["--gt", str(gt), "--pred", str(bad), "--readout", "mode", "--out", str(tmp_path / "o")]) == 0
    assert main(["--gt", str(gt), "--pred", str(bad), "--readout", "p_win", "--T", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no tie threshold" in capsys.readouterr().err


def test_eval_pandalm(tmp_path):
    rows = []
    for i, votes in enumerate([(1, 1, 2), (2, 2, 2), (0, 0, 1), (1, 1, 1), (2, 0, 2)]):
        rows.append({"idx": i, "motivation_app": "x", "cmp_key": "m1_m2", "instruction": f"task {i}", "input": "",
                     "response1": "r1", "response2": "r2", "annotator1": votes[0], "annotator2": votes[1],
                     "annotator3": votes[2]})
    gt = tmp_path / "testset.json"
    gt.write_text(json.dumps(rows, indent=2))
    seq = ["9 1", "1 9", "5 5", "2 8", "1 9"]
    rev = ["1 9", "9 1", "5 5", "2 8", "2 9"]
    ps = write_jsonl(tmp_path / "p.jsonl", [{"question_id": i, "pred_text": t} for i, t in enumerate(seq)])
    pr = write_jsonl(tmp_path / "r.jsonl", [{"question_id": i, "pred_text": t} for i, t in enumerate(rev)])
    out = tmp_path / "out"
    assert guess_format(gt) == "pandalm"
    assert main(["--gt", str(gt), "--pred", str(ps), "--pred-swapped", str(pr), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    want = pandalm_protocol([1, -1, 0, 1, -1], seq, rev)
    for k in KEYS:
        assert m[k] == pytest.approx(want[k])
    assert m["format"] == "pandalm"
    assert "PandaLM" in (out / "report.md").read_text()


def test_eval_autoj_guess(tmp_path):
    gt = write_jsonl(tmp_path / "autoj.jsonl", [{"scenario": "s", "label": 0, "prompt": "p", "response 1": "a",
                                                 "response 2": "b"}])
    assert guess_format(gt) == "autoj"
    p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 0, "pred_text": "8 2"}])
    assert main(["--gt", str(gt), "--pred", str(p), "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["agreement"] == 1.0


def test_eval_errors_name_file_line_field(judgelm_files, tmp_path, capsys):
    gt, seq, _ = judgelm_files
    short = write_jsonl(tmp_path / "short.jsonl", [json.loads(x) for x in seq.read_text().splitlines()[:-1]])
    assert main(["--gt", str(gt), "--pred", str(short), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{gt}:60: field 'question_id'" in err and "has no line in" in err

    no_field = write_jsonl(tmp_path / "nf.jsonl", [{"question_id": 1000, "text": "1 2"}])
    assert main(["--gt", str(gt), "--pred", str(no_field), "--out", str(tmp_path / "o")]) == 2
    assert f"{no_field}:1: field 'pred_text': missing" in capsys.readouterr().err

    assert main(["--gt", str(tmp_path / "nope.jsonl"), "--pred", str(seq), "--out", str(tmp_path / "o")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_eval_reads_both_orders_of_a_swap_run(judgelm_files, tmp_path):
    """A `jlm judge --swap` file (each record: `original` and `swap`, each order's own judgement)
    gives the metrics of the two orders passed as two files."""
    gt, seq, rev = judgelm_files
    second = {json.loads(x)["question_id"]: json.loads(x) for x in rev.read_text().splitlines()}
    both = []
    for x in seq.read_text().splitlines():
        r = json.loads(x)
        both.append({"question_id": r["question_id"], "pred_text": "combined, not read",
                     "original": {"pred_text": r["pred_text"]},
                     "swap": {"pred_text": second[r["question_id"]]["pred_text"]}})
    combined = write_jsonl(tmp_path / "both.jsonl", both)
    assert main(["--gt", str(gt), "--pred", str(seq), "--pred-swapped", str(rev), "--out", str(tmp_path / "a")]) == 0
    assert main(["--gt", str(gt), "--pred", str(combined), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert {k: b[k] for k in KEYS} == {k: a[k] for k in KEYS} and "consistency" in b
