"""Chat about a judgement: ask the judge follow-up questions from its kept KV cache.

    chat = JudgeChat(judge, ("Q?", "answer 1", "answer 2"))   # judges once (score line + reasons)
    print(chat.judgement.text)
    for piece in chat.ask("Why did Assistant 2 lose?"):      # streams text pieces
        print(piece, end="", flush=True)

JudgeLM has no chat template (its prompt is plain text ending in "### Response:"), so a follow-up
turn is appended as plain text in the same "### Header:" style:

    <judgement tokens, including the EOS that ended them>\\n\\n### Question: {question}\\n### Answer:

and the judge continues after "### Answer:" until EOS. Only the new turn's tokens are run through
the model (`Engine.extend`); the judging prompt and the earlier turns stay in the cache. The turn
is tokenized on its own (no BOS), so the history is exactly `history_ids`, the concatenation of
what was fed; re-tokenizing the whole text at once could merge tokens across a boundary and differ.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from jlm.formats.prompts import build_prompt
from jlm.infer.judge import as_item, build_judgement, score_budget

TURN = "\n\n### Question: {question}\n### Answer:"
# A small model often goes on to invent the next turn itself; the answer ends where it starts one.
NEXT_TURN = "\n### Question:"


def _showable(text: str) -> int:
    """How much of `text` can be shown now: a tail that may be the start of NEXT_TURN is held back."""
    for k in range(min(len(NEXT_TURN) - 1, len(text)), 0, -1):
        if NEXT_TURN.startswith(text[-k:]):
            return len(text) - k
    return len(text)


class JudgeChat:
    """One judgement and a conversation about it, on one row of the judge's engine.

    sample: anything `Judge.score` takes (tuple, JudgeLM record, JudgeSample, Item).
    mode: "pair" (default for 2 answers), "single", "multi" or "vqa", as in `Judge.score`.
    context: cache size in tokens for the whole conversation (default: the model's context, at most
        2048, JudgeLM's); a turn that would not fit ends the generation early (`truncated`).
    chunk: tokens decoded per device call while streaming (1 = per token, more = fewer round trips).
    """

    def __init__(self, judge, sample: Any, *, reference: str | None = None, mode: str | None = None,
                 context: int | None = None, chunk: int = 8):
        self.judge, self.tokenizer, self.engine = judge, judge.tokenizer, judge.engine
        self.chunk = chunk
        item = as_item(sample, reference)
        self.mode = mode or ("pair" if len(item.answers) == 2 else "multi")
        prompt = build_prompt(item.question, item.answers, item.reference, mode=self.mode)
        ids = self.tokenizer.encode(prompt)
        limit = judge.cfg.max_position_embeddings
        context = min(limit, 2048) if context is None else min(context, limit)
        length = self.engine.planner.bucket(len(ids))
        if length + score_budget(judge.score_tokens, len(item.answers)) >= context:
            raise ValueError(f"the judging prompt has {len(ids)} tokens; it does not fit a {context}-token chat "
                             "context (pass a larger context=, up to the model's "
                             f"{limit})")
        self.history_ids: list[int] = list(ids)
        self.stats = {"prefills": 1, "prompt_tokens": len(ids), "extended_tokens": 0, "generated_tokens": 0}
        self.batch = self.engine.prefill([ids], [0], reserve=context - length)
        self.truncated = False
        tokens = list(self._stream_tokens(judge.max_new_tokens))
        self.judgement = build_judgement(self.tokenizer.decode(tokens, skip_special_tokens=True), index=0,
                                         item=item, mode=self.mode, finished=not self.truncated, with_reasons=True)

    # -------------------------------------------------------------------------------- decoding
    def _stream_tokens(self, max_new: int) -> Iterator[int]:
        """Greedy tokens of row 0 until EOS or `max_new`, `chunk` per device call; each is added to
        the history (a stopping EOS too: it becomes the pending token the next turn feeds)."""
        eng, batch = self.engine, self.batch
        done, select = 0, np.zeros(len(batch.rows), bool)
        select[0] = True
        while done < max_new:
            step = self.chunk
            if step > batch.room:  # room left is less than one chunk: stop rather than compile a new size
                self.truncated = True
                return
            gen = eng.decode(batch, max_new=step, stop="eos", select=select)[0]
            toks = gen.tokens  # all of them: they are in the cache (max_new rounds up to a chunk)
            self.history_ids.extend(toks)
            self.stats["generated_tokens"] += len(toks)
            done += len(toks)
            yield from toks
            if gen.finished:
                return
        self.truncated = True

    def ask(self, question: str, max_new: int = 256) -> Iterator[str]:
        """Append a follow-up turn and stream the judge's answer as text pieces (greedy). The answer
        ends at EOS, after `max_new` tokens, or where the model starts a "### Question:" turn of its
        own (what it generated up to the end of that chunk stays in the cache and the history)."""
        new = self.tokenizer.encode(TURN.format(question=question), add_bos=False)
        row_tokens = [new] + [[] for _ in range(len(self.batch.rows) - 1)]
        if self.engine.bucket_step * -(-len(new) // self.engine.bucket_step) + self.chunk > self.batch.room:
            raise ValueError(f"the chat context is full ({self.batch.size} slots); start a new JudgeChat "
                             "with a larger context=")
        self.engine.extend(self.batch, row_tokens)
        self.history_ids.extend(new)
        self.stats["extended_tokens"] += len(new)
        self.truncated = False
        tokens: list[int] = []
        shown = ""
        eos = self.tokenizer.eos_id
        for t in self._stream_tokens(max_new):  # leaving the loop early stops decoding
            if t == eos:
                break
            tokens.append(t)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if (cut := text.find(NEXT_TURN)) >= 0:  # the model began a turn of its own: the answer ends
                if cut > len(shown):
                    yield text[len(shown):cut]
                return
            # a multi-byte character split over tokens decodes to U+FFFD until it is complete
            end = _showable(text)
            if end > len(shown) and not text[:end].endswith("\ufffd"):
                yield text[len(shown):end]
                shown = text[:end]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if len(text) > len(shown):
            yield text[len(shown):]

    def answer(self, question: str, max_new: int = 256) -> str:
        """`ask`, collected into one string."""
        return "".join(self.ask(question, max_new))
