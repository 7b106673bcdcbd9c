"""The tokenizer interface the data pipeline needs, and a byte-level stand-in for tests and smoke runs.

The real tokenizers (LLaMA SentencePiece, HF tokenizers, GGUF vocabularies) live in `jlm.tokenizer`;
anything with this shape works here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class TokenizerLike(Protocol):
    """`encode` adds BOS when `add_bos` says so (None: the tokenizer's own default, `self.add_bos`); never EOS."""

    bos_id: int
    eos_id: int
    pad_id: int
    add_bos: bool

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: pad 0, BOS 1, EOS 2, byte b -> b + 3 (vocabulary 259).

    Token boundaries never depend on context, so the prompt is always a prefix of prompt + target.
    """

    pad_id, bos_id, eos_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def __init__(self, add_bos: bool = True):
        self.add_bos = add_bos

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        if self.add_bos if add_bos is None else add_bos:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the byte tokens; special tokens are skipped, broken UTF-8 is replaced."""
        return bytes(int(i) - self.offset for i in ids if int(i) >= self.offset).decode("utf-8", errors="replace")
