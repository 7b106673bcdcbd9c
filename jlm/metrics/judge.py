"""Judge metrics exactly as JudgeLM's `judgelm/llm_judge/eval_model_judgement.py`, and the PandaLM protocol.

Labels: 1 = answer 1 wins, 0 = tie, -1 = answer 2 wins (`jlm.formats.scores.win_label`, threshold T).

JudgeLM protocol (`judge_metrics`, teacher scores as ground truth):
  1. drop every sample whose teacher score line has a -1 in it (a parse failure, which JudgeLM's parser
     reports as [-1, -1], or a teacher line such as "-1 5": JudgeLM drops a line when either score is -1)
     from the sequential and the swapped lists alike; judge failures stay and count as ties;
  2. agreement = accuracy; precision / recall / F1 = macro averages over the labels present in
     y_true or y_pred, with 0 for a class whose denominator is 0 (sklearn's `average='macro'`,
     `zero_division` default);
  3. with predictions on swapped inputs: flip the sequential labels (1 <-> -1) so both runs speak of the same
     answer, consistency = fraction equal; with d = flipped - swapped, d < 0 counts toward the 1st position
     (`bias_first`, JudgeLM's perfer_before), d > 0 toward the 2nd (`bias_second`), as fractions of n;
     delta_bias = |bias_first - bias_second|, total_bias = bias_first + bias_second (= 1 - consistency).

PandaLM protocol (`pandalm_protocol`, human labels as ground truth; our choice, the JudgeLM code has none):
  the judge sees both orders; when the two verdicts (expressed for the original order) agree that verdict
  stands, otherwise the item is a tie. Without swapped predictions the sequential verdict is used as is.
  Nothing is filtered: human labels are always valid, judge failures are ties.

Verdicts from a judge's own win probabilities (`p_win_labels`, jlm's; JudgeLM reads only the text): the most
probable of (1st wins, tie, 2nd wins) under the judge's score distribution, which is the verdict a judge
that is unsure between many score lines believes in, where its single most probable line may be a tie.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jlm.formats.scores import parse_scores, scores_label

LABELS = (1, 0, -1)
LABEL_NAMES = {1: "1st wins", 0: "tie", -1: "2nd wins"}

ScoresLike = Sequence[float] | str | None


def _scores(x: ScoresLike) -> list[float] | None:
    """Parsed scores from a pair, None, or a judgement text (JudgeLM parsing)."""
    if x is None:
        return None
    if isinstance(x, str):
        return parse_scores(x, 2)
    return [float(v) for v in x]


def teacher_failed(scores: Sequence[float] | None) -> bool:
    """JudgeLM's GT filter: a parse failure (its parser's [-1, -1]) or any score of -1 ("-1 5")."""
    return scores is None or any(s == -1 for s in scores)


def labels_from_scores(scores: Sequence[ScoresLike], T: float = 0.0) -> np.ndarray:
    """Win labels of a list of score pairs / judgement texts; failures are ties."""
    return np.array([scores_label(_scores(s), T) for s in scores], dtype=np.int64)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] = LABELS) -> np.ndarray:
    """counts[i, j] = #(y_true == labels[i] and y_pred == labels[j])."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return np.array([[int(np.sum((y_true == a) & (y_pred == b))) for b in labels] for a in labels], dtype=np.int64)


def macro_prf(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[float, float, float]:
    """Macro precision, recall, F1 over the labels in y_true or y_pred; 0 where a denominator is 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    if not present:
        raise ValueError("macro_prf: no samples")
    p, r, f = [], [], []
    for c in present:
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        n_pred, n_true = float(np.sum(y_pred == c)), float(np.sum(y_true == c))
        pc = tp / n_pred if n_pred else 0.0
        rc = tp / n_true if n_true else 0.0
        p.append(pc)
        r.append(rc)
        f.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    return float(np.mean(p)), float(np.mean(r)), float(np.mean(f))


def position_consistency(y_seq: Sequence[int], y_swapped: Sequence[int]) -> dict[str, float]:
    """consistency, bias_first, bias_second, delta_bias, total_bias of a judge run on both orders (raw labels
    of each run)."""
    y_seq, y_swapped = np.asarray(y_seq), np.asarray(y_swapped)
    if len(y_seq) != len(y_swapped):
        raise ValueError(f"position_consistency: {len(y_seq)} sequential vs {len(y_swapped)} swapped labels")
    n = len(y_seq)
    if n == 0:
        raise ValueError("position_consistency: no samples")
    d = -y_seq - y_swapped  # flipped sequential minus swapped
    before, after = int(np.sum(d < 0)), int(np.sum(d > 0))
    return {
        "consistency": float(np.mean(-y_seq == y_swapped)),
        "bias_first": before / n,
        "bias_second": after / n,
        "delta_bias": abs(before - after) / n,
        "total_bias": (before + after) / n,
    }


def _check_lengths(**lists: Sequence | None) -> None:
    sizes = {k: len(v) for k, v in lists.items() if v is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"length mismatch: {sizes}")


def verdict_metrics(y_true: Sequence[int], y_pred: Sequence[int], y_swapped: Sequence[int] | None = None,
                    y_report: Sequence[int] | None = None) -> dict[str, Any]:
    """Metrics of verdict labels: agreement, macro precision / recall / F1 and n of the reported verdicts
    (`y_report`, default the first order's `y_pred`) against `y_true`; with the swapped run's labels also
    consistency and position bias of the two runs, and `agreement_sequential` (the first order alone)
    when the reported verdict combines both."""
    _check_lengths(y_true=y_true, y_pred=y_pred, y_swapped=y_swapped, y_report=y_report)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    report = y_pred if y_report is None else np.asarray(y_report)
    p, r, f = macro_prf(y_true, report)
    out: dict[str, Any] = {"agreement": float(np.mean(y_true == report)), "precision": p, "recall": r, "f1": f,
                           "n": len(y_true)}
    if y_swapped is not None:
        out.update(position_consistency(y_pred, y_swapped))
    if y_report is not None:
        out["agreement_sequential"] = float(np.mean(y_true == y_pred))
    return out


def judge_metrics(
    gt_scores: Sequence[ScoresLike],
    pred_scores: Sequence[ScoresLike],
    pred_swapped_scores: Sequence[ScoresLike] | None = None,
    T: float = 0.0,
) -> dict[str, Any]:
    """JudgeLM's metrics of a judge against teacher scores (elements: score pairs, judgement texts or None).

    Keys: agreement, precision, recall, f1, n; with swapped predictions also consistency, bias_first,
    bias_second, delta_bias, total_bias; and the counts n_teacher_failures (dropped), pred_failures,
    pred_swapped_failures (kept, as ties). Fractions in [0, 1].
    """
    _check_lengths(gt=gt_scores, pred=pred_scores, swapped=pred_swapped_scores)
    gt = [_scores(s) for s in gt_scores]
    keep = [i for i, s in enumerate(gt) if not teacher_failed(s)]
    if not keep:
        raise ValueError("judge_metrics: no sample left after dropping teacher failures")
    pred = [_scores(pred_scores[i]) for i in keep]
    swapped = None if pred_swapped_scores is None else [_scores(pred_swapped_scores[i]) for i in keep]
    out = verdict_metrics(labels_from_scores([gt[i] for i in keep], T), labels_from_scores(pred, T),
                          None if swapped is None else labels_from_scores(swapped, T))
    out.update(n_teacher_failures=len(gt) - len(keep), pred_failures=sum(s is None for s in pred))
    if swapped is not None:
        out["pred_swapped_failures"] = sum(s is None for s in swapped)
    return out


def margin_auc(y_true: Sequence[int], margin: Sequence[float]) -> float | None:
    """Threshold-free separation of a judge's score margins (e.g. E[s1] - E[s2] of its score distribution):
    the probability that a random "1st wins" sample has a larger margin than a random "2nd wins" one,
    ties counting one half (the Mann-Whitney AUC). Tie labels are left out; None without both classes.
    0.5 is no signal. Unlike agreement it ignores calibration and a constant position offset, so it shows
    whether a weak judge ranks pairs at all before it learns where to put its tie threshold (not JudgeLM's).
    """
    y, m = np.asarray(y_true), np.asarray(margin, dtype=np.float64)
    _check_lengths(y_true=y, margin=m)
    pos, neg = m[y == 1], m[y == -1]
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float((np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size)


def length_correlation(values: Sequence[float], answer_lengths: Sequence[tuple[int, int]]) -> float | None:
    """Verbosity: Pearson r between per-sample values that speak for answer 1 (verdict labels, score
    margins) and the log length ratio log((1 + len1) / (1 + len2)) of the two answers, in characters.
    r > 0 leans toward the longer answer. None where either side is constant (e.g. a judge that always
    ties). Not JudgeLM's; compare a judge's r with the ground truth's to see a learnt length preference.
    """
    v = np.asarray(values, dtype=np.float64)
    n = np.asarray(answer_lengths, dtype=np.float64).reshape(-1, 2)
    _check_lengths(values=v, answer_lengths=n)
    ratio = np.log1p(n[:, 0]) - np.log1p(n[:, 1])
    if len(v) < 2 or np.ptp(v) == 0 or np.ptp(ratio) == 0:
        return None
    return float(np.corrcoef(v, ratio)[0, 1])


def p_win_labels(p_win: Sequence[Sequence[float] | None],
                 p_win_swapped: Sequence[Sequence[float] | None] | None = None) -> np.ndarray:
    """Verdicts from win probabilities (P(1st wins), P(tie), P(2nd wins)) per sample, e.g. jlm's score
    distributions: the most probable label, a tie on an exact draw and where the judge gave none.

    With the swapped run's probabilities (which speak of the swapped answers) the two orders are
    averaged first, as `jlm.Judge.score(swap=True)` averages its distributions: a preference for a
    position, which flips with the order, cancels; where one order has none the other stands alone.
    """
    def back(p):  # a swapped run's (1st, tie, 2nd) speaks of the original (2nd, tie, 1st)
        return None if p is None else p[::-1]

    rows = list(p_win) if p_win_swapped is None else [
        a if b is None else back(b) if a is None else [(x + y) / 2 for x, y in zip(a, back(b))]
        for a, b in zip(p_win, p_win_swapped, strict=True)]
    out = np.zeros(len(rows), dtype=np.int64)
    for i, p in enumerate(rows):
        if p is not None:
            if len(p) != 3:
                raise ValueError(f"p_win_labels: sample {i} has {len(p)} probabilities, not 3")
            win, tie, lose = p
            out[i] = 1 if win > max(tie, lose) else -1 if lose > max(tie, win) else 0
    return out


def combine_orders(y_seq: Sequence[int], y_swapped: Sequence[int]) -> np.ndarray:
    """PandaLM-protocol verdict: the sequential label where the swapped run agrees with it, else a tie."""
    y_seq, y_swapped = np.asarray(y_seq), np.asarray(y_swapped)
    return np.where(y_seq == -y_swapped, y_seq, 0)


def pandalm_protocol(
    gt_labels: Sequence[int],
    pred_scores: Sequence[ScoresLike],
    pred_swapped_scores: Sequence[ScoresLike] | None = None,
    T: float = 0.0,
) -> dict[str, Any]:
    """Metrics of a judge against human labels (1 / 0 / -1), judging both orders (see the module doc).

    Keys as `judge_metrics` (agreement etc. of the combined verdict), plus agreement_sequential (the
    first-order verdict alone) when swapped predictions are given.
    """
    _check_lengths(gt=gt_labels, pred=pred_scores, swapped=pred_swapped_scores)
    y_true = np.asarray(gt_labels, dtype=np.int64)
    if len(y_true) == 0:
        raise ValueError("pandalm_protocol: no samples")
    bad = set(y_true.tolist()) - set(LABELS)
    if bad:
        raise ValueError(f"pandalm_protocol: labels must be 1, 0 or -1, got {sorted(bad)}")
    pred = [_scores(s) for s in pred_scores]
    y_seq = labels_from_scores(pred, T)
    if pred_swapped_scores is None:
        return {**verdict_metrics(y_true, y_seq), "pred_failures": sum(s is None for s in pred)}
    swapped = [_scores(s) for s in pred_swapped_scores]
    y_swap = labels_from_scores(swapped, T)
    return {**verdict_metrics(y_true, y_seq, y_swap, combine_orders(y_seq, y_swap)),
            "pred_failures": sum(s is None for s in pred), "pred_swapped_failures": sum(s is None for s in swapped)}
