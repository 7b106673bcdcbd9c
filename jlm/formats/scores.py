"""Score-line parsing and win labels, compatible with JudgeLM's `parse_score` / `translate_score_to_win_list`.

JudgeLM mode (the default) is exactly `parse_score` generalised to n numbers: take the first line, turn commas
into spaces, split on single spaces, and accept exactly n tokens that Python's `float` reads; anything else
is a failure (JudgeLM returns [-1, -1], we return None). A failure counts as a tie.

Tolerant mode (`tolerant=True`) is for other judges' and sloppier outputs; it first tries JudgeLM mode, then:
  1. the first non-empty line with "Assistant k" labels and "/10", "out of 10" denominators removed, if it
     holds exactly n numbers ("8/10 9/10", "Assistant 1: 8, Assistant 2: 9", "Scores: 8 and 7.5", "[8, 9]");
  2. labelled scores anywhere in the text, one per assistant 1..n ("Assistant 1: 8\\nAssistant 2: 9",
     "Assistant 2 receives a score of 7").
Numbers are unsigned decimals ("7.5" is fine); tolerant mode never reads a sign.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_DENOMINATOR = re.compile(r"\s*(?:/|out\s+of)\s*10(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
_LABEL = re.compile(r"\bAssistant\s*#?\s*\d+\b", re.IGNORECASE)
_LABELLED = re.compile(
    r"\bAssistant\s*#?\s*(\d+)(?:'s)?(?:\s+(?:overall\s+)?(?:score|rating))?\s*"
    r"(?::|=|-|\bis\b|\bgets\b|\breceives(?:\s+an?\s+(?:overall\s+)?score\s+of)?\b|\bscores?\b)?\s*"
    r"(" + _NUM + r")(?!\.?\d)",
    re.IGNORECASE,
)


def parse_scores(text: str | None, n: int = 2, tolerant: bool = False) -> list[float] | None:
    """The n scores of a judgement's first line, or None when it cannot be parsed (a tie downstream)."""
    if not isinstance(text, str):
        return None
    strict = _parse_judgelm(text, n)
    if strict is not None or not tolerant:
        return strict
    return _parse_tolerant(text, n)


def _parse_judgelm(text: str, n: int) -> list[float] | None:
    tokens = text.split("\n")[0].replace(",", " ").split(" ")
    if len(tokens) != n:
        return None
    try:
        return [float(t) for t in tokens]  # float() also accepts "7.5", " 8\r", "1e1", "nan", as JudgeLM does
    except ValueError:
        return None


def _parse_tolerant(text: str, n: int) -> list[float] | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    first = _DENOMINATOR.sub(" ", _LABEL.sub(" ", lines[0]))
    numbers = re.findall(_NUM, first)
    if len(numbers) == n:
        return [float(x) for x in numbers]
    found: dict[int, float] = {}
    for m in _LABELLED.finditer(text):
        found.setdefault(int(m.group(1)), float(m.group(2)))
    if all(k in found for k in range(1, n + 1)):
        return [found[k] for k in range(1, n + 1)]
    return None


def win_label(s1: float | None, s2: float | None, T: float = 0.0) -> int:
    """1 if answer 1 wins by more than T, -1 if answer 2 does, else 0 (tie; also for a missing score)."""
    if s1 is None or s2 is None:
        return 0
    if s1 - s2 > T:
        return 1
    if s2 - s1 > T:
        return -1
    return 0


def scores_label(scores: Sequence[float] | None, T: float = 0.0) -> int:
    """`win_label` of a parsed pair; a parse failure (None) is a tie, as in JudgeLM."""
    if scores is None:
        return 0
    if len(scores) != 2:
        raise ValueError(f"scores_label: need 2 scores, got {len(scores)}")
    return win_label(scores[0], scores[1], T)


def format_score(x: float) -> str:
    """A score as JudgeLM's judgements write it: "8" for 8.0, "7.5" for 7.5."""
    if not math.isfinite(x):
        raise ValueError(f"format_score: {x} is not a finite score")
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def format_score_line(scores: Sequence[float]) -> str:
    """The first line of a judgement: the scores separated by one space ("2 8")."""
    return " ".join(format_score(s) for s in scores)
