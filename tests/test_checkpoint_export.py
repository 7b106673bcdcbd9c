"""write_hf_checkpoint and `jlm convert`: round trips, sharding, config dialects, tokenizer files."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from test_checkpoint_gguf import SMOLLM2, hf_weights, needs_smollm2, to_gguf, write_gguf
from test_checkpoint_safetensors import CONFIG, assert_same, tiny_tensors
from test_tokenizer import IDS, TINY_SP, check_records

from jlm.checkpoint import CheckpointError, hf_config, iter_tensors, read_config, write_hf_checkpoint
from jlm.checkpoint.convert import main as convert_main
from jlm.checkpoint.convert import parse_size
from jlm.tokenizer import export_tokenizer, load_tokenizer


def test_single_shard_roundtrip(tmp_path):
    want = tiny_tensors()
    summary = write_hf_checkpoint(tmp_path, want.items(), CONFIG)
    assert [p.name for p in summary.files] == ["model.safetensors", "config.json"]
    assert summary.tensors == len(want) and summary.bytes == sum(a.nbytes for a in want.values())
    assert_same(dict(iter_tensors(tmp_path)), want)
    cfg = read_config(tmp_path)
    assert cfg["torch_dtype"] == "float32"  # the floating dtype holding most of the bytes
    assert cfg["rope_theta"] == 10000.0 and cfg["rope_scaling"] is None


def test_sharded_roundtrip_and_stale_files(tmp_path):
    want = tiny_tensors()
    summary = write_hf_checkpoint(tmp_path, iter(want.items()), CONFIG, max_shard_bytes=400)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want) and index["metadata"]["total_size"] == summary.bytes
    assert_same(dict(iter_tensors(tmp_path)), want)
    assert not list(tmp_path.glob("*.partial"))
    # A second export into the same directory replaces the first, leaving no stale shards behind.
    write_hf_checkpoint(tmp_path, want.items(), CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same(dict(iter_tensors(tmp_path)), want)


def test_oversized_tensor_gets_its_own_shard(tmp_path):
    big = {"a": np.zeros(10, np.float32), "b": np.zeros(1000, np.float32), "c": np.zeros(10, np.float32)}
    write_hf_checkpoint(tmp_path, big.items(), CONFIG, max_shard_bytes=100)
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) == 3


def test_duplicate_tensor_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="'a' given twice"):
        write_hf_checkpoint(tmp_path, [("a", np.zeros(2)), ("a", np.zeros(2))], CONFIG)
    assert not list(tmp_path.glob("*.safetensors*"))


def test_config_dialects_are_written_as_4_4x():
    v5 = {"model_type": "llama", "rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0},
          "dtype": "bfloat16"}
    cfg = hf_config(v5)
    assert "rope_parameters" not in cfg and "dtype" not in cfg
    assert cfg["rope_theta"] == 500000.0 and cfg["torch_dtype"] == "bfloat16"
    assert cfg["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 2.0}
    v428 = {"model_type": "llama", "rope_scaling": None, "torch_dtype": "float16"}
    assert hf_config(v428, "float32") == {"model_type": "llama", "rope_scaling": None, "torch_dtype": "float32",
                                          "rope_theta": 10000.0}
    v44 = {"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert hf_config(v44)["rope_scaling"] == {"type": "linear", "rope_type": "linear", "factor": 4.0}
    assert hf_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}})["rope_scaling"] is None


def test_tokenizer_files_copied(tmp_path):
    write_hf_checkpoint(tmp_path, tiny_tensors().items(), CONFIG)
    export_tokenizer(TINY_SP, tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == (TINY_SP / "tokenizer.model").read_bytes()
    check_records(load_tokenizer(tmp_path), IDS["tiny_sp"]["records"][:4])


# ------------------------------------------------------------------------------------------- CLI
def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size("123") == 123
    assert parse_size("1.5kb") == 1500


def test_convert_gguf_with_tokenizer(tmp_path, capsys):
    from test_tokenizer import sp_gguf

    hf = hf_weights(n_layers=2)
    tok_src = sp_gguf(tmp_path / "tok.gguf")

    def with_tokenizer(w):  # copy the SentencePiece vocabulary metadata into the model file
        import gguf

        from jlm.checkpoint.gguf import field, open_reader
        r = open_reader(tok_src)
        w.add_tokenizer_model("llama")
        w.add_token_list(field(r, "tokenizer.ggml.tokens"))
        w.add_token_scores(field(r, "tokenizer.ggml.scores"))
        w.add_token_types(field(r, "tokenizer.ggml.token_type"))
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        assert gguf  # noqa

    src = write_gguf(tmp_path / "m.gguf", to_gguf(hf), n_layers=2, metadata=with_tokenizer)
    rc = convert_main([str(src), str(tmp_path / "out"), "--dtype", "bfloat16", "--max-shard-size", "20KB"])
    out = capsys.readouterr().out
    assert rc == 0 and f"wrote {len(hf)} tensors ({len(hf)} bfloat16)" in out
    got = dict(iter_tensors(tmp_path / "out"))
    for name, w in hf.items():
        assert got[name].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got[name], w.astype(ml_dtypes.bfloat16), err_msg=name)
    cfg = read_config(tmp_path / "out")
    assert cfg["torch_dtype"] == "bfloat16" and cfg["num_key_value_heads"] == 2 and cfg["tie_word_embeddings"]
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    check_records(load_tokenizer(tmp_path / "out"), IDS["tiny_sp"]["records"], what=("ids",))


TINY = Path(__file__).parent / "fixtures" / "tiny_mha"  # a complete two-layer model, as .bin shards


def tiny_copy(dst, **config_changes):
    dst.mkdir()
    for f in TINY.iterdir():
        if f.name != "logits.npz":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((TINY / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config_changes}))
    return dst


def test_convert_errors_exit_2_without_traceback(tmp_path, capsys):
    assert convert_main([str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jlm convert: error: ") and "no such file" in err and "Traceback" not in err
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((TINY / "config.json").read_text())
    (src / "model.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{")
    assert convert_main([str(src), str(tmp_path / "out")]) == 2
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_convert_refuses_what_load_model_refuses_before_writing(tmp_path, capsys):
    yarn = tiny_copy(tmp_path / "yarn", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert convert_main([str(yarn), str(tmp_path / "out")]) == 2
    assert "rope_scaling type 'yarn' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no empty folder left behind
    wide = tiny_copy(tmp_path / "wide", intermediate_size=128)
    assert convert_main([str(wide), str(tmp_path / "out")]) == 2
    assert "has shape (160, 64), the config says (128, 64)" in capsys.readouterr().err
    ok = tiny_copy(tmp_path / "ok")
    assert convert_main([str(ok), str(ok)]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
    (tmp_path / "kept").mkdir()  # a folder the user made is left as it was
    assert convert_main([str(yarn), str(tmp_path / "kept")]) == 2 and (tmp_path / "kept").is_dir()

    # data cut off after a valid header: found while writing; the new folder goes again
    write_hf_checkpoint(tmp_path / "st", iter_tensors(ok), json.loads((TINY / "config.json").read_text()))
    f = tmp_path / "st" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    assert convert_main([str(tmp_path / "st"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_convert_writes_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        assert convert_main([str(TINY), str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_cli_dispatch(tmp_path, capsys):
    from jlm.cli import main as cli_main

    assert cli_main(["convert", str(TINY), str(tmp_path / "dst"), "--dtype", "float32"]) == 0
    assert {a.dtype for _, a in iter_tensors(tmp_path / "dst")} == {np.dtype(np.float32)}
    assert "no tokenizer in" in capsys.readouterr().out  # a checkpoint without one still converts


# ------------------------------------------------------------------------------------- SmolLM2
def _digest(w: np.ndarray) -> tuple:
    return w.shape, str(w.dtype), hashlib.blake2b(np.ascontiguousarray(w).tobytes(), digest_size=16).hexdigest()


@needs_smollm2
def test_smollm2_export_roundtrip(tmp_path):
    # The embedding (Q8_0) and the whole first block (Q4_1 + F32), as they come first in the file: the
    # real dequantized values through safetensors and back, plus the tokenizer built from the metadata.
    # (The full 30-layer conversion is the same code path, only 5x slower.)
    seen = {}

    def tee():
        for name, w in itertools.islice(iter_tensors(SMOLLM2), 10):
            seen[name] = _digest(w)
            yield name, w

    gguf_cfg = read_config(SMOLLM2)
    summary = write_hf_checkpoint(tmp_path, tee(), gguf_cfg, max_shard_bytes=100 * 10**6)
    export_tokenizer(SMOLLM2, tmp_path)
    assert summary.tensors == 10 and summary.dtypes == {"float32": 10}
    assert len(list(tmp_path.glob("model-*-of-00002.safetensors"))) == 2
    assert "model.layers.0.self_attn.q_proj.weight" in seen and "model.embed_tokens.weight" in seen
    assert read_config(tmp_path) == gguf_cfg
    assert {n: _digest(w) for n, w in iter_tensors(tmp_path)} == seen
    check_records(load_tokenizer(tmp_path), IDS["smollm2"]["records"], what=("ids",))
