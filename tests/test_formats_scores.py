"""Score parsing (JudgeLM mode and tolerant mode) and win labels."""
import math

import pytest

from jlm.formats.scores import format_score_line, parse_scores, scores_label, win_label


def judgelm_parse_score(review):
    """JudgeLM's parse_score (its eval/gen scripts), transcribed from its behaviour, for comparison."""
    try:
        sp = review.split("\n")[0].replace(",", " ").split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        raise Exception("Invalid score pair.")
    except Exception:
        return [-1, -1]


JUDGELM_CASES = [
    "8 9\nexplanation", "2 8", "7.5 8\n", "8,9\nx", "8, 9\nx", "8  9", " 8 9", "8 9 10", "8/10 9/10",
    "Assistant 1: 8", "", "\n8 9", "8\t9", "8 9\r\nx", "1e1 3", "nan 3", "-1 -1", "10", "a b", "8 9 ",
]


@pytest.mark.parametrize("text", JUDGELM_CASES)
def test_judgelm_mode_is_parse_score(text):
    ours = parse_scores(text)
    ref = judgelm_parse_score(text)
    if ours is None:
        assert ref == [-1, -1]
    else:
        assert len(ours) == 2
        for a, b in zip(ours, ref):
            assert (math.isnan(a) and math.isnan(b)) or a == b


def test_judgelm_mode_examples():
    assert parse_scores("2 8\nAssistant 1 ...") == [2.0, 8.0]
    assert parse_scores("7.5 8") == [7.5, 8.0]
    assert parse_scores("8,9") == [8.0, 9.0]
    assert parse_scores("8, 9") is None  # comma + space = two spaces = three tokens, as in JudgeLM
    assert parse_scores("8/10 9/10") is None
    assert parse_scores("8") is None
    assert parse_scores(None) is None
    assert parse_scores("1 5\n\nwith reference") == [1.0, 5.0]


def test_n_scores():
    assert parse_scores("1 2 3\nx", n=3) == [1.0, 2.0, 3.0]
    assert parse_scores("1 2\nx", n=3) is None
    assert parse_scores("7", n=1) == [7.0]


@pytest.mark.parametrize("text,want", [
    ("8/10 9/10\nexpl", [8.0, 9.0]),
    ("Assistant 1 gets 8/10. Assistant 2 gets 9.5/10.", [8.0, 9.5]),
    ("Assistant 1: 8, Assistant 2: 9", [8.0, 9.0]),
    ("Assistant 1: 8\nAssistant 2: 7.5\nbecause", [8.0, 7.5]),
    ("Scores: 8 and 7.5", [8.0, 7.5]),
    ("[8, 9]", [8.0, 9.0]),
    ("8  9", [8.0, 9.0]),
    ("\n\n8 9\n", [8.0, 9.0]),
    ("8 out of 10, 6 out of 10", [8.0, 6.0]),
    ("Here is my view.\nAssistant 2 receives a score of 4. Assistant 1 receives a score of 9.", [9.0, 4.0]),
    ("Assistant 1's score is 6 and Assistant 2's score is 3", [6.0, 3.0]),
])
def test_tolerant_mode(text, want):
    assert parse_scores(text, tolerant=True) == want


@pytest.mark.parametrize("text", ["no numbers here", "8 9 10", "Assistant 1: 8 only", "", "Assistant 1 and 2 tie"])
def test_tolerant_mode_failures(text):
    assert parse_scores(text, tolerant=True) is None


def test_tolerant_mode_prefers_strict_result():
    assert parse_scores("3 4\nAssistant 1: 9, Assistant 2: 1", tolerant=True) == [3.0, 4.0]


def test_win_label_threshold_and_failure():
    assert win_label(8, 5) == 1
    assert win_label(5, 8) == -1
    assert win_label(7, 7) == 0
    assert win_label(8, 7.5, T=0.5) == 0
    assert win_label(8, 7.4, T=0.5) == 1
    assert win_label(None, 3) == 0
    assert scores_label(None) == 0
    assert scores_label([-1, -1]) == 0  # JudgeLM's failure sentinel is a tie
    assert scores_label([2, 9]) == -1
    with pytest.raises(ValueError):
        scores_label([1, 2, 3])


def test_format_score_line():
    assert format_score_line([2.0, 8.0]) == "2 8"
    assert format_score_line([8.5, 10]) == "8.5 10"
    with pytest.raises(ValueError):
        format_score_line([float("nan"), 1])
