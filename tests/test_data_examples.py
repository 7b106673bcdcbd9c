"""Training examples: swap transform, reference support/drop, loss mask, truncation, per-epoch draws."""
import copy
from pathlib import Path

import numpy as np
import pytest

from jlm.data import (
    ByteTokenizer,
    ExampleConfig,
    augment,
    epoch_rng,
    epoch_summary,
    make_example,
    swap_judgement,
    swap_sample,
)
from jlm.formats.prompts import build_prompt
from jlm.formats.records import JudgeSample

TOK = ByteTokenizer()


def sample(**kw):
    base = dict(question_id=7, question="Which is better?", answers=("first answer", "second answer"),
                reference="the reference", judgement="3 8\nAssistant 1 is vague; Assistant 2 is precise.",
                scores=(3.0, 8.0), judgement_w_reference="2 9\n\nAssistant 2 matches the reference, Assistant 1 not.",
                scores_w_reference=(2.0, 9.0), answer_ids=("id1", "id2"), model_ids=("m1", "m2"),
                answer_metadata=({"d": 1}, {"d": 2}))
    base.update(kw)
    return JudgeSample(**base)


def decode_target(ex):
    return TOK.decode([t for t, m in zip(ex["input_ids"], ex["loss_mask"]) if m])


def test_swap_judgement():
    assert swap_judgement("2 8\nAssistant 1 is worse than Assistant 2.") == "8 2\nAssistant 2 is worse than Assistant 1."
    assert swap_judgement("7.5 10\n\nAssistant 1's answer; Assistant 12 untouched") == \
        "10 7.5\n\nAssistant 2's answer; Assistant 12 untouched"
    assert swap_judgement("8,9\nx") == "9 8\nx"
    assert swap_judgement(swap_judgement("1 5\nAssistant 1 vs Assistant 2")) == "1 5\nAssistant 1 vs Assistant 2"
    with pytest.raises(ValueError):
        swap_judgement("8\nno second score")


def test_swap_sample_swaps_everything_and_leaves_source_alone():
    s = sample(label=1)
    before = copy.deepcopy(s)
    t = swap_sample(s)
    assert s == before
    assert t.answers == ("second answer", "first answer")
    assert t.answer_ids == ("id2", "id1") and t.model_ids == ("m2", "m1") and t.answer_metadata == ({"d": 2}, {"d": 1})
    assert t.scores == (8.0, 3.0) and t.scores_w_reference == (9.0, 2.0)
    assert t.judgement == "8 3\nAssistant 2 is vague; Assistant 1 is precise."
    assert t.judgement_w_reference == "9 2\n\nAssistant 1 matches the reference, Assistant 2 not."
    assert t.label == -1
    assert swap_sample(t) == s
    with pytest.raises(ValueError):
        swap_sample(sample(answers=("a", "b", "c")))


@pytest.mark.parametrize("swap,ref", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_augmentation_extremes(swap, ref):
    v = augment(sample(), np.random.default_rng(0), ExampleConfig(swap_prob=swap, ref_prob=ref))
    assert v.swapped == (swap == 1.0) and v.with_reference == (ref == 1.0)
    assert v.reference == ("the reference" if ref else None)
    want = sample()
    if swap:
        want = swap_sample(want)
    assert v.judgement == (want.judgement_w_reference if ref else want.judgement)
    assert v.answers == want.answers


def test_reference_needs_text_and_needs_reference_flag():
    cfg = ExampleConfig(ref_prob=1.0, swap_prob=0.0)
    no_wref = augment(sample(judgement_w_reference=None, scores_w_reference=None), np.random.default_rng(0), cfg)
    assert not no_wref.with_reference and no_wref.reference is None
    no_ref = augment(sample(reference=None), np.random.default_rng(0), cfg)
    assert not no_ref.with_reference
    forced = augment(sample(judgement_w_reference=None, judgement_needs_reference=True), np.random.default_rng(0),
                     ExampleConfig(ref_prob=0.0, swap_prob=0.0))
    assert forced.with_reference and forced.reference == "the reference" and forced.judgement.startswith("3 8")
    with pytest.raises(ValueError, match="no judgement"):
        augment(sample(judgement=None), np.random.default_rng(0), cfg)


def test_example_layout_and_loss_mask():
    s = sample()
    ex = make_example(s, TOK, 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0))
    prompt = build_prompt(s.question, s.answers)
    prompt_ids = TOK.encode(prompt)
    assert ex["input_ids"][0] == TOK.bos_id and ex["input_ids"][-1] == TOK.eos_id
    assert ex["input_ids"][:len(prompt_ids)] == prompt_ids and ex["prompt_len"] == len(prompt_ids)
    assert ex["input_ids"] == TOK.encode(prompt + s.judgement) + [TOK.eos_id]
    assert ex["loss_mask"] == [0] * len(prompt_ids) + [1] * (len(ex["input_ids"]) - len(prompt_ids))
    assert decode_target(ex) == s.judgement  # score line, newline, explanation (EOS is a special token)
    assert ex["loss_mask"][-1] == 1
    assert TOK.decode(ex["input_ids"]).endswith("### Response:3 8\nAssistant 1 is vague; Assistant 2 is precise.")
    no_bos = make_example(s, ByteTokenizer(add_bos=False), 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0))
    assert no_bos["input_ids"] == ex["input_ids"][1:]


def test_score_weight_marks_exactly_the_score_line():
    s = sample()
    plain = make_example(s, TOK, 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0))
    ex = make_example(s, TOK, 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0, score_weight=20.0))
    assert ex["input_ids"] == plain["input_ids"]
    heavy = [t for t, m in zip(ex["input_ids"], ex["loss_mask"]) if m == 20.0]
    assert TOK.decode(heavy) == "3 8\n"  # the verdict and the newline that ends it; the reasons keep weight 1
    assert [m > 0 for m in ex["loss_mask"]] == [m > 0 for m in plain["loss_mask"]]
    assert epoch_summary([s], TOK, ExampleConfig(score_weight=20.0))["target_tokens_mean"] == \
        epoch_summary([s], TOK, ExampleConfig())["target_tokens_mean"]
    swapped = make_example(s, TOK, 0, ExampleConfig(swap_prob=1.0, ref_prob=1.0, score_weight=20.0))
    assert TOK.decode([t for t, m in zip(swapped["input_ids"], swapped["loss_mask"]) if m == 20.0]) == "9 2\n"
    bare = make_example(sample(judgement="4 6"), TOK, 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0, score_weight=3.0))
    assert bare["loss_mask"][-5:] == [0.0, 3.0, 3.0, 3.0, 3.0]  # prompt | "4 6" + EOS, the line's end here
    with pytest.raises(ValueError, match="score_weight"):
        ExampleConfig(score_weight=0.0)


def test_swapped_reference_example_text():
    ex = make_example(sample(), TOK, 0, ExampleConfig(swap_prob=1.0, ref_prob=1.0))
    text = TOK.decode(ex["input_ids"])
    assert "[Reference Answer]\nthe reference\n\n[The Start of Assistant 1's Answer]\nsecond answer" in text
    assert decode_target(ex) == "9 2\n\nAssistant 1 matches the reference, Assistant 2 not."


class AddEosTokenizer(ByteTokenizer):
    add_eos = True

    def encode(self, text, add_bos=None):
        return super().encode(text, add_bos) + [self.eos_id]


def test_tokenizer_that_appends_eos_gets_one_eos():
    ex = make_example(sample(), AddEosTokenizer(), 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0))
    plain = make_example(sample(), TOK, 0, ExampleConfig(swap_prob=0.0, ref_prob=0.0))
    assert ex["input_ids"] == plain["input_ids"] and ex["loss_mask"] == plain["loss_mask"]


class MergingTokenizer(ByteTokenizer):
    """Merges ':' with a following digit into one token: the prompt is then no prefix of the example."""

    def encode(self, text, add_bos=None):
        ids = super().encode(text, add_bos)
        out, i = [], 0
        while i < len(ids):
            if ids[i] == ord(":") + 3 and i + 1 < len(ids) and chr(ids[i + 1] - 3).isdigit():
                out.append(1000 + ids[i + 1])
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out


def test_prefix_violation_is_an_error():
    with pytest.raises(ValueError, match="prefix"):
        make_example(sample(), MergingTokenizer(), 0)


def test_truncation_cuts_answers_never_score_line():
    long = sample(answers=("A" * 3000, "B" * 500))
    cfg = ExampleConfig(max_len=2500, swap_prob=0.0, ref_prob=0.0)
    ex = make_example(long, TOK, 0, cfg)
    assert 2500 - 8 <= len(ex["input_ids"]) <= 2500  # cut only about as far as needed (slack 8 tokens)
    assert ex["truncated"] == ("answers",)
    assert decode_target(ex) == long.judgement
    text = TOK.decode(ex["input_ids"])
    assert "B" * 500 + "\n\n[The End of Assistant 2" in text  # the shorter answer is untouched
    n_a = text.count("A")
    assert 0 < n_a < 3000


def test_truncation_falls_back_to_reference_question_explanation():
    s = sample(answers=("a" * 50, "b" * 50), reference="r" * 400, question="q" * 400,
               judgement_w_reference="2 9\n" + "e" * 800)
    cfg = ExampleConfig(max_len=1200, swap_prob=0.0, ref_prob=1.0, truncation_floor=0)
    ex = make_example(s, TOK, 0, cfg)
    assert ex["truncated"] == ("answers", "reference", "question", "explanation")
    assert len(ex["input_ids"]) <= 1200
    assert decode_target(ex).startswith("2 9\n") and ex["input_ids"][-1] == TOK.eos_id
    with pytest.raises(ValueError, match="exceed max_len"):
        make_example(s, TOK, 0, ExampleConfig(max_len=100, swap_prob=0.0, ref_prob=1.0))


def test_truncation_floor_keeps_answers_while_reference_can_give():
    s = sample(answers=("a" * 3000, "b" * 3000), reference="r" * 3000)
    cfg = ExampleConfig(max_len=3000, swap_prob=0.0, ref_prob=1.0, truncation_floor=512)
    ex = make_example(s, TOK, 0, cfg)
    text = TOK.decode(ex["input_ids"])
    assert ex["truncated"] == ("answers", "reference")
    assert text.count("a") - SKELETON_A == 512 and "\n" + "b" * 512 + "\n" in text
    assert 0 < text.count("r" * 100) and "r" * 3000 not in text
    assert 3000 - 8 <= len(ex["input_ids"]) <= 3000
    # without a floor the answers are emptied before the reference is touched
    bare = make_example(s, TOK, 0, ExampleConfig(max_len=3000, swap_prob=0.0, ref_prob=1.0, truncation_floor=0))
    assert bare["truncated"] == ("answers", "reference")
    assert "[The Start of Assistant 1's Answer]\n\n\n[The End of Assistant 1's Answer]" in TOK.decode(bare["input_ids"])


SKELETON_A = TOK.decode(make_example(sample(answers=("", ""), reference="", question=""), TOK, 0,
                                     ExampleConfig(swap_prob=0.0, ref_prob=1.0))["input_ids"]).count("a")


def test_draws_depend_only_on_seed_epoch_index():
    s = sample()
    cfg = ExampleConfig()
    draws = [(make_example(s, TOK, epoch_rng(0, e, 3), cfg)["swapped"],
              make_example(s, TOK, epoch_rng(0, e, 3), cfg)["with_reference"]) for e in range(40)]
    again = [(make_example(s, TOK, epoch_rng(0, e, 3), cfg)["swapped"],
              make_example(s, TOK, epoch_rng(0, e, 3), cfg)["with_reference"]) for e in range(40)]
    assert draws == again
    assert len(set(draws)) == 4  # all four combinations occur across epochs
    assert epoch_rng(0, 1, 3).random() != epoch_rng(0, 1, 4).random() != epoch_rng(1, 1, 3).random()


def test_no_drift_across_epochs():
    """JudgeLM's in-place mutation makes swaps toggle and the with-reference text stick; ours must not."""
    s = sample(reference=None, judgement_w_reference=None, scores_w_reference=None)
    cfg = ExampleConfig(ref_prob=0.5, swap_prob=0.5)
    for e in range(20):
        ex = make_example(s, TOK, epoch_rng(5, e, 0), cfg)
        want = s.judgement if not ex["swapped"] else swap_judgement(s.judgement)
        assert decode_target(ex) == want
    assert s == sample(reference=None, judgement_w_reference=None, scores_w_reference=None)


def test_probabilities_are_respected():
    s = sample()
    cfg = ExampleConfig(swap_prob=0.3, ref_prob=0.7)
    n = 2000
    views = [augment(s, epoch_rng(0, 0, i), cfg) for i in range(n)]
    assert abs(np.mean([v.swapped for v in views]) - 0.3) < 0.04
    assert abs(np.mean([v.with_reference for v in views]) - 0.7) < 0.04


def test_epoch_summary_counts():
    ss = [sample(question_id=i, answers=("x" * (i * 300), "y")) for i in range(6)]
    summ = epoch_summary(ss, TOK, ExampleConfig(max_len=2000, swap_prob=1.0, ref_prob=0.0))
    assert summ["examples"] == 6 and summ["swapped"] == 6 and summ["with_reference"] == 0
    long = sum(len(make_example(s, TOK, 0, ExampleConfig(max_len=10**6, swap_prob=1.0, ref_prob=0.0))["input_ids"])
               > 2000 for s in ss)
    assert summ["truncated"] == summ["truncated_answers"] == long > 0
    assert summ["tokens_max"] <= 2000


def test_config_validation():
    with pytest.raises(ValueError):
        ExampleConfig(swap_prob=1.5)
    with pytest.raises(ValueError):
        ExampleConfig(max_len=4)


TINY_SP = Path(__file__).resolve().parent / "fixtures" / "tiny_sp"


@pytest.mark.skipif(not (TINY_SP / "tokenizer.model").exists(), reason="SentencePiece fixture not present")
def test_prompt_is_prefix_with_llama_style_sentencepiece():
    from jlm.tokenizer import load_tokenizer

    sp = load_tokenizer(TINY_SP)
    for i in range(8):
        s = sample(question_id=i, judgement=f"{i} {9 - i}\nAssistant 1 vs Assistant 2: 7.5 points.")
        ex = make_example(s, sp, epoch_rng(0, 0, i), ExampleConfig(max_len=2048))
        view = augment(s, epoch_rng(0, 0, i), ExampleConfig(max_len=2048))
        assert ex["input_ids"][0] == sp.bos_id and ex["input_ids"][-1] == sp.eos_id
        assert ex["input_ids"][:ex["prompt_len"]] == sp.encode(view.prompt())
        assert ex["input_ids"] == sp.encode(view.prompt() + view.judgement) + [sp.eos_id]
