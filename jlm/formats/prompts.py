"""JudgeLM prompt strings and prompt assembly, byte-exact with the released checkpoints.

Every string here is what `judgelm/llm_judge/common.py` (commit 00c4516, behaviour of 35f6f17)
feeds the model (tests/fixtures/judgelm_prompts.json holds those literals).  The full prompt is

    SYSTEM + "\\n" + TEMPLATE.format(question=..., [reference=...,] answer_1=..., answer_2=..., prompt=PROMPT) + APPENDIX

with no chat template and no role tags; the tokenizer adds BOS in front.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of their "
    "responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance.\nPlease first output a single line containing only two values indicating the "
    "scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that "
    "the order in which the responses were presented does not affect your judgment."
)

# MM-Vet / VQA single-answer variant (`conv_judge_vqa_single_answer`); note the "\n " line starts.
VQA_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants' answers in comparing with "
    "the reference answer and determine if they match meaningfully. Please rate the helpfulness, relevance, "
    "accuracy, level of details of the Assistants' answers. To accomplish the task, you must : 1. Focus on the "
    "meaningful match between the reference answer and the Assistants' answers.\n 2. Consider synonyms or "
    "paraphrases as valid matches.\n 3. Evaluate the correctness of the Assistants' answers compared to the "
    "reference answer.\n 4. If there are multiple reference answers, the Assistants' answer is considered correct "
    "as long as it is close to any of the answers.\nPlease first output a single line containing only two values "
    "indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias "
    "and ensuring that the order in which the responses were presented does not affect your judgment."
)

TEMPLATE_NOREF = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)
TEMPLATE_REF = (
    "[Question]\n{question}\n\n[Reference Answer]\n{reference}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)
# Extra answers (k >= 3) of the multi-answer extension (PR #10), inserted right before "[System]".
ANSWER_FORMAT = "[The Start of Assistant {answer_id}'s Answer]\n{answer}\n\n[The End of Assistant {answer_id}'s Answer]\n\n"

APPENDIX = "### Response:"
APPENDIX_SINGLE = "### Response:10"  # single-answer grading: Assistant 1 (the reference answer) is forced to 10
SEP = "</s>"  # stop keyword of full generation; fast eval stops at "\n" instead

Mode = Literal["pair", "single", "multi", "vqa"]

_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)


def number_word(n: int) -> str:
    """English word for 1 <= n <= 19, the range JudgeLM's multi-answer script supports."""
    if not 1 <= n < len(_NUMBER_WORDS):
        raise ValueError(f"number_word: {n} is outside 1..19")
    return _NUMBER_WORDS[n]


def multi_prompt(n: int) -> str:
    """PROMPT rewritten for n answers: "two" -> number word, "Assistant 1 and 2" -> "Assistant 1, 2, ... and n"."""
    if n < 2:
        raise ValueError(f"multi_prompt: need at least 2 answers, got {n}")
    if n == 2:
        return PROMPT
    ids = ", ".join(str(i) for i in range(1, n)) + f" and {n}"
    return PROMPT.replace("two", number_word(n)).replace("for Assistant 1 and 2", f"for Assistant {ids}")


def build_prompt(
    question: str,
    answers: Sequence[str],
    reference: str | None = None,
    *,
    mode: Mode | None = None,
) -> str:
    """Full JudgeLM prompt, ending in "### Response:" (or "### Response:10" for single/vqa).

    mode: "pair" (2 answers), "multi" (>= 3 answers, zero-shot extension), "single" (2 answers: answer 1 is the
    reference/ground-truth answer that gets a forced 10, answer 2 the one graded), "vqa" (MM-Vet: 2 answers,
    a reference is required). None picks "pair" for 2 answers and "multi" for more. A reference switches
    to the with-reference template in every mode.
    """
    answers = list(answers)
    if mode is None:
        mode = "pair" if len(answers) == 2 else "multi"
    if mode in ("pair", "single", "vqa") and len(answers) != 2:
        raise ValueError(f"build_prompt: mode {mode!r} takes exactly 2 answers, got {len(answers)}")
    if mode == "multi" and len(answers) < 2:
        raise ValueError(f"build_prompt: mode 'multi' takes at least 2 answers, got {len(answers)}")
    if mode not in ("pair", "single", "multi", "vqa"):
        raise ValueError(f"build_prompt: unknown mode {mode!r}")
    if mode == "vqa" and reference is None:
        raise ValueError("build_prompt: mode 'vqa' needs the ground-truth answer as reference")

    prompt = VQA_PROMPT if mode == "vqa" else multi_prompt(len(answers))
    template = TEMPLATE_NOREF if reference is None else TEMPLATE_REF
    more = "".join(ANSWER_FORMAT.format(answer_id=k, answer=a) for k, a in enumerate(answers[2:], start=3))
    if more:
        template = template.replace("[System]\n", "{answer_more}[System]\n")
    # Like template.format(...), but a "{" inside a question or answer is copied, never parsed.
    body = _fill(template, question=question, reference=reference, answer_1=answers[0], answer_2=answers[1],
                 answer_more=more, prompt=prompt)
    appendix = APPENDIX_SINGLE if mode in ("single", "vqa") else APPENDIX
    return SYSTEM + "\n" + body + appendix


def _fill(template: str, **fields: str | None) -> str:
    """`template.format(**fields)` that never re-scans the values (placeholders used are never None)."""
    out, rest = [], template
    while True:
        start = rest.find("{")
        if start < 0:
            out.append(rest)
            return "".join(out)
        end = rest.index("}", start)
        value = fields[rest[start + 1:end]]
        out.append(rest[:start])
        out.append(value)
        rest = rest[end + 1:]


def vqa_answer_placeholder(ground_truth: str, rng=None) -> str:
    """MM-Vet's answer 1 derived from the ground truth: one `<OR>` alternative, `<AND>` read as " and ".

    JudgeLM picks the `<OR>` alternative with unseeded `random.choice`; pass a numpy Generator (or anything
    with `.integers`) for a reproducible pick, or None for the first alternative.
    """
    if "<OR>" in ground_truth:
        options = ground_truth.split("<OR>")
        return options[0 if rng is None else int(rng.integers(len(options)))]
    if "<AND>" in ground_truth:
        return ground_truth.replace("<AND>", " and ")
    return ground_truth


def multi_turn_question(turns: Sequence[str]) -> str:
    """Question body for judging the last turn of a multi-turn conversation (e.g. MT-bench turn 2).

    JudgeLM has one question slot, so every user turn goes into it with a header, and the last header says
    which replies are judged. The answers should be rendered with `multi_turn_answer` so that each assistant's
    own earlier replies stay visible (two assistants' turn-1 replies differ, so they cannot be shared here).
    """
    if not turns:
        raise ValueError("multi_turn_question: no turns")
    if len(turns) == 1:
        return turns[0]
    parts = [f"### User turn {i}:\n{t}" for i, t in enumerate(turns[:-1], start=1)]
    parts.append(f"### User turn {len(turns)} (judge the replies to this turn):\n{turns[-1]}")
    return "\n\n".join(parts)


def multi_turn_answer(replies: Sequence[str]) -> str:
    """Answer body holding one assistant's replies to every turn (see `multi_turn_question`)."""
    if not replies:
        raise ValueError("multi_turn_answer: no replies")
    if len(replies) == 1:
        return replies[0]
    return "\n\n".join(f"### Assistant turn {i}:\n{r}" for i, r in enumerate(replies, start=1))
