"""Tokenizers for the checkpoints jlm reads, with the ids transformers gives.

Sources (`load_tokenizer`):
- an HF directory with `tokenizer.model` (LLaMA / Vicuna / JudgeLM SentencePiece). Reproduces the slow
  `LlamaTokenizer` of transformers 4.28 (what JudgeLM ran; `legacy` behaviour: every text segment
  between special tokens gets SentencePiece's dummy-prefix space). A `legacy` key in
  tokenizer_config.json is ignored: JudgeLM's transformers predates it.
- an HF directory with `tokenizer.json` (the `tokenizers` library), honouring tokenizer_config.json's
  `add_bos_token` / `add_eos_token` and special tokens.
- a `.gguf` file: `tokenizer.ggml.model` "gpt2" (byte-level BPE from the stored vocab and merges, with
  the pre-tokenizer named by `tokenizer.ggml.pre`, as transformers' GGUF converter builds it) or
  "llama" (a SentencePiece model rebuilt from the stored pieces, scores and types).

Special tokens written in the text: like transformers' default `tokenizer(text)`, `encode` maps a
literal special token ("</s>", "<|im_end|>", ...) to its id rather than spelling it out. So
`encode(prompt + "</s>")` ends with the EOS id, which is how JudgeLM builds its training targets.
Text coming from users should not be trusted to be free of such strings.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from jlm.checkpoint.errors import CheckpointError
from jlm.checkpoint.gguf import field, open_reader
from jlm.checkpoint.paths import base_checkpoint

# Files that make up an HF tokenizer (copied as they are on export).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


class TokenizerError(ValueError):
    """A tokenizer that cannot be built; the message names the file."""


class Tokenizer:
    """What jlm needs of a tokenizer. Subclasses implement `_encode`, `decode` and the vocab lookups."""

    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    vocab_size: int = 0
    add_bos: bool = False
    add_eos: bool = False
    special_ids: frozenset[int] = frozenset()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`. `add_bos=None` does what the checkpoint says (LLaMA: yes; SmolLM2: no)."""
        ids = self._encode(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
                f"pad_id={self.pad_id}, add_bos={self.add_bos})")


# --------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TokenizerError(f"{path}: invalid JSON: {e}") from None


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _hf_config(directory: Path) -> dict[str, Any]:
    """tokenizer_config.json with special_tokens_map.json filling in what it lacks (as transformers merges them)."""
    config = _read_json(directory / "tokenizer_config.json")
    for key, value in _read_json(directory / "special_tokens_map.json").items():
        if config.get(key) is None:
            config[key] = value
    return config


_CLEANUPS = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (applied on decode when the config asks for it)."""
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------------------- SentencePiece
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model with transformers 4.28 slow `LlamaTokenizer` semantics."""

    def __init__(self, model: str | os.PathLike | bytes, config: dict[str, Any] | None = None,
                 special_tokens_map: dict[str, Any] | None = None, added_tokens: dict[str, int] | None = None,
                 source: str = ""):
        import sentencepiece as spm

        config = config or {}
        self.source = source or str(model)
        self.sp = spm.SentencePieceProcessor()
        try:
            if isinstance(model, bytes):
                self.sp.LoadFromSerializedProto(model)
            else:
                self.sp.Load(str(model))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.source}: cannot load SentencePiece model: {e}") from None
        self._added = dict(added_tokens or {})  # added_tokens.json: text -> id beyond the sp vocab
        self._added_by_id = {i: t for t, i in self._added.items()}
        self.vocab_size = self.sp.get_piece_size() + len(self._added)

        def piece(id_: int) -> str | None:
            return self.sp.id_to_piece(id_) if id_ >= 0 else None

        # Special tokens as transformers 4.28 sets them up: LlamaTokenizer's defaults (<s>, </s>, <unk>, no
        # pad), then tokenizer_config.json (strings are wrapped in AddedToken(lstrip=False, rstrip=False)),
        # then special_tokens_map.json, which wins and whose plain strings stay plain. In `tokenize`, a
        # special token with no AddedToken behind it eats the whitespace on both sides; one with an
        # AddedToken strips only as its lstrip/rstrip say.
        special_map = special_tokens_map or {}
        names: dict[str, str | None] = {}
        strip: dict[str, tuple[bool, bool] | None] = {}  # content -> AddedToken flags (None: plain string)
        for key, default in (("bos_token", piece(self.sp.bos_id()) or "<s>"),
                             ("eos_token", piece(self.sp.eos_id()) or "</s>"),
                             ("unk_token", piece(self.sp.unk_id()) or "<unk>"), ("pad_token", None)):
            from_map = special_map.get(key)
            value = from_map if from_map else config.get(key, default)
            content = names[key] = _token_content(value)
            if content is None:
                continue
            if isinstance(value, dict):
                flags: tuple[bool, bool] | None = (bool(value.get("lstrip")), bool(value.get("rstrip")))
            else:
                flags = None if from_map else (False, False)
            if flags is not None:
                strip[content] = flags  # the last AddedToken for a text wins, as in 4.28's dict of them
            else:
                strip.setdefault(content, None)
        self._special_strip = {t: f if f is not None else (True, True) for t, f in strip.items()}
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (
            None if names[k] is None else self.token_to_id(names[k])
            for k in ("bos_token", "eos_token", "unk_token", "pad_token"))
        self._specials = {t for t in self._special_strip}  # all_special_tokens
        self.special_ids = frozenset(i for t in self._specials if (i := self.token_to_id(t)) is not None)
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        # 4.28 splits the text on special and added tokens before SentencePiece sees it (its "trie").
        no_split = sorted(self._specials | set(self._added), key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, no_split)) + ")") if no_split else None

    def _encode(self, text: str) -> list[int]:
        if self._split is None:
            return list(self.sp.encode(text))
        parts = self._split.split(text)  # odd positions are the special/added tokens
        for i in range(1, len(parts), 2):
            # An added (non-special) token is a plain string to 4.28, so it strips both sides too.
            lstrip, rstrip = self._special_strip.get(parts[i], (True, True))
            if rstrip and i + 1 < len(parts):
                parts[i + 1] = parts[i + 1].lstrip()
            if lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.token_to_id(part))  # type: ignore[arg-type]
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        # 4.28 `_decode`: added tokens stand apart, joined with spaces; the rest goes through
        # `LlamaTokenizer.convert_tokens_to_string`.
        texts, run = [], []
        for i in ids:
            if i in self._added_by_id:
                if run:
                    texts.append(self._tokens_to_string(run))
                    run = []
                texts.append(self._added_by_id[i])
            else:
                run.append(self.sp.id_to_piece(i))
        if run:
            texts.append(self._tokens_to_string(run))
        text = " ".join(texts)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def _tokens_to_string(self, tokens: list[str]) -> str:
        # transformers 4.28 LlamaTokenizer.convert_tokens_to_string, verbatim in behaviour: special
        # tokens are not passed to SentencePiece and get a space before them.
        out, run, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in self._specials:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp.decode_pieces(run) + token
                prev_special, run = True, []
            else:
                run.append(token)
                prev_special = False
        return out + self.sp.decode_pieces(run)

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def id_to_token(self, token_id: int) -> str:
        if token_id in self._added_by_id:
            return self._added_by_id[token_id]
        if not 0 <= token_id < self.sp.get_piece_size():
            raise IndexError(f"token id {token_id} out of range (vocab {self.vocab_size})")
        return self.sp.id_to_piece(token_id)


# -------------------------------------------------------------------------------- tokenizers (HF)
class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (tokenizer.json or built from GGUF metadata)."""

    def __init__(self, tok, config: dict[str, Any] | None = None, source: str = ""):
        config = config or {}
        self.tok = tok
        self.source = source
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        added = tok.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)

        def lookup(key: str) -> int | None:
            content = _token_content(config.get(key))
            return None if content is None else tok.token_to_id(content)

        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            lookup(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
        # Without an explicit flag, do what the tokenizer.json post-processor does (as transformers does).
        empty = tok.encode("", add_special_tokens=True).ids
        self.add_bos = bool(config.get("add_bos_token", self.bos_id is not None and empty[:1] == [self.bos_id]))
        self.add_eos = bool(config.get("add_eos_token", self.eos_id is not None and empty[-1:] == [self.eos_id]))
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))

    def _encode(self, text: str) -> list[int]:
        # BOS/EOS are ours to add (see `encode`); the post-processor would add them a second time.
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        text = self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        token = self.tok.id_to_token(token_id)
        if token is None:
            raise IndexError(f"token id {token_id} out of range (vocab {self.vocab_size})")
        return token


# --------------------------------------------------------------------------------------- GGUF
_GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_BYTE = 3, 4, 6  # tokenizer.ggml.token_type values


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _byte_level_pre_tokenizer(pre: str, source: str):
    """The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name, as llama.cpp and transformers split text."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
    if pre in ("default", "gpt2"):
        return byte_level
    if pre == "smollm":
        # llama.cpp's smollm split = each digit alone, then GPT-2's regex; this is also the pre-tokenizer of
        # SmolLM2's own tokenizer.json. (transformers' GGUF converter uses GPT-2's regex alone, which gives
        # the same ids: the vocabulary has no token containing a digit next to anything else.)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise TokenizerError(f"{source}: GGUF pre-tokenizer {pre!r} is not supported (supported: default, gpt2, smollm)")


def _gguf_fields(path: Path) -> dict[str, Any]:
    reader = open_reader(path)
    meta = {k: field(reader, k) for k in reader.fields if k.startswith("tokenizer.")}
    context = field(reader, f"{field(reader, 'general.architecture')}.context_length")
    if context is not None:
        meta["context_length"] = int(context)
    return meta


def _gguf_special_config(meta: dict[str, Any], tokens: Sequence[str], add_bos_default: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = tokens[int(token_id)] if token_id is not None and 0 <= int(token_id) < len(tokens) else None
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    if "context_length" in meta:
        config["model_max_length"] = meta["context_length"]
    return config


def _gguf_vocab(meta: dict[str, Any], source: str) -> tuple[list[str], list[int], list[float]]:
    """Tokens, token types and scores, checked to be the same length."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    if not len(tokens) == len(types) == len(scores):
        raise TokenizerError(f"{source}: GGUF vocabulary is inconsistent: {len(tokens)} tokens, "
                             f"{len(types)} token types, {len(scores)} scores")
    return tokens, [int(t) for t in types], scores


def _gguf_byte_level(meta: dict[str, Any], source: str) -> tuple[Any, dict[str, Any]]:
    """A byte-level BPE `tokenizers.Tokenizer` from GGUF metadata, as transformers' GGUF converter builds it."""
    from tokenizers import AddedToken, decoders, models, processors
    from tokenizers import Tokenizer as TkTokenizer

    tokens, types, _ = _gguf_vocab(meta, source)
    if "tokenizer.ggml.merges" not in meta:
        raise TokenizerError(f"{source}: GGUF byte-level BPE tokenizer without tokenizer.ggml.merges")
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # llama.cpp sometimes stores a token in plain UTF-8 instead of the byte alphabet; respell it.
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = TkTokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                 end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"), source)
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_end|>, ...) are special: matched whole in the text, dropped by
    # skip_special_tokens. One outside the byte alphabet is a llama.cpp mislabel; transformers skips it too.
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(tokens, types, strict=True) if ty == _GGUF_CONTROL and set(t) <= alphabet])
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types, strict=True) if ty == _GGUF_USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens(user)
    config = _gguf_special_config(meta, tokens, add_bos_default=False)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # The post-processor matters only to other readers of an exported tokenizer.json (jlm adds BOS itself).
    bos = config["bos_token"] if config["add_bos_token"] else None
    eos = config["eos_token"] if config["add_eos_token"] else None
    if bos or eos:
        template = ([bos] if bos else []) + ["$A"] + ([eos] if eos else [])
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in dict.fromkeys([bos, eos]) if t])
    return tok, config


def _gguf_sentencepiece_proto(meta: dict[str, Any], source: str) -> bytes:
    """A SentencePiece model rebuilt from a GGUF `llama` vocabulary (pieces, scores, types): what
    llama.cpp's converter read out of tokenizer.model, so encoding matches the original model."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:  # needs protobuf
        raise TokenizerError(f"{source}: rebuilding a SentencePiece model needs protobuf ({e})") from None
    tokens, types, scores = _gguf_vocab(meta, source)
    m = pb.ModelProto()
    for t, s, ty in zip(tokens, scores, types, strict=True):
        p = m.pieces.add()
        p.piece, p.score = t, float(s)
        p.type = int(ty) if 1 <= int(ty) <= 6 else 1  # GGUF token types use SentencePiece's numbering
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE  # LLaMA's; llama.cpp tokenizes SPM vocabularies by score-ordered merges
    ts.vocab_size = len(tokens)
    ts.byte_fallback = _GGUF_BYTE in types
    ts.pad_id = -1  # jlm and transformers take the pad token from the config, not the model
    for name, key in (("unk", "unknown_token_id"), ("bos", "bos_token_id"), ("eos", "eos_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None:  # SentencePiece finds its special tokens by piece, so set both
            setattr(ts, f"{name}_id", int(value))
            setattr(ts, f"{name}_piece", tokens[int(value)])
        elif name != "unk":  # there is always an unknown piece; bos/eos may be absent
            setattr(ts, f"{name}_id", -1)
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m.SerializeToString()


def _load_gguf(path: Path) -> Tokenizer:
    meta = _gguf_fields(path)
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise TokenizerError(f"{path}: GGUF file has no tokenizer (no tokenizer.ggml.tokens)")
    if kind == "gpt2":
        tok, config = _gguf_byte_level(meta, str(path))
        return HFTokenizer(tok, config, source=str(path))
    if kind == "llama":
        config = _gguf_special_config(meta, meta["tokenizer.ggml.tokens"], add_bos_default=True)
        return SentencePieceTokenizer(_gguf_sentencepiece_proto(meta, str(path)), config, source=str(path))
    raise TokenizerError(f"{path}: GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)")


# ------------------------------------------------------------------------------------ entry points
def _tokenizer_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a checkpoint: an HF directory (or a file in one), a `.gguf` file, the name
    `smollm2`, or a PEFT adapter directory, whose base model's tokenizer it is (the same names
    `load_model` takes)."""
    try:
        p, _ = base_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as e:
        raise TokenizerError(str(e)) from None
    if p.suffix == ".gguf":
        return _load_gguf(p)
    if p.is_file() and p.name == "tokenizer.json":
        return _load_tokenizer_json(p)
    if p.is_file() and p.suffix == ".model":
        return _load_sentencepiece(p)
    d = _tokenizer_dir(p)
    # JudgeLM ran the slow SentencePiece tokenizer, so tokenizer.model wins when both are present.
    if (d / "tokenizer.model").is_file():
        return _load_sentencepiece(d / "tokenizer.model")
    if (d / "tokenizer.json").is_file():
        return _load_tokenizer_json(d / "tokenizer.json")
    raise TokenizerError(f"{d}: no tokenizer.model or tokenizer.json")


def _load_sentencepiece(model: Path) -> SentencePieceTokenizer:
    added = _read_json(model.parent / "added_tokens.json")
    return SentencePieceTokenizer(model, _read_json(model.parent / "tokenizer_config.json"),
                                  _read_json(model.parent / "special_tokens_map.json"),
                                  {k: int(v) for k, v in added.items()}, source=str(model))


def _load_tokenizer_json(path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer as TkTokenizer

    try:
        tok = TkTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises bare Exception subclasses
        raise TokenizerError(f"{path}: cannot load: {e}") from None
    return HFTokenizer(tok, _hf_config(path.parent), source=str(path))


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether `path` (an HF directory, a file in one, or a .gguf) carries a tokenizer jlm can load."""
    p = Path(path)
    if p.suffix == ".gguf":
        return "tokenizer.ggml.tokens" in _gguf_fields(p)
    d = _tokenizer_dir(p)
    return (d / "tokenizer.model").is_file() or (d / "tokenizer.json").is_file()


def export_tokenizer(src: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write HF tokenizer files for `src` into `out_dir` so transformers can load them.

    From an HF directory (or a checkpoint file inside one) the tokenizer files are copied. From a
    `.gguf` file they are built: tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece),
    plus tokenizer_config.json and special_tokens_map.json.
    """
    src, out = Path(src), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if src.suffix != ".gguf":
        d = _tokenizer_dir(src)
        for name in TOKENIZER_FILES:
            if (d / name).is_file():
                shutil.copyfile(d / name, out / name)
                written.append(out / name)
        if not written:
            raise TokenizerError(f"{d}: no tokenizer files to copy (looked for {', '.join(TOKENIZER_FILES)})")
        return written
    meta = _gguf_fields(src)
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tok, config = _gguf_byte_level(meta, str(src))
        tok.save(str(out / "tokenizer.json"))
        written.append(out / "tokenizer.json")
    elif kind == "llama":
        config = _gguf_special_config(meta, meta["tokenizer.ggml.tokens"], add_bos_default=True)
        config["tokenizer_class"] = "LlamaTokenizer"
        config["legacy"] = True
        (out / "tokenizer.model").write_bytes(_gguf_sentencepiece_proto(meta, str(src)))
        written.append(out / "tokenizer.model")
    else:
        raise TokenizerError(f"{src}: GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}
    if kind == "llama":
        # As AddedToken dicts, like the LLaMA / JudgeLM releases: a plain string in special_tokens_map.json
        # would make transformers 4.x's slow tokenizer strip the spaces around it.
        specials = {k: {"__type": "AddedToken", "content": v, "lstrip": False, "normalized": True,
                        "rstrip": False, "single_word": False} for k, v in specials.items()}
        config.update(specials)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    return written + [out / "tokenizer_config.json", out / "special_tokens_map.json"]
