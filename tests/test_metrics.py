"""Metrics against hand-computed cases and an independent loop implementation of JudgeLM's eval."""
import math

import numpy as np
import pytest

from jlm.metrics import (
    bradley_terry,
    combine_orders,
    confusion_matrix,
    judge_metrics,
    kendall_tau,
    length_correlation,
    macro_prf,
    margin_auc,
    p_win_labels,
    pandalm_protocol,
    position_consistency,
    verdict_metrics,
)


def test_macro_prf_hand_computed():
    y_true = [1, 1, -1, 0, 1]
    y_pred = [1, 0, -1, -1, 1]
    # class 1: P 2/2, R 2/3, F 0.8; class 0: P 0/1, R 0/1, F 0; class -1: P 1/2, R 1/1, F 2/3
    p, r, f = macro_prf(y_true, y_pred)
    assert p == pytest.approx((1 + 0 + 0.5) / 3)
    assert r == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert f == pytest.approx((0.8 + 0 + 2 / 3) / 3)


def test_macro_over_present_labels_only():
    # no tie anywhere: average over {1, -1}, not over three classes
    p, r, f = macro_prf([1, 1, -1], [1, -1, -1])
    assert (p, r, f) == pytest.approx((0.75, 0.75, 2 / 3))
    # a class predicted but never true counts (P = 0, R = 0 by zero_division)
    p, r, f = macro_prf([1, 1], [1, 0])
    assert (p, r, f) == pytest.approx(((1 + 0) / 2, (0.5 + 0) / 2, (2 / 3 + 0) / 2))


def test_judge_metrics_hand_computed_with_teacher_failures():
    gt = [[8, 5], [5, 8], [7, 7], [9, 2], None, [-1, -1], "6 2\nwhy", "8/10 bad"]
    pred = [[9, 1], [6, 6], [8, 6], None, [1, 9], [1, 9], "1 2\nx", [3, 3]]
    m = judge_metrics(gt, pred)
    # kept: 0, 1, 2, 3, 6 -> y_true [1, -1, 0, 1, 1], y_pred [1, 0, 1, 0 (failure = tie), -1]
    # class 1: tp 1, pred 2, true 3 -> P .5, R 1/3, F .4; class 0: tp 0, pred 2, true 1; class -1: tp 0, pred 1, true 1
    assert m["n"] == 5 and m["n_teacher_failures"] == 3 and m["pred_failures"] == 1
    assert m["agreement"] == pytest.approx(1 / 5)
    assert m["precision"] == pytest.approx(0.5 / 3)
    assert m["recall"] == pytest.approx((1 / 3) / 3)
    assert m["f1"] == pytest.approx(0.4 / 3)
    assert "consistency" not in m


def test_consistency_and_position_bias_hand_computed():
    # seq labels [1, 1, 0, -1]; swapped-run labels [-1, 1, 0, 1]
    # item 0: consistent; item 1: 1st position wins both times -> bias toward 1st; 2: consistent tie;
    # item 3: seq says 2nd wins, swapped says 1st (the same answer) -> consistent
    c = position_consistency([1, 1, 0, -1], [-1, 1, 0, 1])
    assert c == pytest.approx({"consistency": 0.75, "bias_first": 0.25, "bias_second": 0.0, "delta_bias": 0.25,
                               "total_bias": 0.25})
    c = position_consistency([-1, 0, 1], [-1, 1, 1])
    # item 0: 2nd wins both times -> bias 2nd; item 1: tie then 1st (= the answer that was 2nd) -> d = 0 - 1 < 0
    assert c == pytest.approx({"consistency": 0.0, "bias_first": 2 / 3, "bias_second": 1 / 3, "delta_bias": 1 / 3,
                               "total_bias": 1.0})


def test_judge_metrics_with_swapped_filters_the_same_items():
    gt = [[9, 1], None, [1, 9], [5, 5]]
    seq = [[9, 1], [9, 1], [9, 1], [5, 5]]
    rev = [[9, 1], [1, 9], [9, 1], None]
    m = judge_metrics(gt, seq, rev)
    # kept 0, 2, 3: seq [1, 1, 0], swapped [1, 1, 0 (failure)]; flipped seq [-1, -1, 0]
    assert m["n"] == 3 and m["pred_swapped_failures"] == 1
    assert m["consistency"] == pytest.approx(1 / 3)
    assert m["bias_first"] == pytest.approx(2 / 3) and m["bias_second"] == 0.0
    assert m["delta_bias"] == pytest.approx(2 / 3)
    assert m["agreement"] == pytest.approx(2 / 3)


def reference_eval(gt_texts, seq_texts, rev_texts):
    """Independent loop version of JudgeLM's eval_model_judgement.py with sklearn's macro semantics."""
    def parse(t):
        try:
            sp = t.split("\n")[0].replace(",", " ").split(" ")
            if len(sp) == 2:
                return [float(sp[0]), float(sp[1])]
            raise ValueError
        except Exception:
            return [-1, -1]

    def lab(s):
        return 1 if s[0] - s[1] > 0 else -1 if s[1] - s[0] > 0 else 0

    rows = [(parse(g), parse(s), parse(r)) for g, s, r in zip(gt_texts, seq_texts, rev_texts)]
    # JudgeLM drops a ground-truth line when either of its scores is -1 (a failure, or a line like "-1 5")
    rows = [(lab(g), lab(s), lab(r)) for g, s, r in rows if g[0] != -1 and g[1] != -1]
    yt, yp, yr = zip(*rows)
    labels = sorted(set(yt) | set(yp))
    ps, rs, fs = [], [], []
    for c in labels:
        tp = sum(1 for a, b in zip(yt, yp) if a == c and b == c)
        pp = sum(1 for b in yp if b == c)
        tt = sum(1 for a in yt if a == c)
        p = tp / pp if pp else 0.0
        r = tp / tt if tt else 0.0
        ps.append(p), rs.append(r), fs.append(2 * p * r / (p + r) if p + r else 0.0)
    flipped = [-x for x in yp]
    before = sum(1 for a, b in zip(flipped, yr) if a - b < 0)
    after = sum(1 for a, b in zip(flipped, yr) if a - b > 0)
    n = len(rows)
    return {"agreement": sum(a == b for a, b in zip(yt, yp)) / n, "precision": sum(ps) / len(ps),
            "recall": sum(rs) / len(rs), "f1": sum(fs) / len(fs),
            "consistency": sum(a == b for a, b in zip(flipped, yr)) / n,
            "bias_first": before / n, "bias_second": after / n, "delta_bias": abs(before - after) / n,
            "total_bias": (before + after) / n, "n": n}


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_eval_on_random_data(seed):
    rng = np.random.default_rng(seed)

    def text():
        u = rng.random()
        if u < 0.05:
            return "error"
        if u < 0.1:
            return "8/10 7/10"
        if u < 0.2:  # one score -1: JudgeLM drops such a teacher line; a judge's stays (2nd or 1st wins)
            return f"-1 {rng.integers(1, 11)}" if u < 0.15 else f"{rng.integers(1, 11)} -1"
        return f"{rng.integers(1, 11)} {rng.integers(1, 11)}\nexplanation"

    n = 200
    gt, seq, rev = [text() for _ in range(n)], [text() for _ in range(n)], [text() for _ in range(n)]
    ours = judge_metrics(gt, seq, rev)
    ref = reference_eval(gt, seq, rev)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v), k


def test_teacher_line_with_one_minus_one_is_dropped_as_judgelm_does():
    gt = ["-1 5", "5 -1", "-1 -1", "8 2", "3 7"]
    seq = ["9 1", "1 9", "5 5", "9 1", "-1 4"]  # a judge's "-1 4" is kept: answer 2 wins
    m = judge_metrics(gt, seq, ["1 9"] * 5)
    assert m["n"] == 2 and m["n_teacher_failures"] == 3 and m["agreement"] == 1.0
    assert m["total_bias"] == pytest.approx(m["bias_first"] + m["bias_second"]) == pytest.approx(1 - m["consistency"])


def test_judge_metrics_errors():
    with pytest.raises(ValueError, match="length"):
        judge_metrics([[1, 2]], [[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="no sample"):
        judge_metrics([None, [-1, -1]], [[1, 2], [1, 2]])


def test_margin_auc_hand_computed():
    # 1st-wins margins {3, 1, 0}, 2nd-wins {0, -2}; the tie-labelled sample is ignored.
    # pairs: 3>0, 3>-2, 1>0, 1>-2, 0=0 (half), 0>-2 -> 5.5 of 6
    y = [1, 1, 1, -1, -1, 0]
    m = [3.0, 1.0, 0.0, 0.0, -2.0, 99.0]
    assert margin_auc(y, m) == pytest.approx(5.5 / 6)
    assert margin_auc(y, [-x for x in m]) == pytest.approx(0.5 / 6)
    assert margin_auc(y, [x + 7 for x in m]) == pytest.approx(5.5 / 6)  # a constant offset changes nothing
    assert margin_auc([1, 1, 0], [1.0, 2.0, 3.0]) is None
    with pytest.raises(ValueError, match="length"):
        margin_auc([1, -1], [0.0])


def test_length_correlation_hand_computed():
    # log length ratios log(1 + len1) - log(1 + len2): +log 10, 0, -log 10 -> perfectly tracked by 1, 0, -1
    lengths = [(9, 0), (4, 4), (0, 9)]
    assert length_correlation([1, 0, -1], lengths) == pytest.approx(1.0)
    assert length_correlation([-2.0, 0.0, 2.0], lengths) == pytest.approx(-1.0)
    # ratios x = (log 2, 0, 0, -log 2), values y = (1, 1, -1, -1): r = sum(dx dy) / sqrt(sum dx^2 sum dy^2)
    x = np.log([2.0, 1.0, 1.0, 0.5])
    dx, dy = x - x.mean(), np.array([1.0, 1.0, -1.0, -1.0])
    want = float(np.sum(dx * dy) / np.sqrt(np.sum(dx ** 2) * np.sum(dy ** 2)))
    assert length_correlation([1, 1, -1, -1], [(1, 0), (5, 5), (0, 0), (0, 1)]) == pytest.approx(want)
    assert length_correlation([0, 0, 0], lengths) is None  # an always-tie judge has no preference to measure
    assert length_correlation([1, -1], [(3, 3), (7, 7)]) is None
    with pytest.raises(ValueError, match="length"):
        length_correlation([1, -1], [(1, 2)])


def test_p_win_labels_hand_computed():
    p = [[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3], [0.4, 0.2, 0.4], None]
    # the most probable verdict; an exact draw between the winners (sample 3) and no distribution are ties
    assert p_win_labels(p).tolist() == [1, -1, 0, 0, 0]
    # swapped run, in its own order: [P(its 1st = our 2nd wins), tie, P(its 2nd = our 1st wins)]
    q = [[0.6, 0.1, 0.3], [0.1, 0.2, 0.7], None, [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]]
    # averaged for the original order: [0.4, 0.2, 0.4] tie; [0.45, 0.25, 0.3] 1st; p alone 0;
    # [0.6, 0.15, 0.25] 1st; q alone, back to the original order [0.1, 0.2, 0.7]: 2nd
    assert p_win_labels(p, q).tolist() == [0, 1, 0, 1, -1]
    # a judge that always prefers the first position by the same margin cancels out
    bias = [[0.5, 0.2, 0.3]] * 2
    assert p_win_labels(bias).tolist() == [1, 1] and p_win_labels(bias, bias).tolist() == [0, 0]
    with pytest.raises(ValueError, match="sample 0 has 2"):
        p_win_labels([[0.5, 0.5]])
    with pytest.raises(ValueError):
        p_win_labels(p, q[:2])


def test_verdict_metrics_reported_vs_sequential():
    y_true, seq, swp, rep = [1, 0, -1, 1], [1, 1, -1, -1], [-1, 1, 1, 1], [1, 0, -1, 0]
    m = verdict_metrics(y_true, seq, swp, rep)
    assert m["agreement"] == pytest.approx(3 / 4) and m["agreement_sequential"] == pytest.approx(2 / 4)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(macro_prf(y_true, rep))
    # flipped seq [-1, -1, 1, 1] vs swapped [-1, 1, 1, 1]: one differs, d = -2 < 0 -> 1st position
    assert m["consistency"] == pytest.approx(3 / 4) and m["bias_first"] == pytest.approx(1 / 4)
    assert "agreement_sequential" not in verdict_metrics(y_true, seq, swp) and m["n"] == 4


def test_confusion_matrix():
    cm = confusion_matrix([1, 1, 0, -1, -1], [1, 0, 0, 1, -1])
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_pandalm_protocol_hand_computed():
    human = [1, -1, 0, 1, -1]
    seq = ["9 1", "2 8", "9 1", "9 1", "5 5"]
    # swapped run (answers exchanged): item 0 agrees (2nd wins = original 1st), item 1 agrees,
    # item 2 disagrees -> tie, item 3 says 1st wins again (= original 2nd) -> tie, item 4: 1st wins
    rev = ["1 9", "9 1", "1 9", "9 1", "9 1"]
    assert combine_orders([1, -1, 1, 1, 0], [-1, 1, -1, 1, 1]).tolist() == [1, -1, 1, 0, 0]
    m = pandalm_protocol(human, seq, rev)
    # combined [1, -1, 1, 0, 0] vs human [1, -1, 0, 1, -1]
    assert m["agreement"] == pytest.approx(2 / 5)
    assert m["agreement_sequential"] == pytest.approx(3 / 5)  # seq [1, -1, 1, 1, 0]
    p, r, f = macro_prf(human, [1, -1, 1, 0, 0])
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["n"] == 5 and m["consistency"] == pytest.approx(3 / 5)
    one = pandalm_protocol(human, seq)
    assert one["agreement"] == pytest.approx(3 / 5) and "consistency" not in one
    with pytest.raises(ValueError, match="labels"):
        pandalm_protocol([2], ["1 2"])


def test_bradley_terry_two_models():
    games = [("a", "b", 1)] * 3 + [("a", "b", -1)]
    rows = bradley_terry(games, prior=0.0)
    assert [r["model"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["strength"] / b["strength"] == pytest.approx(3.0, rel=1e-6)  # MLE: p_a / (p_a + p_b) = 3/4
    assert a["rating"] - b["rating"] == pytest.approx(400 * math.log10(3), rel=1e-6)
    assert a["strength"] * b["strength"] == pytest.approx(1.0)
    assert (a["wins"], a["ties"], a["losses"], a["games"], a["win_rate"]) == (3, 0, 1, 4, 0.75)


def test_bradley_terry_ties_order_and_prior():
    games = [("a", "b", 0), ("a", "b", 0), ("a", "c", 1), ("c", "a", -1), ("a", "d", 1),
             ("b", "c", 1), ("c", "b", 1), ("c", "d", 1)]
    rows = bradley_terry(games)
    assert [r["model"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["win_rate"] == pytest.approx((3 + 2 / 2) / 5)
    assert (rows[0]["wins"], rows[0]["ties"], rows[0]["losses"]) == (3, 2, 0)
    assert all(math.isfinite(r["rating"]) for r in rows)  # a never lost, d never won: the prior keeps them finite
    assert bradley_terry(games, prior=0.0, max_iter=200)[-1]["rating"] < rows[-1]["rating"] - 100
    sym = bradley_terry([("x", "y", 1), ("y", "x", 1)])
    assert sym[0]["rating"] == pytest.approx(sym[1]["rating"])
    assert bradley_terry([]) == []
    with pytest.raises(ValueError):
        bradley_terry([("a", "a", 1)])
    with pytest.raises(ValueError):
        bradley_terry([("a", "b", 2)])


def test_kendall_tau():
    assert kendall_tau({"a": 3, "b": 2, "c": 1}, {"a": 30, "b": 20, "c": 10}) == pytest.approx(1.0)
    assert kendall_tau({"a": 3, "b": 2, "c": 1}, {"a": 10, "b": 20, "c": 30}) == pytest.approx(-1.0)
    assert kendall_tau({"a": 3, "b": 2, "c": 1}, {"a": 3, "b": 1, "c": 2}) == pytest.approx(1 / 3)
