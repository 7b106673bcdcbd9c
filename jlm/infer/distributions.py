"""Score distributions read off the model, without generating text.

For a pair, the judge's first line is "a b\\n" with a, b in 1..10. We score all 100 such lines at
once: their token sequences (from the tokenizer, in context, never hard-coded ids: LLaMA's
SentencePiece and SmolLM2's BPE both split "10" into "1" "0" and " 3" into " " "3", another
tokenizer may not) form a tree of ~120 tokens, which one model call evaluates over the kept
prompt cache with tree attention (engine.CandidateTree). Each line's probability is exact:

    P("a b" then a line end) = prod P(token | prefix) * P(next token starts with "\\n" or is EOS)

so "1 1" and "10 1" are told apart, and "8 3 because..." (no line end) is not counted as "8 3".
What the 100 lines leave over is `residual`: the chance the model writes something else first
("7.5 8", "Assistant 1: 8", ...), which JudgeLM's parser would call a failure (a tie).
Single-answer grading ("### Response:10" forced) scores the 10 lines " b\\n" the same way.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jlm.formats.prompts import APPENDIX, APPENDIX_SINGLE
from jlm.infer.engine import CandidateTree, token_table

SCORES = tuple(range(1, 11))  # JudgeLM's scale


class TokenizationError(ValueError):
    """Candidate text whose tokens do not extend the prompt's tokens (a merge across the boundary)."""


def candidate_tokens(tokenizer, context: str, text: str) -> list[int]:
    """Tokens that `text` adds after `context`, as the tokenizer splits `context + text`."""
    ctx = tokenizer.encode(context, add_bos=False)
    full = tokenizer.encode(context + text, add_bos=False)
    if full[: len(ctx)] != ctx:
        raise TokenizationError(f"tokenizing {context!r} + {text!r} changes the context's tokens "
                                f"({ctx} -> {full[:len(ctx)]}); candidate scoring needs a clean boundary")
    return full[len(ctx):]


def line_end_set(tokenizer, vocab_size: int, eos_ids: Sequence[int | None] = ()) -> np.ndarray:
    """Tokens that may end a score line: any token whose text starts with "\\n", and EOS."""
    return token_table(tokenizer, vocab_size, lambda text: text.startswith("\n"), eos_ids)


def build_tree(sequences: Sequence[Sequence[int]], final_set: np.ndarray) -> CandidateTree:
    """A trie over candidate token sequences (each ending where `final_set` must follow)."""
    children: list[dict[int, int]] = [{}]
    tokens, parent = [0], [-1]
    edges, finals = [], []
    for seq in sequences:
        if not seq:
            raise ValueError("empty candidate sequence")
        node, path = 0, []
        for tok in seq:
            path.append((node, int(tok)))
            nxt = children[node].get(int(tok))
            if nxt is None:
                nxt = len(tokens)
                children[node][int(tok)] = nxt
                children.append({})
                tokens.append(int(tok))
                parent.append(node)
            node = nxt
        edges.append(path)
        finals.append(node)
    width = max(len(p) for p in edges)
    edge_node = np.zeros((len(edges), width), np.int32)
    edge_tok = np.zeros((len(edges), width), np.int32)
    edge_valid = np.zeros((len(edges), width), bool)
    for c, path in enumerate(edges):
        for e, (n, t) in enumerate(path):
            edge_node[c, e], edge_tok[c, e], edge_valid[c, e] = n, t, True
    return CandidateTree(tokens=np.asarray(tokens, np.int32), parent=np.asarray(parent, np.int32),
                         edge_node=edge_node, edge_tok=edge_tok, edge_valid=edge_valid,
                         final_node=np.asarray(finals, np.int32), final_set=np.asarray(final_set, bool))


@dataclasses.dataclass(frozen=True)
class ScoreTree:
    """The candidate score lines of one prompt mode and their tree."""
    labels: tuple[tuple[int, ...], ...]  # per candidate: the scores it writes
    tree: CandidateTree

    @property
    def n_scores(self) -> int:
        return len(self.labels[0])


def score_tree(tokenizer, vocab_size: int, mode: str, eos_ids: Sequence[int | None] = ()) -> ScoreTree:
    """Candidates for `mode` "pair" ("a b" after "### Response:") or "single" (" b" after the
    forced "### Response:10")."""
    if mode == "pair":
        context, labels = APPENDIX, [(a, b) for a in SCORES for b in SCORES]
        texts = [f"{a} {b}" for a, b in labels]
    elif mode == "single":
        context, labels = APPENDIX_SINGLE, [(b,) for b in SCORES]
        texts = [f" {b}" for (b,) in labels]
    else:
        raise ValueError(f"score distributions exist for modes 'pair' and 'single', not {mode!r}")
    seqs = [candidate_tokens(tokenizer, context, t) for t in texts]
    return ScoreTree(tuple(labels), build_tree(seqs, line_end_set(tokenizer, vocab_size, eos_ids)))


@dataclasses.dataclass(frozen=True)
class ScoreDistribution:
    """P(scores) over JudgeLM's 1..10 scale, normalised over the candidate score lines.

    joint: [10] * n array (n = 1 for single-answer grading, 2 for pairs); joint[a-1, b-1] is
        P(answer 1 gets a, answer 2 gets b).
    marginals: [n, 10]: P(answer i gets k).
    expected: E[score] per answer.
    p_win: (P(answer 1 wins), P(tie), P(answer 2 wins)) for pairs, else None.
    residual: probability the model's first line is none of the candidates (before normalising).
    """
    joint: np.ndarray
    residual: float

    @classmethod
    def from_logprobs(cls, logprobs: np.ndarray, labels: Sequence[tuple[int, ...]]) -> "ScoreDistribution":
        n = len(labels[0])
        logprobs = np.asarray(logprobs, np.float64)
        top = logprobs.max()
        mass = np.exp(top) * np.exp(logprobs - top).sum()
        p = np.exp(logprobs - top)
        p /= p.sum()
        joint = np.zeros((len(SCORES),) * n)
        for prob, lab in zip(p, labels):
            joint[tuple(k - 1 for k in lab)] += prob
        return cls(joint=joint, residual=float(max(0.0, 1.0 - mass)))

    @property
    def n(self) -> int:
        return self.joint.ndim

    @property
    def marginals(self) -> np.ndarray:
        axes = range(self.n)
        return np.stack([self.joint.sum(axis=tuple(a for a in axes if a != i)) for i in axes])

    @property
    def expected(self) -> tuple[float, ...]:
        return tuple(float(m @ np.asarray(SCORES, float)) for m in self.marginals)

    @property
    def mode(self) -> tuple[int, ...]:
        """The most probable score line."""
        return tuple(int(i) + 1 for i in np.unravel_index(int(np.argmax(self.joint)), self.joint.shape))

    @property
    def p_win(self) -> tuple[float, float, float] | None:
        if self.n != 2:
            return None
        diff = np.subtract.outer(np.asarray(SCORES), np.asarray(SCORES))  # a - b
        j = self.joint
        return float(j[diff > 0].sum()), float(j[diff == 0].sum()), float(j[diff < 0].sum())

    def swapped(self) -> "ScoreDistribution":
        """The same judgement with the answers' roles exchanged."""
        return ScoreDistribution(joint=self.joint.T.copy(), residual=self.residual)

    @staticmethod
    def average(a: "ScoreDistribution", b: "ScoreDistribution") -> "ScoreDistribution":
        return ScoreDistribution(joint=(a.joint + b.joint) / 2, residual=(a.residual + b.residual) / 2)

    def to_json(self) -> dict:
        out = {"scores": list(SCORES), "marginals": np.round(self.marginals, 6).tolist(),
               "expected": [round(x, 4) for x in self.expected], "mode": list(self.mode),
               "residual": round(self.residual, 6)}
        if self.n == 2:
            out["p_win"] = [round(x, 6) for x in self.p_win]
        return out
