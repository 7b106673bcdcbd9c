"""`jlm eval`: score a judge's predictions against teacher judgements (JudgeLM) or human labels (PandaLM, Auto-J).

    jlm eval --gt runs/data/val_gpt4.jsonl --pred preds.jsonl [--pred-swapped preds_rev.jsonl] --out DIR
    jlm eval --gt testset-v1.json --pred preds.jsonl --pred-swapped preds_rev.jsonl --out DIR   (PandaLM)

Ground truth (`--format`, default: guessed from the file):
  judgelm  JSONL with `question_id` and a judgement text (`--gt-field`, default `text`): JudgeLM's
           `*_gpt4*.jsonl` or full train/val records. Scored with JudgeLM's protocol (jlm.metrics.judge).
  pandalm  PandaLM test JSON (majority of the annotators); `question_id` of a prediction = `idx`.
  autoj    Auto-J pairwise JSONL; `question_id` of a prediction = 0-based record index.
           Human labels are scored with the PandaLM protocol (both orders; disagreement = tie).
Predictions: JSONL with `question_id` and the judge's output (`--pred-field`, default `pred_text`, as written
by JudgeLM's gen_model_judgement.py); `--pred-swapped` is the same judge run on the inputs with the answers
swapped. Everything is aligned by question_id; a missing or extra id is an error.
Readouts (`--readout`): how a verdict is read off each prediction.
  text   the judgement text's first line, parsed as JudgeLM does (default; a failure counts as a tie);
  mode   the most probable score line of jlm's score `distribution` (`jlm judge` records);
  p_win  the most probable verdict under that distribution, argmax of its (P(1st wins), P(tie),
         P(2nd wins)); with --pred-swapped the reported verdict averages the two orders' probabilities
         (as `jlm.Judge.score(swap=True)`), and `agreement_sequential` is the first order's alone.
  A record whose `distribution` is null (not judged) counts as a failure, i.e. a tie.
When every prediction carries jlm's score `distribution` (`jlm judge` records), metrics also get
`margin_auc`: how well the expected-score margin E[s1] - E[s2] separates the ground truth's "1st wins"
from its "2nd wins" samples (with --pred-swapped, the margin of the two orders averaged).
When the answer texts are known (`answer1_body` / `answer2_body` in the ground truth or the predictions;
always for PandaLM and Auto-J), `length_corr_*` measure verbosity: the Pearson r of the ground truth's
labels, the judge's verdicts and its margins with log(len1 / len2); > 0 favours the longer answer.
Writes metrics.json, report.md, confusion.png, position_bias.png (and ranking.json when the predictions or
ground truth carry `answer1_model_id` / `answer2_model_id`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jlm.formats.records import (
    FormatError,
    JudgeSample,
    Keyed,
    check_aligned,
    iter_jsonl,
    read_autoj_pairwise,
    read_keyed,
    read_pandalm,
)
from jlm.formats.scores import parse_scores
from jlm.metrics.judge import (
    combine_orders,
    labels_from_scores,
    length_correlation,
    margin_auc,
    p_win_labels,
    teacher_failed,
    verdict_metrics,
)
from jlm.metrics.ranking import bradley_terry, kendall_tau
from jlm.metrics.report import write_report


def guess_format(path: str | Path) -> str:
    """"pandalm" for a JSON array file, "autoj" for JSONL with `response 1`, else "judgelm"."""
    name = str(path)
    if name.endswith((".json", ".json.gz")):
        return "pandalm"
    for _, obj in iter_jsonl(path):
        return "autoj" if "response 1" in obj else "judgelm"
    raise FormatError(path, None, None, "empty file")


def _model_ids(record: dict) -> tuple[str, str] | None:
    a, b = record.get("answer1_model_id"), record.get("answer2_model_id")
    return (str(a), str(b)) if a and b and a != b else None


def _rankings(pairs: Sequence[tuple[str, str] | None], y_judge: np.ndarray, y_truth: np.ndarray,
              truth_name: str) -> dict[str, Any] | None:
    """BT rankings of the answering models by the judge's and the ground truth's verdicts, if ids are known."""
    if not pairs or any(p is None for p in pairs):
        return None
    judge = bradley_terry((a, b, int(y)) for (a, b), y in zip(pairs, y_judge))
    truth = bradley_terry((a, b, int(y)) for (a, b), y in zip(pairs, y_truth))
    out: dict[str, Any] = {"judge": judge, truth_name: truth}
    if len(judge) >= 2:
        out["kendall_tau"] = kendall_tau({r["model"]: r["rating"] for r in judge},
                                         {r["model"]: r["rating"] for r in truth})
    return out


def _aligned_to_samples(samples: Sequence[JudgeSample], gt_path: str, pred: Keyed) -> None:
    ids = {s.question_id for s in samples}
    for qid, line in pred.lines.items():
        if qid not in ids:
            raise FormatError(pred.path, line, "question_id", f"id {qid!r} is not in {gt_path}")
    for s in samples:
        if s.question_id not in pred.records:
            raise FormatError(pred.path, None, "question_id", f"no prediction for id {s.question_id!r} of {gt_path}")


def _margins(pred: Keyed, swapped: Keyed | None, ids: Sequence) -> np.ndarray | None:
    """E[s1] - E[s2] of each prediction's score distribution, for answer 1 of the original order (the
    two orders averaged when there are swapped predictions); None unless every record has one."""
    def margin(keyed: Keyed, q) -> float | None:
        d = keyed.records[q].get("distribution")
        e = d.get("expected") if isinstance(d, dict) else None
        return float(e[0]) - float(e[1]) if isinstance(e, list) and len(e) == 2 else None

    m = [margin(pred, q) for q in ids]
    if swapped is not None:
        m = [None if a is None or (b := margin(swapped, q)) is None else (a - b) / 2 for a, q in zip(m, ids)]
    return None if not m or any(x is None for x in m) else np.array(m)


def _answer_lengths(records: Sequence[dict]) -> list[tuple[int, int]] | None:
    """(len(answer1_body), len(answer2_body)) of each record; None unless every record has both."""
    bodies = [(r.get("answer1_body"), r.get("answer2_body")) for r in records]
    if not bodies or not all(isinstance(a, str) and isinstance(b, str) for a, b in bodies):
        return None
    return [(len(a), len(b)) for a, b in bodies]


READOUTS = {"text": "the judgement's first line", "mode": "the score distribution's most probable line",
            "p_win": "the score distribution's win / tie / loss probabilities"}


def _distribution_field(keyed: Keyed, q, key: str, size: int) -> list[float] | None:
    """`distribution[key]` of a prediction (a list of `size` numbers); None where the distribution is null."""
    rec = keyed.records[q]
    if "distribution" not in rec:
        raise FormatError(keyed.path, keyed.lines[q], "distribution",
                          f"missing; --readout {key} reads jlm's score distribution (`jlm judge` records)")
    d = rec["distribution"]
    if d is None:
        return None
    v = d.get(key) if isinstance(d, dict) else None
    if not (isinstance(v, list) and len(v) == size and all(isinstance(x, (int, float)) for x in v)):
        raise FormatError(keyed.path, keyed.lines[q], f"distribution.{key}", f"expected a list of {size} numbers")
    return [float(x) for x in v]


def _readout(args: argparse.Namespace, keyed: Keyed, ids: Sequence) -> tuple[np.ndarray, int, list]:
    """Each prediction's verdict label by `args.readout`, how many failed (counted as ties), and what the
    labels were read from (score pairs, or p_win triples), None for a failure."""
    if args.readout == "p_win":
        p = [_distribution_field(keyed, q, "p_win", 3) for q in ids]
        return p_win_labels(p), sum(x is None for x in p), p
    if args.readout == "mode":
        scores = [_distribution_field(keyed, q, "mode", 2) for q in ids]
    else:
        scores = [parse_scores(keyed.records[q][args.pred_field], 2, tolerant=args.tolerant) for q in ids]
    return labels_from_scores(scores, args.T), sum(s is None for s in scores), scores


def _both_orders(record: dict) -> bool:
    return isinstance(record.get("original"), dict) and isinstance(record.get("swap"), dict)


def _split_orders(pred: Keyed) -> tuple[Keyed, Keyed]:
    """A `jlm judge --swap` file as two prediction files: each order's own judgement (`original`,
    `swap`) over the record's other fields."""
    def order(name):
        return Keyed(pred.path, {q: {**r, **r[name]} for q, r in pred.records.items()}, pred.lines)
    return order("original"), order("swap")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    fmt = guess_format(args.gt) if args.format == "auto" else args.format
    if args.readout == "p_win" and args.T != 0:
        raise ValueError("--readout p_win takes no tie threshold: the distribution's P(tie) is P(s1 == s2)")
    pred = read_keyed(args.pred, args.pred_field)
    swapped = read_keyed(args.pred_swapped, args.pred_field) if args.pred_swapped else None
    if swapped is None and pred.records and all(_both_orders(r) for r in pred.records.values()):
        pred, swapped = _split_orders(pred)
    counts: dict[str, int] = {}
    if fmt == "judgelm":
        gt = read_keyed(args.gt, args.gt_field)
        for other in (pred, swapped):
            if other is not None:
                check_aligned(gt, other)
        ids = list(gt.records)
        gt_scores = [parse_scores(gt.records[q][args.gt_field], 2) for q in ids]
        keep = [i for i, s in enumerate(gt_scores) if not teacher_failed(s)]
        if not keep:
            raise ValueError(f"{args.gt}: no teacher judgement parses")
        counts["n_teacher_failures"] = len(ids) - len(keep)
        y_true = labels_from_scores([gt_scores[i] for i in keep], args.T)
        truth_name, protocol = "teacher", "JudgeLM: teacher failures dropped, judge failures are ties"
        pairs = [_model_ids(pred.records[ids[i]]) or _model_ids(gt.records[ids[i]]) for i in keep]
        lengths = _answer_lengths([gt.records[ids[i]] for i in keep]) or _answer_lengths(
            [pred.records[ids[i]] for i in keep])
    elif fmt in ("pandalm", "autoj"):
        samples = read_pandalm(args.gt) if fmt == "pandalm" else read_autoj_pairwise(args.gt)
        for other in (pred, swapped):
            if other is not None:
                _aligned_to_samples(samples, args.gt, other)
        ids = [s.question_id for s in samples]
        keep = list(range(len(ids)))
        y_true = np.array([s.label for s in samples])
        truth_name = "human"
        protocol = "PandaLM: human majority label, judge failures are ties"
        if samples.dropped:
            counts["n_gt_dropped"] = sum(samples.dropped.values())
        pairs = [_model_ids(pred.records[q]) or (tuple(s.model_ids) if len(s.model_ids) == 2 else None)
                 for q, s in zip(ids, samples)]
        lengths = [(len(s.answers[0]), len(s.answers[1])) for s in samples]
    else:
        raise ValueError(f"unknown format {fmt!r}")

    kept = [ids[i] for i in keep]
    y_pred, counts["pred_failures"], first = _readout(args, pred, kept)
    y_swapped = y_report = None  # y_report: the verdict that counts, where it is not the first order's
    protocol += f"; verdict read from {READOUTS[args.readout]}"
    if swapped is None:
        protocol += ", one order only"
    else:
        y_swapped, counts["pred_swapped_failures"], second = _readout(args, swapped, kept)
        if args.readout == "p_win":
            y_report = p_win_labels(first, second)
            protocol += ", the two orders' probabilities averaged"
        elif fmt != "judgelm":  # under the PandaLM protocol the verdict that counts is the two orders combined
            y_report = combine_orders(y_pred, y_swapped)
            protocol += ", both orders: disagreeing verdicts become ties"
        else:
            protocol += ", the first order's (the swapped run measures consistency)"
    metrics = verdict_metrics(y_true, y_pred, y_swapped, y_report)
    y_report = y_pred if y_report is None else y_report
    rankings = _rankings(pairs, y_report, y_true, truth_name)
    metrics = {**metrics, **counts, "T": args.T, "format": fmt, "readout": args.readout}
    margins = _margins(pred, swapped, kept)
    if margins is not None and (auc := margin_auc(y_true, margins)) is not None:
        metrics["margin_auc"] = auc
    if lengths is not None:
        for key, values in (("truth", y_true), ("judge", y_report), ("margin", margins)):
            if values is not None and (r := length_correlation(values, lengths)) is not None:
                metrics[f"length_corr_{key}"] = r
    paths = write_report(
        args.out, metrics, y_true=y_true, y_pred=y_report, y_swapped=y_swapped, y_first=y_pred,
        protocol=protocol, truth_name=truth_name, rankings=rankings,
        inputs={"ground truth": args.gt, "predictions": args.pred, "predictions on swapped input": args.pred_swapped},
    )
    return {"metrics": metrics, "paths": paths}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jlm eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--gt", required=True, help="ground truth file (see --format)")
    p.add_argument("--pred", required=True, help="judge predictions, JSONL")
    p.add_argument("--pred-swapped", help="judge predictions on the swapped inputs, JSONL (not needed for "
                                          "`jlm judge --swap` output, which holds both orders)")
    p.add_argument("--format", choices=("auto", "judgelm", "pandalm", "autoj"), default="auto")
    p.add_argument("--gt-field", default="text", help="judgement field of JudgeLM ground truth (default: text; "
                   "text_w_reference for with-reference runs on full records)")
    p.add_argument("--pred-field", default="pred_text", help="judgement field of the predictions")
    p.add_argument("--T", type=float, default=0.0, help="tie threshold: |s1 - s2| <= T is a tie (default 0)")
    p.add_argument("--readout", choices=tuple(READOUTS), default="text",
                   help="what a verdict is read from: the judgement text (JudgeLM), or jlm's score distribution's "
                        "most probable score line (mode) or most probable verdict (p_win); see below")
    p.add_argument("--tolerant", action="store_true",
                   help="parse the predictions with the tolerant parser (8/10, 'Assistant 1: 8', ...)")
    p.add_argument("--out", default="eval_out", help="output directory (default: eval_out)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args)
    except (FormatError, OSError, ValueError) as e:
        print(f"jlm eval: error: {e}", file=sys.stderr)
        return 2
    m = result["metrics"]
    shown = {k: m[k] for k in ("agreement", "precision", "recall", "f1", "consistency", "bias_first",
                               "bias_second", "delta_bias", "total_bias") if k in m}
    auc = f"  margin_auc {m['margin_auc']:.3f}" if "margin_auc" in m else ""
    print("  ".join(f"{k} {100 * v:.2f}" for k, v in shown.items()) + f"{auc}  n {m['n']}")
    print(f"wrote {', '.join(str(p) for p in result['paths'].values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
