"""LoRA adapters as Hugging Face PEFT adapter directories: a peft-made adapter loads on its base and
gives peft's logits (fixture made by scripts/make_peft_fixtures.py); jlm's adapters round-trip
through the format; bad adapters fail naming file and tensor. (The adapter `jlm train` writes is
checked in test_train_run.py, on the LoRA run that test already makes.)"""
import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jlm.checkpoint import CheckpointError
from jlm.model.llama import LoRA
from jlm.model.load import WeightError, load_model, save_adapter, save_pretrained

FIX = Path(__file__).parent / "fixtures"
LORA = FIX / "tiny_lora"
REF = np.load(LORA / "logits.npz")
REAL = REF["attention_mask"].astype(bool)  # HF's logits at pad positions are not comparable
A_Q1 = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"


def _logits(model):
    return np.asarray(model(jnp.asarray(REF["input_ids"]), jnp.asarray(REF["attention_mask"])).logits)


def _copy_adapter(tmp_path):
    d = tmp_path / "adapter"
    shutil.copytree(LORA / "adapter", d)
    conf = json.loads((d / "adapter_config.json").read_text())
    conf["base_model_name_or_path"] = str(LORA / "base")
    (d / "adapter_config.json").write_text(json.dumps(conf))
    return d, conf


def test_peft_adapter_matches_transformers():
    """base_model_name_or_path is "../base": relative to the adapter directory."""
    model, cfg = load_model(LORA / "adapter")
    assert (cfg.num_layers, cfg.num_kv_heads) == (2, 2)
    diff = float(np.abs(_logits(model)[REAL] - REF["logits"][REAL]).max())
    assert diff < 1e-4, f"max |logit diff| {diff:.2e}"
    base, _ = load_model(LORA / "base")
    assert np.abs(_logits(base)[REAL] - REF["logits"][REAL]).max() > 0.1  # the adapter matters
    again, _ = load_model(LORA / "adapter", base=LORA / "base")  # the base named explicitly
    np.testing.assert_array_equal(_logits(again), _logits(model))
    with pytest.raises(ValueError, match="base="):
        load_model(LORA / "base", base=LORA / "base")  # base= is for adapters only


@pytest.mark.parametrize("targets", [LoRA.targets, ("wv", "wo", "w_down")])
def test_jlm_adapter_roundtrip_and_merged_export(tmp_path, monkeypatch, targets):
    lora = LoRA(rank=3, alpha=5.0, targets=targets)
    model, _ = load_model(LORA / "base", lora=lora, seed=1)
    rng = np.random.default_rng(0)
    for block in model.layers:  # B starts at zero: make the adapters do something
        for t in targets:
            b = getattr(block, f"{t}_lora_b")
            b.set_value(jnp.asarray(0.3 * rng.standard_normal(b.get_value().shape), jnp.float32))
    want = _logits(model)

    monkeypatch.chdir(FIX)  # a relative base path is written absolute
    old_mask = os.umask(0o022)
    try:
        save_adapter(model, tmp_path / "adapter", base="tiny_lora/base")
    finally:
        os.umask(old_mask)
    # the usual mode, not safetensors' private 0600 temporary: the adapter ships and is shared
    assert {f.stat().st_mode & 0o777 for f in (tmp_path / "adapter").iterdir()} == {0o644}
    monkeypatch.chdir(tmp_path)
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    hf = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w_gate": "gate_proj",
          "w_up": "up_proj", "w_down": "down_proj"}
    assert (conf["peft_type"], conf["r"], conf["lora_alpha"], conf["target_modules"]) == \
        ("LORA", 3, 5, [hf[t] for t in targets])
    assert conf["base_model_name_or_path"] == str(LORA / "base")
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 2 * len(targets) and all(v.dtype == np.float32 for v in tensors.values())

    loaded, _ = load_model(tmp_path / "adapter")
    got = _logits(loaded)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got - _logits(load_model(LORA / "base")[0])).max() > 1e-2

    save_pretrained(model, tmp_path / "hf", dtype="float32")  # the merged export is the same model
    np.testing.assert_allclose(_logits(load_model(tmp_path / "hf")[0]), got, atol=2e-5)

    save_adapter(model, tmp_path / "adapter16", base=LORA / "base", dtype="bfloat16")
    half = _logits(load_model(tmp_path / "adapter16")[0])
    assert np.abs(half - want).max() < 0.1

    save_adapter(model, tmp_path / "smol", base="smollm2")  # an alias stays an alias
    assert json.loads((tmp_path / "smol" / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2"


def test_wrong_shape_and_missing_tensors_are_named(tmp_path):
    d, _ = _copy_adapter(tmp_path)
    f = d / "adapter_model.safetensors"
    tensors = load_file(str(f))
    bad = dict(tensors, **{A_Q1: np.zeros((4, 16), np.float32)})
    save_file(bad, str(f), metadata={"format": "pt"})
    with pytest.raises(WeightError, match=rf"{A_Q1}.*\(4, 16\).*\(4, 32\)"):
        load_model(d)
    save_file({k: v for k, v in tensors.items() if k != A_Q1}, str(f), metadata={"format": "pt"})
    with pytest.raises(WeightError, match=rf"adapter_model.safetensors: missing tensors \['{A_Q1}'\]"):
        load_model(d)
    save_file(dict(tensors, **{"base_model.model.lm_head.lora_A.weight": np.zeros((4, 32), np.float32)}), str(f),
              metadata={"format": "pt"})
    with pytest.raises(WeightError, match="unexpected tensor 'base_model.model.lm_head.lora_A.weight'"):
        load_model(d)


def test_adapter_on_another_base_is_an_error():
    with pytest.raises(WeightError, match=r"another base model"):  # hidden size 64, not 32
        load_model(LORA / "adapter", base=FIX / "tiny_gqa2_theta")


@pytest.mark.parametrize("change, error, match", [
    ({"target_modules": ["q_proj", "embed_tokens"]}, CheckpointError, r"unknown target module\(s\) \['embed_tokens'\]"),
    ({"peft_type": "IA3"}, CheckpointError, "peft_type 'IA3'"),
    ({"use_rslora": True}, CheckpointError, "use_rslora=True"),
    ({"target_modules": ".*proj"}, CheckpointError, "list of module names"),
    ({"base_model_name_or_path": "../nowhere"}, FileNotFoundError,
     r"adapter_config.json: base_model_name_or_path '\.\./nowhere'"),
    ({"base_model_name_or_path": None}, CheckpointError, "no base_model_name_or_path"),
])
def test_bad_adapter_configs_are_named(tmp_path, change, error, match):
    d, conf = _copy_adapter(tmp_path)
    (d / "adapter_config.json").write_text(json.dumps({**conf, **change}))
    with pytest.raises(error, match=match):
        load_model(d)
