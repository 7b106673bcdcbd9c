"""The decoding engine on tiny random models (fp32, CPU): cache == full forward, padding / batch /
device invariance, stop conditions, continuing a kept cache, sampling, tree scoring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jlm.data.tokenizer import ByteTokenizer
from jlm.infer.distributions import build_tree
from jlm.infer.engine import Engine, default_mesh, stop_table
from jlm.infer.sampling import Sampling, filter_logits
from jlm.model.config import LlamaConfig
from jlm.model.llama import Llama

V = 64
CFG = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, max_position_embeddings=512, eos_token_id=2)


class ByteTok(ByteTokenizer):
    """The byte-level stand-in tokenizer with the `decode(ids, skip_special_tokens)` signature."""

    def decode(self, ids, skip_special_tokens=True):
        return super().decode(ids)


def one_device():
    return default_mesh(devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def model():
    return Llama(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(3, V, size=n).tolist() for n in (5, 17, 9, 30, 1, 11, 23, 2)]


def no_stop():
    return np.zeros(V, bool)


@pytest.fixture(scope="module")
def full_forward(model):
    """log-softmax of one full forward pass (no cache) over a sequence of up to 64 tokens."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(ids):  # right padding: causal attention keeps it from touching the real tokens
        return jax.nn.log_softmax(nnx.merge(graphdef, state)(ids).logits[0], axis=-1)

    def logp(seq):
        ids = np.zeros((1, 64), np.int32)
        ids[0, : len(seq)] = seq
        return np.asarray(run(jnp.asarray(ids)))[: len(seq)]
    return logp


def greedy_reference(full_forward, prompt, n):
    """Greedy decoding the slow way: a full forward pass over the whole sequence per token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(full_forward(ids)[-1])))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def eng8(model):
    return Engine(model, mesh=one_device(), batch_size=8, bucket_step=8)


@pytest.fixture(scope="module")
def eng3(model):  # other batch mates, more left padding
    return Engine(model, mesh=one_device(), batch_size=3, bucket_step=32)


def tokens(gens):
    return [g.tokens for g in gens]


def test_prefill_then_decode_equals_full_forward(eng8, prompts, full_forward):
    gens = eng8.generate(prompts, max_new=6, stop=no_stop())
    for p, g in zip(prompts, gens):
        assert g.tokens == greedy_reference(full_forward, p, 6)
        assert not g.finished  # no stop token: every row ran to max_new


def test_greedy_independent_of_batch_size_and_padding(model, eng8, eng3, prompts):
    ref = tokens(eng8.generate(prompts, max_new=8, stop=no_stop()))
    assert tokens(eng3.generate(prompts, max_new=8, stop=no_stop())) == ref
    alone = Engine(model, mesh=one_device(), batch_size=1, bucket_step=8)  # one row per batch, little padding
    assert tokens(alone.generate(prompts[:4], max_new=8, stop=no_stop())) == ref[:4]


def test_greedy_independent_of_device_count(model, eng8, prompts):
    assert len(jax.devices()) == 8  # conftest's fake CPU devices
    ref = tokens(eng8.generate(prompts, max_new=6, stop=no_stop()))
    data8 = Engine(model, batch_size=8)  # default: the batch over all 8 devices
    assert data8.dp == 8
    assert tokens(data8.generate(prompts, max_new=6, stop=no_stop())) == ref
    tp = Engine(model, mesh=default_mesh(tensor=2), batch_size=8)  # heads / MLP sharded over 2 devices
    assert tp.mesh.shape["tensor"] == 2
    assert tokens(tp.generate(prompts, max_new=6, stop=no_stop())) == ref


def test_a_few_programs_serve_many_batches(model):
    rng = np.random.default_rng(1)
    many = [rng.integers(3, V, size=int(n)).tolist() for n in rng.integers(2, 60, size=37)]
    eng = Engine(model, mesh=one_device(), batch_size=4, bucket_step=32)
    eng.generate(many, max_new=3, stop=no_stop())
    prefills = [k for k in eng._exe if k[0] == "prefill"]
    # 10 batches, but only (length bucket 32 | 64) x (batch 4 | the tail's 1) programs at most
    assert len(prefills) <= 4, prefills
    assert len([k for k in eng._exe if k[0] == "decode"]) <= 4


def test_stop_tokens_min_new_and_max_new(eng8, prompts):
    eng = eng8
    free = tokens(eng.generate(prompts, max_new=8, stop=no_stop()))
    stop = no_stop()
    stop[free[0][2]] = True  # row 0's third token
    gens = eng.generate(prompts, max_new=8, stop=stop)
    for f, g in zip(free, gens):
        first = next((i for i, t in enumerate(f) if stop[t]), None)
        if first is None:
            assert g.tokens == f and not g.finished
        else:  # ends on the stop token, which is kept
            assert g.tokens == f[: first + 1] and g.finished
    assert gens[0].finished and len(gens[0].tokens) <= 3
    # min_new: a stop token before the minimum does not end the row
    forced = eng.generate(prompts, max_new=8, stop=stop, min_new=8)
    assert tokens(forced) == free


def test_stop_tables_from_the_tokenizer():
    tok = ByteTok()
    nl = stop_table(tok, "newline", tok.vocab_size)
    assert set(np.flatnonzero(nl)) == {tok.eos_id, ord("\n") + tok.offset}
    assert set(np.flatnonzero(stop_table(tok, "eos", tok.vocab_size, (5,)))) == {tok.eos_id, 5}
    with pytest.raises(ValueError, match="eos"):
        stop_table(tok, "period", tok.vocab_size)


def test_continuing_a_kept_cache_equals_one_go(eng8, prompts):
    eng = eng8
    one_go = tokens(eng.generate(prompts, max_new=9, stop=no_stop()))
    stop = no_stop()
    stop[one_go[1][1]] = True  # some rows stop early in the first phase
    batch = eng.prefill(prompts, np.arange(len(prompts)), reserve=20)
    first = eng.decode(batch, max_new=4, stop=stop)
    select = np.array([i % 2 == 1 for i in range(len(prompts))])
    more = eng.decode(batch, max_new=5, stop=no_stop(), select=select)
    for i, (a, b) in enumerate(zip(first, more)):
        if not select[i]:
            assert b is None
            continue
        both = a.tokens + b.tokens  # continuing from wherever the row stopped
        assert both == one_go[i][: len(both)]
        assert len(b.tokens) == 5
    with pytest.raises(ValueError, match="cache slots"):
        eng.decode(batch, max_new=50, stop=no_stop())


def test_seeded_sampling_is_reproducible_and_batch_independent(eng8, eng3, prompts):
    hot = Sampling(temperature=1.0, seed=7)
    a = tokens(eng8.generate(prompts, max_new=8, stop=no_stop(), sampling=hot))
    b = tokens(eng3.generate(prompts, max_new=8, stop=no_stop(), sampling=hot))
    c = tokens(eng8.generate(prompts, max_new=8, stop=no_stop(), sampling=Sampling(temperature=1.0, seed=8)))
    greedy = tokens(eng8.generate(prompts, max_new=8, stop=no_stop()))
    top1 = tokens(eng8.generate(prompts, max_new=8, stop=no_stop(), sampling=Sampling(temperature=1.0, top_k=1, seed=3)))
    assert a == b
    assert a != c and a != greedy
    assert top1 == greedy


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, 1.0, kw.get("k", 0), kw.get("p", 1.0))))[0].tolist()
    assert kept() == [True] * 5
    assert kept(k=2) == [True, True, False, False, False]
    assert kept(p=0.5) == [True, False, False, False, False]  # the top token alone reaches 0.5
    assert kept(p=0.7) == [True, True, False, False, False]
    assert kept(p=0.71) == [True, True, True, False, False]
    assert kept(k=2, p=0.9) == [True, True, False, False, False]
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)


def test_tree_logprobs_match_full_forward(model, prompts, full_forward):
    rng = np.random.default_rng(3)
    cands = [[5, 6], [5, 7, 8], [5, 7, 9], [10], [11, 12, 13, 14]]
    final_set = np.zeros(V, bool)
    final_set[rng.choice(np.arange(3, V), size=6, replace=False)] = True
    tree = build_tree(cands, final_set)
    assert tree.size == 1 + 10  # the root + the 10 distinct prefixes
    eng = Engine(model, mesh=one_device(), batch_size=4, bucket_step=16)
    rows = [0, 3, 4]  # lengths 5, 30, 1: different padding
    batch = eng.prefill(prompts, rows, reserve=tree.size + 4)
    got = eng.tree_logprobs(batch, tree)
    for i, r in enumerate(rows):
        for c, cand in enumerate(cands):
            logp = full_forward(prompts[r] + cand)
            start = len(prompts[r]) - 1
            want = sum(float(logp[start + j, t]) for j, t in enumerate(cand))
            want += float(np.logaddexp.reduce(logp[start + len(cand)][final_set]))
            assert got[i, c] == pytest.approx(want, abs=2e-5)
    # the cache was rewound: decoding afterwards is unchanged
    after = eng.decode(batch, max_new=4, stop=no_stop())
    assert [after[i].tokens for i in range(len(rows))] == [greedy_reference(full_forward, prompts[r], 4) for r in rows]


def test_bad_requests_fail_clearly(model):
    eng = Engine(model, mesh=one_device(), batch_size=2)
    with pytest.raises(ValueError, match="at least one token"):
        eng.plan([3, 0])
    with pytest.raises(ValueError, match="exceed batch_size"):
        eng.prefill([[4, 5]] * 3, [0, 1, 2], reserve=4)
    batch = eng.prefill([[4, 5]], [0], reserve=4)
    with pytest.raises(ValueError, match="max_new"):
        eng.decode(batch, max_new=0, stop=no_stop())
    with pytest.raises(ValueError, match="needs a tokenizer"):
        eng.decode(batch, max_new=2, stop="newline")


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_decode_step_attention_matches_the_reference_path(kv_heads):
    from jlm.model.llama import attention
    rng = np.random.default_rng(kv_heads)
    q = jnp.asarray(rng.normal(size=(3, 1, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(3, 11, kv_heads, 8)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((3, 1, 11)) < 0.6).at[:, :, 0].set(True)  # holes anywhere, >= 1 valid slot
    want, _ = attention(q, k, v, mask, impl="xla")
    got, _ = attention(q, k, v, mask, impl="cudnn")  # one query: the multiply-reduce path (no cuDNN call)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
