"""JudgeLM formats: prompt strings, score parsing and win labels, record readers."""
from jlm.formats.prompts import (
    PROMPT,
    SYSTEM,
    VQA_PROMPT,
    build_prompt,
    multi_turn_answer,
    multi_turn_question,
    number_word,
)
from jlm.formats.records import (
    FormatError,
    Item,
    JudgeSample,
    SampleList,
    read_autoj_pairwise,
    read_judgelm,
    read_keyed,
    read_pandalm,
    to_judgelm_record,
    write_jsonl,
)
from jlm.formats.scores import format_score_line, parse_scores, scores_label, win_label

__all__ = [
    "PROMPT",
    "SYSTEM",
    "VQA_PROMPT",
    "FormatError",
    "Item",
    "JudgeSample",
    "SampleList",
    "build_prompt",
    "format_score_line",
    "multi_turn_answer",
    "multi_turn_question",
    "number_word",
    "parse_scores",
    "read_autoj_pairwise",
    "read_judgelm",
    "read_keyed",
    "read_pandalm",
    "scores_label",
    "to_judgelm_record",
    "win_label",
    "write_jsonl",
]
