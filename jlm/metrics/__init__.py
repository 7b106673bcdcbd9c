"""Judge metrics (JudgeLM's eval, PandaLM protocol), Bradley-Terry ranking, reports; `jlm eval` is in cli."""
from jlm.metrics.judge import (
    LABELS,
    combine_orders,
    confusion_matrix,
    judge_metrics,
    labels_from_scores,
    length_correlation,
    macro_prf,
    margin_auc,
    p_win_labels,
    pandalm_protocol,
    position_consistency,
    teacher_failed,
    verdict_metrics,
)
from jlm.metrics.ranking import bradley_terry, kendall_tau
from jlm.metrics.report import write_report

__all__ = [
    "LABELS",
    "bradley_terry",
    "combine_orders",
    "confusion_matrix",
    "judge_metrics",
    "kendall_tau",
    "labels_from_scores",
    "length_correlation",
    "macro_prf",
    "margin_auc",
    "p_win_labels",
    "pandalm_protocol",
    "position_consistency",
    "teacher_failed",
    "verdict_metrics",
    "write_report",
]
