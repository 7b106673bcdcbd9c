"""Tasks on top of `Judge.score`: grading with / without a reference, N answers in one prompt vs
pairwise + Bradley-Terry, and multi-turn (MT-bench turn 2) items.

The ranking logic is checked with a scripted judge whose scores are known (answer length), so
agreement can be exactly 1 or -1; the real engine path runs on the bigram judge of test_judge.py.
"""

import numpy as np
import pytest

from jlm.formats.prompts import build_prompt
from jlm.formats.scores import win_label
from jlm.infer.judge import Judgement, as_item
from jlm.infer.multiturn import mtbench_items, multi_turn_item
from jlm.infer.ranking import compare_rankings, max_answers
from test_engine import ByteTok
from test_judge import bigram_judge, line_prob


class Cfg:
    max_position_embeddings = 4096


class ScriptedJudge:
    """Scores every answer by its length (or minus it, `reverse_pairs` for pairs only)."""

    def __init__(self, reverse_pairs=False):
        self.cfg, self.tokenizer, self.score_tokens = Cfg(), ByteTok(), 8
        self.reverse_pairs = reverse_pairs
        self.calls = []

    def score(self, samples, *, mode=None, swap=False, distributions=True, reference=None):
        self.calls.append((len(samples), mode, swap))
        out = []
        for k, s in enumerate(samples):
            it = as_item(s)
            sign = -1 if (self.reverse_pairs and len(it.answers) == 2) else 1
            scores = tuple(float(sign * len(a)) for a in it.answers)
            text = " ".join(f"{x:g}" for x in scores)
            out.append(Judgement(index=k, question_id=None, mode=mode or "pair", text=text, scores=scores,
                                 verdict=win_label(*scores) if len(scores) == 2 else None,
                                 ranking=tuple(np.argsort(-np.asarray(scores), kind="stable").tolist())))
        return out


ANSWERS = ["medium answer", "a", "the longest answer of all", "tiny"]


def test_n_answers_vs_pairwise_agree_and_cost():
    cmp = compare_rankings(ScriptedJudge(), "Q?", ANSWERS)
    assert cmp.multi_ranking == cmp.pairwise_ranking == (2, 0, 3, 1)
    assert cmp.kendall_tau == pytest.approx(1.0)
    assert [(i, j) for i, j, _ in cmp.pairwise] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    tok = ByteTok()
    assert cmp.cost["multi"].prompts == 1 and cmp.cost["pairwise"].prompts == 6
    assert cmp.cost["multi"].prompt_tokens == len(tok.encode(build_prompt("Q?", ANSWERS)))
    assert cmp.cost["pairwise"].prompt_tokens == sum(len(tok.encode(build_prompt("Q?", [ANSWERS[i], ANSWERS[j]])))
                                                     for i, j, _ in cmp.pairwise)
    assert cmp.cost["multi"].generated_tokens == len("13 1 25 4") + 1  # the text and its line end


def test_disagreeing_pairwise_judge_gives_negative_tau():
    cmp = compare_rankings(ScriptedJudge(reverse_pairs=True), "Q?", ANSWERS)
    assert cmp.pairwise_ranking == (1, 3, 0, 2) and cmp.kendall_tau == pytest.approx(-1.0)


def test_answers_that_do_not_fit_are_an_error():
    judge = ScriptedJudge()
    judge.cfg.max_position_embeddings = 1100  # 2 answers: 991 prompt tokens, 3 answers: 1098
    assert max_answers(judge, "Q?", ANSWERS) == 2
    with pytest.raises(ValueError, match="first 2 do"):
        compare_rankings(judge, "Q?", ANSWERS)


def test_compare_on_the_engine():
    judge = bigram_judge()
    cmp = compare_rankings(judge, "Q?", ANSWERS[:3], swap=True)
    assert cmp.multi.text == "8 3" and cmp.multi.scores is None and cmp.kendall_tau is None  # not 3 numbers
    # "8 3" in both orders: every pair averages to a tie, so BT keeps the three answers level
    assert all(r.verdict == 0 and r.scores == (5.5, 5.5) for _, _, r in cmp.pairwise)
    assert len({round(row["rating"], 6) for row in cmp.bt}) == 1
    assert cmp.cost["pairwise"].prompts == 6 and cmp.cost["pairwise"].generated_tokens == 6 * 4


def test_grading_with_and_without_reference(monkeypatch):
    judge = bigram_judge()
    seen = []
    real = judge.engine.prefill
    monkeypatch.setattr(judge.engine, "prefill", lambda p, rows, **k: seen.extend(
        judge.tokenizer.decode(p[r]) for r in rows) or real(p, rows, **k))
    sample = ("What is 2+2?", "4", "five")
    plain = judge.grade([sample])[0]
    with_ref = judge.grade([sample], reference=["2+2 = 4"])[0]
    assert seen[0] == build_prompt(*sample[:1], sample[1:], mode="single")
    assert seen[1] == build_prompt(*sample[:1], sample[1:], "2+2 = 4", mode="single")
    assert "[Reference Answer]\n2+2 = 4" in seen[1] and seen[1].endswith("### Response:10")
    want = np.array([line_prob("0", f" {b}") for b in range(1, 11)])
    for r in (plain, with_ref):
        assert r.scores == (3.0,) and r.distribution.mode == (3,)
        np.testing.assert_allclose(r.distribution.joint, want / want.sum(), atol=1e-6)
        assert r.distribution.expected[0] == pytest.approx(float(want @ np.arange(1, 11) / want.sum()))


def test_multi_turn_item_shows_the_whole_conversation():
    it = multi_turn_item(["Write a haiku.", "Now make it rhyme."], ["h1", "h1 rhymed"], ["h2", "h2 rhymed"],
                         reference=["r1", "r2"], question_id=81)
    p = build_prompt(it.question, it.answers, it.reference)
    assert "### User turn 1:\nWrite a haiku.\n\n### User turn 2 (judge the replies to this turn):\nNow make it rhyme." in p
    assert "[The Start of Assistant 1's Answer]\n### Assistant turn 1:\nh1\n\n### Assistant turn 2:\nh1 rhymed\n" in p
    assert "[Reference Answer]\n### Assistant turn 1:\nr1\n\n### Assistant turn 2:\nr2" in p
    with pytest.raises(ValueError, match="2 user turns but 1 replies_2"):
        multi_turn_item(["a", "b"], ["x", "y"], ["z"])
    (res,) = bigram_judge().score([it])
    assert res.text == "8 3" and res.verdict == 1


def test_mtbench_items_from_fastchat_files():
    qs = [{"question_id": 81, "turns": ["Q1", "Q2"]}, {"question_id": 82, "turns": ["P1", "P2"]}]
    ans = lambda tag: [{"question_id": q, "choices": [{"turns": [f"{tag}{q}a", f"{tag}{q}b"]}]} for q in (82, 81)]
    items = mtbench_items(qs, ans("A"), ans("B"))
    assert [it.question_id for it in items] == [81, 82]
    assert items[0].answers == ("### Assistant turn 1:\nA81a\n\n### Assistant turn 2:\nA81b",
                                "### Assistant turn 1:\nB81a\n\n### Assistant turn 2:\nB81b")
    assert mtbench_items(qs, ans("A"), ans("B"), turn=1)[1].answers == ("A82a", "B82a")
    with pytest.raises(ValueError, match="no answers_2 for question_id 82"):
        mtbench_items(qs, ans("A"), ans("B")[1:])
