"""Evaluation outputs: metrics.json, a Markdown report, and PNG plots (confusion matrix, position bias)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jlm.metrics.judge import LABEL_NAMES, LABELS, confusion_matrix

_PERCENT_KEYS = ("agreement", "precision", "recall", "f1", "consistency", "bias_first", "bias_second",
                 "delta_bias", "total_bias", "agreement_sequential")


def plot_confusion(y_true: Sequence[int], y_pred: Sequence[int], path: str | Path, *,
                   truth_name: str = "ground truth", pred_name: str = "judge") -> None:
    """3x3 confusion matrix (rows: truth, columns: judge) with counts and row percentages."""
    cm = confusion_matrix(y_true, y_pred)
    row = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row, out=np.zeros(cm.shape), where=row > 0)
    fig = Figure(figsize=(4.8, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [LABEL_NAMES[x] for x in LABELS]
    ax.set_xticks(range(3), names)
    ax.set_yticks(range(3), names)
    ax.set_xlabel(pred_name)
    ax.set_ylabel(truth_name)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path)


def plot_position_bias(y_true: Sequence[int], y_pred: Sequence[int], y_swapped: Sequence[int] | None,
                       path: str | Path, *, truth_name: str = "ground truth") -> None:
    """Left: share of 1st-position wins / ties / 2nd-position wins for truth, judge, judge on swapped input.
    Right (with swapped predictions): consistent vs prefers 1st vs prefers 2nd position."""
    fig = Figure(figsize=(9 if y_swapped is not None else 5, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if y_swapped is not None else 1, 1)
    series = [(truth_name, y_true), ("judge", y_pred)]
    if y_swapped is not None:
        series.append(("judge, swapped input", y_swapped))
    width = 0.8 / len(series)
    for k, (name, y) in enumerate(series):
        y = np.asarray(y)
        shares = [float(np.mean(y == lab)) if len(y) else 0.0 for lab in LABELS]
        ax.bar(np.arange(3) + (k - (len(series) - 1) / 2) * width, shares, width, label=name)
    ax.set_xticks(range(3), [LABEL_NAMES[x] for x in LABELS])
    ax.set_ylabel("share of items")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Verdicts by position")
    if y_swapped is not None:
        seq, swp = np.asarray(y_pred), np.asarray(y_swapped)
        d = -seq - swp
        parts = [float(np.mean(d == 0)), float(np.mean(d < 0)), float(np.mean(d > 0))]
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.bar(["consistent", "prefers 1st", "prefers 2nd"], parts, color=["tab:green", "tab:orange", "tab:red"])
        for x, v in enumerate(parts):
            ax2.text(x, v + 0.01, f"{100 * v:.1f}%", ha="center", fontsize=9)
        ax2.set_ylim(0, 1)
        ax2.set_title("Judging both orders")
    fig.tight_layout()
    fig.savefig(path)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown_report(metrics: Mapping[str, Any], *, y_true: Sequence[int], y_pred: Sequence[int],
                    inputs: Mapping[str, Any], protocol: str, truth_name: str,
                    rankings: Mapping[str, Any] | None = None, images: Sequence[str] = ()) -> str:
    """The report text: inputs, metric table (percent), counts, confusion matrix, rankings, plots."""
    lines = ["# Judge evaluation", ""]
    for k, v in inputs.items():
        if v is not None:
            lines.append(f"- {k}: `{v}`")
    lines += [f"- protocol: {protocol}", ""]
    keys = [k for k in _PERCENT_KEYS if k in metrics]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
              "| " + " | ".join(_pct(metrics[k]) for k in keys) + " |", "",
              "Percent. Precision / recall / F1 are macro averages over the labels present.", ""]
    counts = [k for k in ("n", "n_teacher_failures", "pred_failures", "pred_swapped_failures") if k in metrics]
    lines += [", ".join(f"{k} = {metrics[k]}" for k in counts), ""]
    if "margin_auc" in metrics:
        lines += [f"Margin AUC (expected-score margin, 1st-wins vs 2nd-wins samples; 0.5 = no signal): "
                  f"{metrics['margin_auc']:.3f}", ""]
    corr = {name: metrics[f"length_corr_{key}"] for key, name in
            (("truth", truth_name), ("judge", "judge verdicts"), ("margin", "judge margins"))
            if f"length_corr_{key}" in metrics}
    if corr:
        lines += ["Length preference (Pearson r with log(len1 / len2); > 0 favours the longer answer): "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in corr.items()), ""]
    cm = confusion_matrix(y_true, y_pred)
    names = [LABEL_NAMES[x] for x in LABELS]
    lines += [f"## Confusion matrix (rows: {truth_name}, columns: judge)", "",
              "| | " + " | ".join(names) + " |", "|---|---|---|---|"]
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(str(int(c)) for c in cm[i]) + " |")
    lines.append("")
    if rankings:
        for title, rows in rankings.items():
            if title == "kendall_tau":
                continue
            lines += [f"## Ranking by {title} (Bradley-Terry)", "", "| # | model | rating | win rate | W-T-L |",
                      "|---|---|---|---|---|"]
            for i, r in enumerate(rows, start=1):
                lines.append(f"| {i} | {r['model']} | {r['rating']:.0f} | {100 * r['win_rate']:.1f}% | "
                             f"{r['wins']}-{r['ties']}-{r['losses']} |")
            lines.append("")
        if "kendall_tau" in rankings:
            lines += [f"Kendall tau between the two rankings: {rankings['kendall_tau']:.3f}", ""]
    for img in images:
        lines += [f"![{Path(img).stem}]({Path(img).name})", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], *, y_true: Sequence[int],
                 y_pred: Sequence[int], y_swapped: Sequence[int] | None = None,
                 y_first: Sequence[int] | None = None, inputs: Mapping[str, Any] | None = None,
                 protocol: str = "judgelm", truth_name: str = "ground truth",
                 rankings: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write metrics.json, report.md, confusion.png, position_bias.png (and ranking.json) into out_dir.
    `y_pred` is the reported verdict; where it combines both orders, `y_first` is the first order's own
    (the position plot compares the two runs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md",
             "confusion": out / "confusion.png", "position_bias": out / "position_bias.png"}
    paths["metrics"].write_text(json.dumps(dict(metrics), indent=2) + "\n")
    plot_confusion(y_true, y_pred, paths["confusion"], truth_name=truth_name)
    plot_position_bias(y_true, y_pred if y_first is None else y_first, y_swapped, paths["position_bias"],
                       truth_name=truth_name)
    if rankings:
        paths["ranking"] = out / "ranking.json"
        paths["ranking"].write_text(json.dumps(rankings, indent=2, default=str) + "\n")
    paths["report"].write_text(markdown_report(
        metrics, y_true=y_true, y_pred=y_pred, inputs=inputs or {}, protocol=protocol, truth_name=truth_name,
        rankings=rankings, images=[str(paths["confusion"]), str(paths["position_bias"])]))
    return paths
