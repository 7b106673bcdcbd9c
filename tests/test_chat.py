"""`JudgeChat` / `jlm chat`: follow-up questions continue the judgement's kept KV cache.

A tiny random Llama with the byte-level stand-in tokenizer (as in test_engine.py): its text is
noise, but greedy decoding is deterministic, so a continued chat can be compared token for token
with a from-scratch generation over the same history, and the prompt's re-runs can be counted.
"""
import io
import json

import jax
import pytest
from flax import nnx

from jlm.infer.chat import TURN, JudgeChat
from jlm.infer.cli import chat_main
from jlm.infer.engine import Engine, default_mesh
from jlm.infer.judge import Judge
from jlm.model.config import LlamaConfig
from jlm.model.llama import Llama
from test_engine import ByteTok

TOK = ByteTok()
CFG = LlamaConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=2048, eos_token_id=TOK.eos_id)
SAMPLE = ("What is 2+2?", "4", "It is 5.")


@pytest.fixture(scope="module")
def judge():
    model = Llama(CFG, rngs=nnx.Rngs(3))
    return Judge(model, TOK, mesh=default_mesh(devices=jax.devices()[:1]), batch_size=1, bucket_step=16,
                 score_tokens=4, max_new_tokens=16)


def test_follow_up_does_not_rerun_the_prompt_and_equals_a_fresh_generation(judge, monkeypatch):
    prefills, extended = [], []
    real_prefill, real_extend = judge.engine.prefill, judge.engine.extend
    monkeypatch.setattr(judge.engine, "prefill", lambda p, rows, **k: prefills.append(len(p[rows[0]]))
                        or real_prefill(p, rows, **k))
    monkeypatch.setattr(judge.engine, "extend", lambda b, t: extended.append(len(t[0])) or real_extend(b, t))

    chat = JudgeChat(judge, SAMPLE, chunk=4)
    assert chat.judgement.mode == "pair" and len(chat.history_ids) > chat.stats["prompt_tokens"]
    answers = []
    for q in ("Why did Assistant 2 lose?", "And Assistant 1?"):
        before = list(chat.history_ids)
        new = TOK.encode(TURN.format(question=q), add_bos=False)
        pieces = list(chat.ask(q, max_new=12))
        generated = chat.history_ids[len(before) + len(new):]
        assert chat.history_ids[: len(before) + len(new)] == before + new
        assert 12 <= len(generated) <= 12 + 3  # max_new rounds up to the 4-token chunk
        assert "".join(pieces) == TOK.decode([t for t in generated if t != TOK.eos_id])
        # the same history from scratch: one prefill of everything, then greedy decoding
        fresh = Engine(judge.model, TOK, mesh=judge.engine.mesh, batch_size=1, bucket_step=64)
        (gen,) = fresh.generate([before + new], max_new=len(generated), stop="eos")
        assert gen.tokens == generated
        answers.append(pieces)
    assert prefills == [chat.stats["prompt_tokens"]]  # the judging prompt ran once, for both questions
    assert extended == [len(TOK.encode(TURN.format(question=q), add_bos=False))
                        for q in ("Why did Assistant 2 lose?", "And Assistant 1?")]
    assert chat.stats["extended_tokens"] == sum(extended)


def test_context_too_small_is_an_error(judge):
    with pytest.raises(ValueError, match="does not fit"):
        JudgeChat(judge, SAMPLE, context=64)


def test_cli_chat_judges_then_streams_answers(judge, tmp_path):
    inp = tmp_path / "pairs.jsonl"
    recs = [{"question_id": 7, "question_body": "Q?", "answer1_body": "a", "answer2_body": "b"},
            {"question_id": 8, "question_body": SAMPLE[0], "answer1_body": SAMPLE[1], "answer2_body": SAMPLE[2]}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = io.StringIO()
    assert chat_main(["--input", str(inp), "--index", "1", "--max-new-tokens", "8"], judge=judge,
                     stdin=io.StringIO("Why did Assistant 2 lose?\n\nignored\n"), stdout=out) == 0
    want = JudgeChat(judge, SAMPLE)
    text = out.getvalue()
    assert text.startswith("8: What is 2+2?") and want.judgement.text in text
    assert "> Why did Assistant 2 lose?\n" + want.answer("Why did Assistant 2 lose?", max_new=8) in text
    assert "ignored" not in text  # the empty line ended the chat
    with pytest.raises(ValueError, match="pairs.jsonl.*--index 5"):
        chat_main(["--input", str(inp), "--index", "5"], judge=judge, stdin=io.StringIO(""), stdout=io.StringIO())


@pytest.mark.smollm2
def test_smollm2_follow_up_equals_fresh_generation(smollm2_model, smollm2_gguf):
    """The same check on the real model and its BPE tokenizer (the turn is tokenized on its own)."""
    from jlm.tokenizer import load_tokenizer

    model, _ = smollm2_model
    tok = load_tokenizer(smollm2_gguf)
    judge = Judge(model, tok, mesh=default_mesh(devices=jax.devices()[:1]), batch_size=1, score_tokens=6,
                  max_new_tokens=8)
    chat = JudgeChat(judge, ("What is the capital of France?", "Paris.", "Lyon, I believe."), context=512)
    before = list(chat.history_ids)
    text = chat.answer("Why did Assistant 2 lose?", max_new=8)
    new = tok.encode(TURN.format(question="Why did Assistant 2 lose?"), add_bos=False)
    generated = chat.history_ids[len(before) + len(new):]
    (gen,) = Engine(model, tok, mesh=judge.engine.mesh, batch_size=1).generate([before + new],
                                                                               max_new=len(generated), stop="eos")
    assert gen.tokens == generated and text == tok.decode([t for t in generated if t != tok.eos_id])


def test_answer_ends_where_the_model_starts_a_turn_of_its_own(judge, monkeypatch):
    chat = JudgeChat(judge, SAMPLE, chunk=4)
    scripted = "Its answer was wrong.\n### Question: What next?\n### Answer: more"
    monkeypatch.setattr(chat, "_stream_tokens", lambda max_new: iter(TOK.encode(scripted, add_bos=False)))
    pieces = list(chat.ask("Why did Assistant 2 lose?"))
    assert "".join(pieces) == "Its answer was wrong."
    assert all("#" not in p for p in pieces)  # the marker's start is held back, never shown
    plain = "Because 2+2 is 4. #1 reason."  # a '#' that starts no turn is shown
    monkeypatch.setattr(chat, "_stream_tokens", lambda max_new: iter(TOK.encode(plain, add_bos=False)))
    assert chat.answer("Why?") == plain
