"""The model sharded over 8 fake CPU devices computes what it computes on one device."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import jlm
from jlm.model.sharding import logical_to_spec, make_mesh

FIX = Path(__file__).parent / "fixtures"


def _forward(model, ids, mask):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask).logits

    return np.asarray(f(state, ids, mask))


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 4, 2), (2, 4, 1)], ids=["fsdp8", "fsdp4xtp2", "dp2xfsdp4"])
def test_sharded_forward_equals_single_device(shape):
    assert len(jax.devices()) >= 8, "tests/conftest.py should give 8 fake CPU devices"
    ref = np.load(FIX / "tiny_gqa2_theta" / "logits.npz")
    ids, mask = jnp.asarray(ref["input_ids"]), jnp.asarray(ref["attention_mask"])
    single, _ = jlm.load_model(FIX / "tiny_gqa2_theta")
    expected = _forward(single, ids, mask)

    mesh = make_mesh(*shape)
    model, _ = jlm.load_model(FIX / "tiny_gqa2_theta", mesh=mesh)
    wq = model.layers[0].wq.get_value()
    assert len(wq.sharding.device_set) == 8  # placed on the mesh at load time, not replicated later
    if shape[2] == 2:
        assert wq.sharding.spec == P("fsdp", "tensor", None)
    batch = NamedSharding(mesh, logical_to_spec(("act_batch", None), ids.shape, mesh))
    with jax.set_mesh(mesh):
        got = _forward(model, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_rules_drop_axes_that_do_not_divide():
    mesh = make_mesh(1, 4, 2)
    # 3 kv heads cannot be split over tensor=2: replicated over it instead of failing
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (576, 3, 64), mesh) == P("fsdp", None, None)
    assert logical_to_spec(("act_batch", None), (8, 10), make_mesh(2, 4, 1)) == P(("data", "fsdp"), None)
    assert logical_to_spec(("act_batch", None), (2, 10), make_mesh(2, 4, 1)) == P("data", None)


def test_an_axis_that_does_not_divide_warns_or_raises_for_weights_and_is_silent_for_activations():
    from jlm.model.sharding import named_sharding
    import warnings

    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    with pytest.warns(UserWarning, match=r"'q_heads' \(size 9\) does not divide over mesh axis 'tensor'"):
        sh = named_sharding(mesh, ("embed", "q_heads", "head_dim"), (64, 9, 16))  # SmolLM2's 9 heads
    assert sh.spec == P("fsdp", None, None)  # replicated over tensor, as warned
    with pytest.raises(ValueError, match="q_heads"):
        named_sharding(mesh, ("embed", "q_heads", "head_dim"), (64, 9, 16), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert logical_to_spec(("act_batch", None), (1, 8), mesh) == P(None, None)
        assert named_sharding(mesh, ("embed", "q_heads", "head_dim"), (64, 8, 16)).spec == P("fsdp", "tensor", None)
