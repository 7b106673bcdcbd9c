"""Loader errors name the tensor; export round trip; LoRA merge on export."""
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import jlm
from jlm.model.llama import LoRA, LoRAParam
from jlm.model.load import WeightError, hf_tensors, save_pretrained

FIX = Path(__file__).parent / "fixtures"


def _copy_with(tmp_path, edit):
    src = FIX / "tiny_mqa"
    dst = tmp_path / "model"
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def test_wrong_shape_names_the_tensor(tmp_path):
    def edit(t):
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:, :-1].copy()
    with pytest.raises(WeightError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(160, 63\).*\(160, 64\)"):
        jlm.load_model(_copy_with(tmp_path, edit))


def test_missing_tensor_is_named(tmp_path):
    with pytest.raises(WeightError, match=r"missing tensors \['model\.layers\.0\.self_attn\.k_proj\.weight'\]"):
        jlm.load_model(_copy_with(tmp_path, lambda t: t.pop("model.layers.0.self_attn.k_proj.weight")))


def test_unexpected_tensor_is_named(tmp_path):
    def edit(t):
        t["model.layers.2.input_layernorm.weight"] = np.ones(64, np.float32)
    with pytest.raises(WeightError, match=r"unexpected tensor 'model\.layers\.2\.input_layernorm\.weight'"):
        jlm.load_model(_copy_with(tmp_path, edit))


@pytest.mark.parametrize("name", ["mha", "tied"])
def test_export_round_trip_gives_identical_params(tmp_path, name):
    model, cfg = jlm.load_model(FIX / f"tiny_{name}")
    out = save_pretrained(model, tmp_path / "export", dtype="float32")
    again, cfg2 = jlm.load_model(out)
    assert cfg2 == cfg
    a, b = dict(hf_tensors(model)), dict(hf_tensors(again))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    raw = json.loads((out / "config.json").read_text())
    assert raw["rope_theta"] == cfg.rope_theta and raw["num_key_value_heads"] == cfg.num_kv_heads


def test_lora_merged_export_matches_unmerged_forward(tmp_path):
    model, cfg = jlm.load_model(FIX / "tiny_gqa2_theta", lora=LoRA(rank=4, alpha=8.0))
    ref = np.load(FIX / "tiny_gqa2_theta" / "logits.npz")
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    base = np.asarray(model(ids, mask).logits)
    real = ref["attention_mask"].astype(bool)
    np.testing.assert_allclose(base[real], ref["logits"][real], atol=1e-4)  # B = 0: still the checkpoint
    # give the adapters non-zero values, as training would
    _, lora_state = nnx.split(model, LoRAParam, ...)[:2]
    rng = np.random.default_rng(0)
    for path, var in nnx.to_flat_state(lora_state):
        var.set_value(jnp.asarray(rng.normal(0, 0.05, var.get_value().shape), jnp.float32))
    adapted = np.asarray(model(ids, mask).logits)
    assert np.abs(adapted - base).max() > 1e-2
    out = save_pretrained(model, tmp_path / "merged", dtype="float32")
    merged, _ = jlm.load_model(out)
    np.testing.assert_allclose(np.asarray(merged(ids, mask).logits)[real], adapted[real], atol=1e-4)
