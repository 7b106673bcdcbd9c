"""Prompt strings against JudgeLM's upstream literals (tests/fixtures/judgelm_prompts.json), byte for byte."""
import json
from pathlib import Path

import numpy as np
import pytest

from jlm.formats import prompts as P
from jlm.formats.prompts import build_prompt, multi_turn_answer, multi_turn_question, number_word

# The upstream literals, copied byte for byte from JudgeLM's judgelm/llm_judge/common.py (see the fixture's "source").
FIXTURE = Path(__file__).parent / "fixtures" / "judgelm_prompts.json"
SPEC = json.loads(FIXTURE.read_text(encoding="utf-8"))
SPEC_SYSTEM = SPEC["SYSTEM"]
SPEC_PROMPT = SPEC["PROMPT"]
SPEC_VQA = SPEC["VQA_PROMPT"]
LITERALS = ("SYSTEM", "PROMPT", "TEMPLATE_NOREF", "TEMPLATE_REF", "APPENDIX", "APPENDIX_SINGLE", "VQA_PROMPT")


def test_fixture_names_upstream_source():
    assert SPEC["source"]["repository"] == "https://github.com/baaivision/JudgeLM"
    assert SPEC["source"]["file"] == "judgelm/llm_judge/common.py"
    assert all(isinstance(SPEC[name], str) and SPEC[name] for name in LITERALS)


@pytest.mark.parametrize("name", LITERALS)
def test_constants_match_upstream_literals(name):
    assert getattr(P, name) == SPEC[name]


def test_pair_prompt_exact():
    got = build_prompt("What is 2+2?\n", ["4", "Five."])
    want = (SPEC_SYSTEM + "\n[Question]\nWhat is 2+2?\n\n\n[The Start of Assistant 1's Answer]\n4\n\n"
            "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\nFive.\n\n"
            "[The End of Assistant 2's Answer]\n\n[System]\n" + SPEC_PROMPT + "\n\n### Response:")
    assert got == want
    assert got.endswith("does not affect your judgment.\n\n### Response:")


def test_pair_prompt_with_reference_exact():
    got = build_prompt("Q", ["a", "b"], reference="R")
    want = (SPEC_SYSTEM + "\n[Question]\nQ\n\n[Reference Answer]\nR\n\n[The Start of Assistant 1's Answer]\na\n\n"
            "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\nb\n\n"
            "[The End of Assistant 2's Answer]\n\n[System]\n" + SPEC_PROMPT + "\n\n### Response:")
    assert got == want


def test_single_answer_appendix():
    got = build_prompt("Q", ["gt", "model"], mode="single")
    assert got.endswith(SPEC_PROMPT + "\n\n### Response:10")
    assert got == build_prompt("Q", ["gt", "model"])[: -len("### Response:")] + "### Response:10"
    with_ref = build_prompt("Q", ["gt", "model"], "R", mode="single")
    assert "[Reference Answer]\nR\n\n" in with_ref and with_ref.endswith("### Response:10")


def test_multi_three_answers_exact():
    got = build_prompt("Q", ["a", "b", "c"])
    prompt3 = SPEC_PROMPT.replace("two AI", "three AI").replace("only two values", "only three values") \
        .replace("for Assistant 1 and 2,", "for Assistant 1, 2 and 3,").replace("The two scores", "The three scores")
    want = (SPEC_SYSTEM + "\n[Question]\nQ\n\n[The Start of Assistant 1's Answer]\na\n\n"
            "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\nb\n\n"
            "[The End of Assistant 2's Answer]\n\n[The Start of Assistant 3's Answer]\nc\n\n"
            "[The End of Assistant 3's Answer]\n\n[System]\n" + prompt3 + "\n\n### Response:")
    assert got == want
    assert "performance of three AI assistants" in got
    assert "containing only three values indicating the scores for Assistant 1, 2 and 3, respectively. " \
           "The three scores are separated by a space." in got


def test_multi_four_answers_with_reference():
    got = build_prompt("Q", ["a", "b", "c", "d"], "R", mode="multi")
    for piece in ("performance of four AI assistants", "only four values indicating the scores for "
                  "Assistant 1, 2, 3 and 4, respectively. The four scores are separated by a space."):
        assert piece in got
    assert ("[The End of Assistant 2's Answer]\n\n[The Start of Assistant 3's Answer]\nc\n\n[The End of Assistant "
            "3's Answer]\n\n[The Start of Assistant 4's Answer]\nd\n\n[The End of Assistant 4's Answer]\n\n[System]\n"
            ) in got
    assert got.startswith(SPEC_SYSTEM + "\n[Question]\nQ\n\n[Reference Answer]\nR\n\n")
    assert " two " not in got


def test_vqa_prompt():
    got = build_prompt("What is in the image?", ["cat", "a dog"], "cat<OR>kitten", mode="vqa")
    want = (SPEC_SYSTEM + "\n[Question]\nWhat is in the image?\n\n[Reference Answer]\ncat<OR>kitten\n\n"
            "[The Start of Assistant 1's Answer]\ncat\n\n[The End of Assistant 1's Answer]\n\n"
            "[The Start of Assistant 2's Answer]\na dog\n\n[The End of Assistant 2's Answer]\n\n[System]\n"
            + SPEC_VQA + "\n\n### Response:10")
    assert got == want
    with pytest.raises(ValueError, match="reference"):
        build_prompt("Q", ["a", "b"], mode="vqa")


def test_vqa_placeholder():
    assert P.vqa_answer_placeholder("a<AND>b") == "a and b"
    assert P.vqa_answer_placeholder("plain") == "plain"
    assert P.vqa_answer_placeholder("x<OR>y<OR>z") == "x"
    picks = {P.vqa_answer_placeholder("x<OR>y<OR>z", np.random.default_rng(s)) for s in range(40)}
    assert picks == {"x", "y", "z"}


def test_braces_in_text_are_copied_verbatim():
    got = build_prompt("f{x} {question}", ["{answer_2}", "}{"], reference="{0}")
    assert "[Question]\nf{x} {question}\n\n[Reference Answer]\n{0}\n\n" in got
    assert "Answer]\n{answer_2}\n\n[The End of Assistant 1" in got
    assert "Answer]\n}{\n\n[The End of Assistant 2" in got


def test_number_word():
    assert [number_word(n) for n in (2, 3, 4, 10, 19)] == ["two", "three", "four", "ten", "nineteen"]
    for bad in (0, 20):
        with pytest.raises(ValueError):
            number_word(bad)


def test_bad_modes_and_counts():
    with pytest.raises(ValueError, match="exactly 2"):
        build_prompt("Q", ["a", "b", "c"], mode="pair")
    with pytest.raises(ValueError, match="exactly 2"):
        build_prompt("Q", ["a"], mode="single")
    with pytest.raises(ValueError, match="at least 2"):
        build_prompt("Q", ["a"], mode="multi")
    with pytest.raises(ValueError, match="unknown mode"):
        build_prompt("Q", ["a", "b"], mode="triple")


def test_multi_turn_helpers():
    q = multi_turn_question(["First?", "Second?"])
    assert q == "### User turn 1:\nFirst?\n\n### User turn 2 (judge the replies to this turn):\nSecond?"
    a = multi_turn_answer(["one", "two"])
    assert a == "### Assistant turn 1:\none\n\n### Assistant turn 2:\ntwo"
    assert multi_turn_question(["Only"]) == "Only" and multi_turn_answer(["x"]) == "x"
    with pytest.raises(ValueError):
        multi_turn_question([])
