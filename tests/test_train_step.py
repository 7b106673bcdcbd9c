"""The train step on 8 fake CPU devices: sharding invariance, gradient accumulation, loss weighting,
LoRA, remat/scan, the schedule, and the causal attention path used for training."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jlm.model.config import LlamaConfig
from jlm.model.hf_layout import to_model
from jlm.model.llama import CausalMask, Llama, ModelOptions, attention, causal_attention
from jlm.model.load import hf_tensors
from jlm.model.sharding import make_mesh
from jlm.train.config import TrainConfig
from jlm.train.loss import unembed_cross_entropy, weighted_terms
from jlm.train.optim import lr_schedule, make_optimizer
from jlm.train.state import dtypes, init_state, make_setup
from jlm.train.step import make_train_step, shard_batch

TINY = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16, max_position_embeddings=256)


def token_losses(logits, targets):
    """The dense reference: CE of each position, fp32 [B, T], from full logits [B, T, V]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse - jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def loss_terms(logits, batch, weighting):
    return weighted_terms(token_losses(logits, batch["targets"]), batch, weighting)



def _cfg(**kw):
    # eps 1e-3: AdamW's first update is ~lr * sign(g) where |g| >> eps, which would turn rounding
    # differences in near-zero gradients into lr-sized differences between runs that should agree
    base = dict(init="random", precision="fp32", remat=None, global_batch=16, micro_batch=8, max_steps=10,
                lr=1e-3, eps=1e-3, warmup_ratio=0.0, weighting="sample", packing=True, mesh_fsdp=-1)
    base.update(kw)
    return TrainConfig(**base)


def _packed_batch(rows=16, t=32, seed=0, vocab=TINY.vocab_size):
    """Packed rows of 1-3 samples of random lengths, trailing padding, loss on each sample's tail."""
    rng = np.random.default_rng(seed)
    b = {k: np.zeros((rows, t), np.int32) for k in ("input_ids", "targets", "segment_ids", "positions")}
    b["loss_mask"] = np.zeros((rows, t), np.float32)
    for r in range(rows):
        pos = 0
        for s in range(1, rng.integers(1, 4) + 1):
            n = int(rng.integers(4, 12))
            if pos + n > t:
                break
            ids = rng.integers(3, vocab, n + 1)
            b["input_ids"][r, pos:pos + n] = ids[:-1]
            b["targets"][r, pos:pos + n] = ids[1:]
            b["segment_ids"][r, pos:pos + n] = s
            b["positions"][r, pos:pos + n] = np.arange(n)
            b["loss_mask"][r, pos + n - rng.integers(1, n):pos + n] = 1.0  # a target tail of varying length
            pos += n
    return b


def _one_device():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _run(cfg, batches, mesh=None, weights=None, optimizer=None):
    """Train on `batches` from the same initial weights; returns (state as numpy, metrics per step).
    Default mesh: one device (compiles fastest; the sharded test passes its meshes)."""
    mesh = _one_device() if mesh is None else mesh
    setup = make_setup(cfg, TINY, optimizer or make_optimizer(cfg, cfg.max_steps), mesh=mesh)
    if weights is None:
        state = init_state(setup)
    else:
        dtype = {k: setup.parts.shape(k).dtype for k in setup.parts.template}
        params = {k: jax.device_put(weights[k].astype(dtype[k]), s) for k, s in setup.state_shardings.params.items()}
        frozen = {k: jax.device_put(weights[k].astype(dtype[k]), s) for k, s in setup.state_shardings.frozen.items()}
        state = init_state(setup, params, frozen)
    step = make_train_step(setup, lr_schedule(cfg, cfg.max_steps))
    metrics = []
    for b in batches:
        state, m = step(state, shard_batch(setup, b))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    return jax.tree.map(np.asarray, jax.device_get(state)), metrics


@pytest.fixture(scope="module")
def init_weights():
    cfg = _cfg()
    setup = make_setup(cfg, TINY, make_optimizer(cfg, 10), mesh=_one_device())
    state = init_state(setup)
    return {k: np.asarray(v) for k, v in {**state.params, **state.frozen}.items()}


@pytest.fixture(scope="module")
def single_device_run(init_weights):
    batches = [_packed_batch(seed=0), _packed_batch(seed=1)]
    return _run(_cfg(), batches, weights=init_weights), batches


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 4, 2), (2, 4, 1)], ids=["fsdp8", "fsdp4xtp2", "dp2xfsdp4"])
def test_sharded_step_equals_single_device(shape, init_weights, single_device_run):
    (ref_state, ref_metrics), batches = single_device_run
    mesh = make_mesh(*shape)
    cfg = _cfg(mesh_data=shape[0], mesh_fsdp=shape[1], mesh_tensor=shape[2])
    setup = make_setup(cfg, TINY, make_optimizer(cfg, 10), mesh=mesh)
    assert len(setup.state_shardings.params["layers.0.wq"].device_set) == 8
    state, metrics = _run(cfg, batches, mesh=mesh, weights=init_weights)
    for got, want in zip(metrics, ref_metrics):
        for k in ("loss", "grad_norm", "weight", "target_tokens"):
            assert got[k] == pytest.approx(want[k], rel=1e-5), k
    for k, w in ref_state.params.items():
        np.testing.assert_allclose(state.params[k], w, atol=2e-6, err_msg=k)
    mu = ref_state.opt_state[1][0].mu
    for k, w in mu.items():
        np.testing.assert_allclose(state.opt_state[1][0].mu[k], w, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("weighting", ["sample", "token"])
def test_accumulation_equals_one_big_batch(weighting, init_weights):
    """With SGD(lr=1) the update is the gradient itself; AdamW would hide a wrong overall scale."""
    one = _packed_batch(rows=16, seed=3)
    sgd = optax.sgd(1.0)
    mesh = make_mesh(1, 4, 1, devices=jax.devices()[:4])
    big, big_m = _run(_cfg(weighting=weighting, micro_batch=16), [one], mesh, init_weights, sgd)
    acc, acc_m = _run(_cfg(weighting=weighting, micro_batch=4), [one], mesh, init_weights, sgd)  # 4 x 4 rows
    assert acc_m[0]["loss"] == pytest.approx(big_m[0]["loss"], rel=1e-6)
    assert acc_m[0]["weight"] == big_m[0]["weight"]
    assert acc_m[0]["grad_norm"] == pytest.approx(big_m[0]["grad_norm"], rel=1e-5)
    for k in big.params:
        g_big, g_acc = init_weights[k] - big.params[k], init_weights[k] - acc.params[k]
        np.testing.assert_allclose(g_acc, g_big, atol=1e-6, rtol=1e-4, err_msg=k)
    assert np.abs(init_weights["layers.0.wq"] - big.params["layers.0.wq"]).max() > 1e-4  # a real update


def test_sample_weighting_is_per_sample_token_mean():
    batch = _packed_batch(rows=4, t=32, seed=5)
    logits = jax.random.normal(jax.random.key(0), (4, 32, TINY.vocab_size))
    ce = np.asarray(token_losses(logits, jnp.asarray(batch["targets"])))
    per_sample = []
    for r in range(4):
        for s in range(1, batch["segment_ids"][r].max() + 1):
            m = (batch["segment_ids"][r] == s) & (batch["loss_mask"][r] > 0)
            if m.any():
                per_sample.append(ce[r][m].mean())
    num, den, ntok = loss_terms(logits, batch, "sample")
    assert float(den) == len(per_sample) and len(per_sample) >= 6
    assert float(num) == pytest.approx(float(np.sum(per_sample)), rel=1e-5)
    num_t, den_t, _ = loss_terms(logits, batch, "token")
    assert float(den_t) == batch["loss_mask"].sum() == float(ntok)
    assert float(num_t) == pytest.approx(float(ce[batch["loss_mask"] > 0].sum()), rel=1e-5)
    # the fp32 CE itself
    ref = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, jnp.asarray(batch["targets"])[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, np.asarray(ref), rtol=1e-6)


def test_weighted_mask_gives_each_sample_its_weighted_token_mean():
    batch = _packed_batch(rows=4, t=32, seed=5)
    w = np.where(batch["loss_mask"] > 0, 1.0 + 4.0 * (np.arange(32) % 3 == 0), 0.0).astype(np.float32)
    logits = jax.random.normal(jax.random.key(1), (4, 32, TINY.vocab_size))
    ce = np.asarray(token_losses(logits, jnp.asarray(batch["targets"])))
    per_sample = []
    for r in range(4):
        for s in range(1, batch["segment_ids"][r].max() + 1):
            m = (batch["segment_ids"][r] == s) & (w[r] > 0)
            if m.any():
                per_sample.append((ce[r][m] * w[r][m]).sum() / w[r][m].sum())
    num, den, ntok = loss_terms(logits, {**batch, "loss_mask": w}, "sample")
    assert float(den) == len(per_sample) and float(ntok) == (w > 0).sum()  # ntok counts tokens, not weight
    assert float(num) == pytest.approx(float(np.sum(per_sample)), rel=1e-5)
    num_t, den_t, _ = loss_terms(logits, {**batch, "loss_mask": w}, "token")
    assert float(den_t) == pytest.approx(w.sum()) and float(num_t) == pytest.approx(float((ce * w).sum()), rel=1e-5)


def test_unpacked_rows_use_plain_causal_attention_exactly(init_weights):
    """Right-padded single-sample rows: the unpacked step (no mask at all) equals the packed step."""
    b = _packed_batch(rows=16, seed=7)
    first = b["segment_ids"] == 1  # keep only each row's first sample: one right-padded sample per row
    for k in b:
        b[k] = np.where(first, b[k], 0).astype(b[k].dtype)
    packed, pm = _run(_cfg(packing=True), [b], weights=init_weights)
    plain, qm = _run(_cfg(packing=False), [b], weights=init_weights)
    assert qm[0]["loss"] == pytest.approx(pm[0]["loss"], rel=1e-6)
    for k in packed.params:
        np.testing.assert_allclose(plain.params[k], packed.params[k], atol=1e-6, err_msg=k)


def test_scan_and_remat_change_nothing(init_weights, single_device_run):
    (ref, ref_m), batches = single_device_run
    for kw in (dict(scan_layers=True, remat="nothing_saveable"), dict(remat="dots_with_no_batch_dims_saveable"),
               dict(scan_layers=True, remat="save:query,key,value,mlp_hidden")):
        got, got_m = _run(_cfg(**kw), batches, weights=init_weights)
        for g, w in zip(got_m, ref_m):
            assert g["loss"] == pytest.approx(w["loss"], rel=1e-6), kw
        for k in ref.params:
            np.testing.assert_allclose(got.params[k], ref.params[k], atol=1e-6, err_msg=f"{kw} {k}")


def test_lora_trains_only_adapters_and_merged_export_matches():
    cfg = _cfg(lora_rank=4, lora_alpha=8.0, lr=3e-2, micro_batch=16, precision="fp32")
    setup = make_setup(cfg, TINY, make_optimizer(cfg, 10), mesh=_one_device())
    state = init_state(setup)
    frozen0 = jax.tree.map(np.asarray, jax.device_get(state.frozen))
    assert set(state.params) == {k for k in setup.parts.template if "_lora_" in k}
    assert len(state.params) == 2 * 7 * TINY.num_layers
    step = make_train_step(setup, lr_schedule(cfg, 10))
    for seed in range(3):
        state, m = step(state, shard_batch(setup, _packed_batch(seed=seed)))
    for k, v in state.frozen.items():
        np.testing.assert_array_equal(np.asarray(v), frozen0[k], err_msg=k)
    b = np.asarray(state.params["layers.0.wq_lora_b"])
    assert np.abs(b).max() > 1e-3  # B starts at zero: the adapters did train

    model = setup.parts.merge(state.params, state.frozen)
    plain = Llama(TINY, rngs=nnx.Rngs(0))  # same structure without adapters
    graphdef, st = nnx.split(plain)
    flat = dict(nnx.to_flat_state(st))
    for name, w in hf_tensors(model):
        key, value = to_model(name, w, TINY)
        flat[key] = flat[key].replace(jnp.asarray(value))
    merged = nnx.merge(graphdef, nnx.from_flat_state(flat))
    base = setup.parts.merge(jax.tree.map(jnp.zeros_like, state.params), state.frozen)  # B = 0: no adapter
    ids = jnp.asarray(_packed_batch(rows=2, seed=11)["input_ids"])
    logits = nnx.jit(lambda m, x: m(x).logits)
    adapted = np.asarray(logits(model, ids))
    np.testing.assert_allclose(np.asarray(logits(merged, ids)), adapted, atol=2e-4)
    assert np.abs(np.asarray(logits(base, ids)) - adapted).max() > 1e-2  # and the adapters matter


def test_pure_bf16_keeps_bf16_weights_and_moments(init_weights):
    cfg = _cfg(precision="bf16", micro_batch=16)
    state, m = _run(cfg, [_packed_batch()], weights=init_weights)
    m = m[0]
    adam = state.opt_state[1][0]
    assert state.params["layers.0.wq"].dtype == jnp.bfloat16
    assert adam.mu["layers.0.wq"].dtype == jnp.bfloat16 and adam.nu["layers.0.wq"].dtype == jnp.bfloat16
    assert math.isfinite(m["loss"]) and m["grad_norm"] > 0
    mixed = make_setup(_cfg(precision="mixed"), TINY, make_optimizer(_cfg(precision="mixed"), 10), mesh=_one_device())
    assert mixed.parts.template["layers.0.wq"].get_value().dtype == jnp.float32  # fp32 masters
    assert dtypes(_cfg(precision="mixed")) == (jnp.bfloat16, jnp.float32)  # bf16 compute over them
    assert dtypes(_cfg(precision="mixed", lora_rank=4)) == (jnp.bfloat16, jnp.bfloat16)  # frozen base: bf16


def test_schedule_matches_hf_warmup_cosine():
    cfg = TrainConfig(lr=2e-5, warmup_ratio=0.03, init="random", model_shape="llama-1b")
    total = 100  # warmup = ceil(3.0) = 3 updates
    s = lr_schedule(cfg, total)
    want = lambda k: 2e-5 * k / 3 if k < 3 else 2e-5 * 0.5 * (1 + math.cos(math.pi * (k - 3) / 97))
    for k in (0, 1, 2, 3, 4, 50, 99):
        assert float(s(k)) == pytest.approx(want(k), rel=1e-5, abs=1e-12), k
    assert float(s(0)) == 0.0  # HF's first update has lr 0 under warmup
    assert float(lr_schedule(cfg.replace(warmup_ratio=0.0), total)(0)) == pytest.approx(2e-5)


def test_causal_attention_equals_dense_masked_attention():
    rng = jax.random.split(jax.random.key(2), 3)
    b, t, h, kv, d = 2, 12, 4, 2, 8
    q = jax.random.normal(rng[0], (b, t, h, d))
    k = jax.random.normal(rng[1], (b, t, kv, d))
    v = jax.random.normal(rng[2], (b, t, kv, d))
    seg = jnp.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12])
    causal = jnp.tril(jnp.ones((t, t), bool))
    dense = (seg[:, :, None] == seg[:, None, :]) & causal & (seg[:, None, :] > 0)
    dense_fn = jax.jit(lambda q, k, v, m: attention(q, k, v, m)[0])
    causal_fn = jax.jit(lambda q, k, v, seg: causal_attention(q, k, v, CausalMask(seg), impl="xla"))
    want = dense_fn(q, k, v, dense)
    got = causal_fn(q, k, v, seg)
    real = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()  # padding queries attend to padding: never NaN
    plain = jax.jit(lambda q, k, v: causal_attention(q, k, v, CausalMask(None), impl="xla"))(q, k, v)
    want_plain = dense_fn(q, k, v, jnp.broadcast_to(causal, (b, t, t)))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(want_plain), atol=1e-5)


def test_cudnn_model_path_routes_through_causal_attention(monkeypatch):
    """attn_impl="cudnn" without a cache builds a CausalMask; on CPU run that path with the XLA kernel."""
    calls = []
    real = jax.nn.dot_product_attention

    def fake(*a, implementation=None, **kw):
        calls.append((implementation, kw.get("is_causal")))
        return real(*a, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    ids = jnp.asarray(_packed_batch(rows=2, seed=4)["input_ids"])
    seg = jnp.asarray(_packed_batch(rows=2, seed=4)["segment_ids"])
    ref = Llama(TINY, rngs=nnx.Rngs(0))(ids, segment_ids=seg).logits
    got = Llama(TINY, ModelOptions(attn_impl="cudnn"), rngs=nnx.Rngs(0))(ids, segment_ids=seg).logits
    assert calls and all(c == ("cudnn", True) for c in calls)
    real_tok = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(got)[real_tok], np.asarray(ref)[real_tok], atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_unembed_cross_entropy_matches_autodiff(dtype):
    k = jax.random.split(jax.random.key(5), 4)
    h = jax.random.normal(k[0], (2, 8, 16)).astype(dtype)
    w = (0.3 * jax.random.normal(k[1], (16, 40))).astype(dtype)
    t = jax.random.randint(k[2], (2, 8), 0, 40)
    g = jax.random.normal(k[3], (2, 8))

    def ref(h, w):
        logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return token_losses(logits, t)

    @jax.jit
    def both(h, w, g):
        got, got_vjp = jax.vjp(lambda h, w: unembed_cross_entropy(h, w, t), h, w)
        want, want_vjp = jax.vjp(ref, h, w)
        return got, want, got_vjp(g), want_vjp(g)

    got, want, got_grads, want_grads = both(h, w, g)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16: d(logits) is rounded to bf16 before the GEMMs
    for a, b in zip(got_grads, want_grads):
        assert a.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol)


def test_target_only_logits_equal_all_positions(init_weights):
    """The step with `target_index` (logits at trained positions only) makes the same update as
    scoring every position."""
    from jlm.train.data import with_target_index
    batches = [_packed_batch(seed=21), _packed_batch(seed=22)]
    full, full_m = _run(_cfg(), batches, weights=init_weights)
    picked, picked_m = _run(_cfg(), [with_target_index(b) for b in batches], weights=init_weights)
    for got, want in zip(picked_m, full_m):
        for k in ("loss", "grad_norm", "weight", "target_tokens"):
            assert got[k] == pytest.approx(want[k], rel=1e-5), k
    for k, w in full.params.items():
        np.testing.assert_allclose(picked.params[k], w, atol=2e-6, err_msg=k)
