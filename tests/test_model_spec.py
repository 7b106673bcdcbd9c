"""One description per array (jlm/model/spec.py): the model, the HF layout and the cache all follow
it; and the names blocks give their activations, for profiles and remat policies."""
import contextlib
import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jlm.checkpoint import iter_tensors, read_config, tensor_shapes
from jlm.model.config import LlamaConfig
from jlm.model.hf_layout import hf_shapes, to_hf, to_model
from jlm.model.llama import KVCache, Llama, LoRA, ModelOptions, remat_policy
from jlm.model.spec import REMAT_NAMES, block_specs, cache_specs, lora_specs, top_specs
from jlm.train.config import TrainConfig, TrainConfigError

FIX = Path(__file__).parent / "fixtures"
CFG = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16)


def test_hf_shapes_are_the_shapes_transformers_saved():
    """The shapes a transformers-written checkpoint holds (GQA: k/v narrower than q) come out of the spec."""
    d = FIX / "tiny_gqa2_theta"
    cfg = LlamaConfig.from_hf(read_config(d))
    assert hf_shapes(cfg) == tensor_shapes(d)
    assert hf_shapes(cfg)["model.layers.1.self_attn.k_proj.weight"] == (32, 64)  # 2 kv heads x 16, by hand
    assert hf_shapes(cfg)["model.layers.0.self_attn.o_proj.weight"] == (64, 64)
    assert hf_shapes(cfg)["model.layers.0.mlp.down_proj.weight"] == (64, 160)


def test_hf_layout_round_trips_every_tensor():
    d = FIX / "tiny_gqa2_theta"
    cfg = LlamaConfig.from_hf(read_config(d))
    for name, w in iter_tensors(d):
        path, mine = to_model(name, w, cfg)
        back_name, back = to_hf(path, mine, cfg)
        assert back_name == name
        np.testing.assert_array_equal(back, w, err_msg=name)


def test_the_model_is_built_from_the_spec():
    lora = LoRA(rank=4, targets=("wq", "wo", "w_down"))
    model = Llama(CFG, ModelOptions(dtype=jnp.bfloat16, lora=lora))
    specs = {**{(k,): s for k, s in top_specs(CFG).items()},
             **{("layers", i, k): s for i in range(CFG.num_layers)
                for k, s in {**block_specs(CFG), **lora_specs(CFG, lora)}.items()}}
    state = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert set(state) == set(specs)
    for path, var in state.items():
        spec = specs[path]
        value = var.get_value()
        assert value.shape == spec.shape and var.get_metadata()["axes"] == spec.axes, path
        assert value.dtype == (jnp.float32 if spec.fp32 else jnp.bfloat16), path
    block = model.layers[0]
    assert np.all(np.asarray(block.wo_lora_b[...]) == 0) and np.all(np.asarray(block.attn_norm[...]) == 1)
    # fan-in std: wo's fan-in is heads x head_dim (its two leading input dims), not its first dim
    assert float(np.std(np.asarray(block.wo[...], np.float32))) == pytest.approx(0.88 * 64 ** -0.5, rel=0.1)


def test_the_cache_follows_the_spec():
    specs = cache_specs(CFG, batch=3, size=40)
    for dtype in (jnp.bfloat16, jnp.int8):
        cache = KVCache.init(CFG, 3, 40, dtype)
        assert len(cache.k) == CFG.num_layers
        k = cache.k[0].values if dtype == jnp.int8 else cache.k[0]
        assert k.shape == specs["kv"].shape == (3, 40, 2, 16) and k.dtype == dtype
        assert cache.valid.shape == (3, 40) and cache.next_pos.shape == (3,) and cache.index.shape == ()
    assert specs["kv"].axes == ("act_batch", None, "act_kv_heads", None)


def _saved_residuals(remat: str) -> str:
    model = Llama(CFG, ModelOptions(remat=remat))
    graphdef, state = nnx.split(model)
    ids = jnp.arange(24).reshape(2, 12) % CFG.vocab_size

    def loss(state):
        return jnp.mean(nnx.merge(graphdef, state)(ids).logits)

    # the residuals the backward pass keeps, with their names (jax's own report)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(loss, state)
    return out.getvalue()


def test_remat_save_names_keep_exactly_those_activations():
    saved = _saved_residuals("save:query,value")
    assert "'query'" in saved and "'value'" in saved and "'key'" not in saved and "'mlp_hidden'" not in saved
    assert "'query'" not in _saved_residuals("nothing_saveable")


def test_bad_remat_names_fail_early():
    with pytest.raises(ValueError, match="save what"):
        remat_policy("save:qery")
    with pytest.raises(ValueError, match="checkpoint_policies"):
        Llama(CFG, ModelOptions(remat="everything"))
    with pytest.raises(TrainConfigError, match="query"):
        TrainConfig(init="random", model_shape="llama-1b", remat="save:qery")
    assert TrainConfig(init="random", model_shape="llama-1b", remat="save:" + ",".join(REMAT_NAMES)).remat


def test_blocks_carry_named_scopes_for_profiles():
    model = Llama(CFG)
    graphdef, state = nnx.split(model)
    ids = jnp.zeros((1, 8), jnp.int32)
    text = jax.jit(lambda s: nnx.merge(graphdef, s)(ids).logits).lower(state).as_text(debug_info=True)
    assert "attn/" in text and "mlp/" in text
