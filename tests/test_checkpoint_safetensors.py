"""Reading HF safetensors checkpoints: single file, shards, bad files."""
from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from jlm.checkpoint import CheckpointError, iter_tensors, read_config, tensor_shapes

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
          "num_hidden_layers": 2, "torch_dtype": "bfloat16"}


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """A two-layer LLaMA-shaped state dict with bf16, fp16 and fp32 tensors (values exactly representable)."""
    rng = np.random.default_rng(seed)
    out = {"model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16),
           "model.norm.weight": np.linspace(0.5, 1.5, 8, dtype=np.float32)}
    for i in range(2):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = rng.standard_normal((8, 8)).astype(ml_dtypes.bfloat16)
        out[p + "self_attn.k_proj.weight"] = rng.standard_normal((4, 8)).astype(np.float16)
        out[p + "mlp.down_proj.weight"] = rng.standard_normal((8, 12)).astype(np.float32)
        out[p + "input_layernorm.weight"] = np.ones(8, np.float32)
    out["lm_head.weight"] = rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16)
    return out


def write_sharded(d, tensors: dict[str, np.ndarray], n_shards: int) -> None:
    names = list(tensors)
    weight_map = {}
    for k in range(n_shards):
        shard = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::n_shards]}
        save_file(part, str(d / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(CONFIG))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype, name
        assert got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name].view(np.uint8), np.ascontiguousarray(w).view(np.uint8), err_msg=name)


def test_single_file_dir(tmp_path):
    want = tiny_tensors()
    save_file(want, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    assert read_config(tmp_path) == CONFIG
    assert_same(dict(iter_tensors(tmp_path)), want)
    assert tensor_shapes(tmp_path) == {k: v.shape for k, v in want.items()}


def test_bare_safetensors_file_reads_config_beside_it(tmp_path):
    want = tiny_tensors()
    save_file(want, str(tmp_path / "weights.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    assert read_config(tmp_path / "weights.safetensors") == CONFIG
    assert_same(dict(iter_tensors(tmp_path / "weights.safetensors")), want)


def test_sharded_streams_shard_by_shard(tmp_path):
    want = tiny_tensors()
    write_sharded(tmp_path, want, 3)
    got = list(iter_tensors(tmp_path))
    assert_same(dict(got), want)
    # Shards are read in order, each completely, before the next one opens.
    shard_of = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    shard_seq = [shard_of[n] for n, _ in got]
    assert shard_seq == sorted(shard_seq)
    assert tensor_shapes(tmp_path) == {k: v.shape for k, v in want.items()}


def test_rotary_inv_freq_buffers_are_skipped(tmp_path):
    want = tiny_tensors()
    save_file({**want, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)},
              str(tmp_path / "model.safetensors"))
    assert set(dict(iter_tensors(tmp_path))) == set(want)
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in tensor_shapes(tmp_path)


def test_missing_shard_names_shard_and_tensor(tmp_path):
    write_sharded(tmp_path, tiny_tensors(), 2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing shard model-00002-of-00002\.safetensors.*holds 'model\."):
        next(iter_tensors(tmp_path))


def test_truncated_file_names_file_and_tensor(tmp_path):
    save_file(tiny_tensors(), str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor '[\w.]+' ends at byte"):
        list(iter_tensors(tmp_path))


def test_truncated_header(tmp_path):
    (tmp_path / "model.safetensors").write_bytes((10_000).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header claims 10000 bytes"):
        list(iter_tensors(tmp_path))


def test_unknown_dtype_names_tensor(tmp_path):
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    with pytest.raises(CheckpointError, match=r"tensor 'w' has dtype 'F8_E4M3'"):
        list(iter_tensors(tmp_path))


def test_no_checkpoint_in_dir(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
        list(iter_tensors(tmp_path))
    with pytest.raises(CheckpointError, match="no such file"):
        read_config(tmp_path / "nope.safetensors")
