"""Reading llama-architecture GGUF files (llama.cpp's format) as Hugging Face tensors and config.

The `gguf` package parses the file (memory-mapped) and dequantizes. What this module adds:
- GGUF names -> HF names, numpy shape = ggml shape reversed (which is already HF's [out, in]);
- llama.cpp's converter permutes the rows of q and k for its interleaved RoPE; we undo it so the
  weights fit HF's half-split RoPE: `w.reshape(n, hd/2, 2, in).swapaxes(1, 2)` (n = heads for q,
  kv heads for k). Re-applying the forward permutation instead gives fluent nonsense;
- an HF-style config synthesized from the metadata.
Every tensor comes out as float32.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from jlm.checkpoint.errors import CheckpointError

# Types we dequantize (with gguf.quants). Each is tested against a block decoder written from
# llama.cpp's C code, so a regression in the package would show. Others (Q2_K, Q3_K, IQ*, ...) are refused.
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                             Q.Q4_K, Q.Q5_K, Q.Q6_K})

_NAMES = [  # GGUF tensor name -> HF name
    (re.compile(r"token_embd\.weight"), r"model.embed_tokens.weight"),
    (re.compile(r"output_norm\.weight"), r"model.norm.weight"),
    (re.compile(r"output\.weight"), r"lm_head.weight"),
    (re.compile(r"blk\.(\d+)\.attn_q\.(weight|bias)"), r"model.layers.\1.self_attn.q_proj.\2"),
    (re.compile(r"blk\.(\d+)\.attn_k\.(weight|bias)"), r"model.layers.\1.self_attn.k_proj.\2"),
    (re.compile(r"blk\.(\d+)\.attn_v\.(weight|bias)"), r"model.layers.\1.self_attn.v_proj.\2"),
    (re.compile(r"blk\.(\d+)\.attn_output\.(weight|bias)"), r"model.layers.\1.self_attn.o_proj.\2"),
    (re.compile(r"blk\.(\d+)\.ffn_gate\.weight"), r"model.layers.\1.mlp.gate_proj.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_up\.weight"), r"model.layers.\1.mlp.up_proj.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_down\.weight"), r"model.layers.\1.mlp.down_proj.weight"),
    (re.compile(r"blk\.(\d+)\.attn_norm\.weight"), r"model.layers.\1.input_layernorm.weight"),
    (re.compile(r"blk\.(\d+)\.ffn_norm\.weight"), r"model.layers.\1.post_attention_layernorm.weight"),
]


def hf_name(name: str) -> str:
    """The HF name of a GGUF tensor; an unknown name is returned unchanged (the loader reports it)."""
    for pattern, repl in _NAMES:
        if pattern.fullmatch(name):
            return pattern.sub(repl, name)
    return name


def open_reader(path: str | os.PathLike) -> gguf.GGUFReader:
    """A (cached) reader for the file. Parsing the metadata of a 50k-token vocabulary takes the
    gguf package seconds, and config, tensors and tokenizer each need it."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError as e:
        raise CheckpointError(f"{path}: {e.strerror}") from None
    return _open_reader(path, st.st_mtime_ns, st.st_size)


class _Reader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of its memory map. The reader slices its buffer once per
    metadata item (~250k times for a 50k-token vocabulary), and slicing an np.memmap runs Python
    code each time; a plain view of the same mapping parses ~2.5x faster and reads the same bytes."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value


@lru_cache(maxsize=2)
def _open_reader(path: Path, mtime_ns: int, size: int) -> gguf.GGUFReader:
    try:
        reader = _Reader(path)
    except (ValueError, IndexError, OSError, KeyError) as e:  # the reader's way of saying "bad file"
        raise CheckpointError(f"{path}: cannot read GGUF: {type(e).__name__}: {e}") from None
    if reader.byte_order != "I":
        raise CheckpointError(f"{path}: big-endian GGUF files are not supported")
    return reader


def field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value (scalar, string or list), or `default` when the key is absent."""
    f = reader.get_field(key)
    return default if f is None else f.contents()


def _architecture(reader: gguf.GGUFReader, path: Path) -> str:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    return arch


def read_config(path: str | os.PathLike, reader: gguf.GGUFReader | None = None) -> dict[str, Any]:
    """An HF-style (transformers 4.4x dialect) LLaMA config dict synthesized from GGUF metadata."""
    path = Path(path)
    reader = reader if reader is not None else open_reader(path)
    a = _architecture(reader, path)

    def need(key: str) -> Any:
        value = field(reader, f"{a}.{key}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {a}.{key}")
        return value

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    kv_heads = int(field(reader, f"{a}.attention.head_count_kv", heads))
    head_dim = int(field(reader, f"{a}.attention.key_length", hidden // heads))
    rope_dim = field(reader, f"{a}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise CheckpointError(f"{path}: partial rotary embeddings ({a}.rope.dimension_count={rope_dim}, "
                              f"head_dim={head_dim}) are not supported")
    names = {t.name for t in reader.tensors}
    vocab = field(reader, f"{a}.vocab_size")
    if vocab is None:
        tokens = reader.get_field("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else next(
            int(t.shape[-1]) for t in reader.tensors if t.name == "token_embd.weight")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(field(reader, f"{a}.rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, a, path, names),
        "max_position_embeddings": int(need("context_length")),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": False,
        "bos_token_id": _opt_int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": _opt_int(field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": _opt_int(field(reader, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",  # what iter_tensors yields
    }


def _f32(v: Any) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(v)))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _rope_scaling(reader: gguf.GGUFReader, a: str, path: Path, names: set[str]) -> dict | None:
    if "rope_freqs.weight" in names:  # llama3-style per-frequency factors
        raise CheckpointError(f"{path}: RoPE frequency factors (rope_freqs.weight, llama3 scaling) "
                              f"are not supported")
    kind = field(reader, f"{a}.rope.scaling.type")
    factor = field(reader, f"{a}.rope.scaling.factor")
    if kind is None and field(reader, f"{a}.rope.scale_linear") is not None:  # older files
        kind, factor = "linear", field(reader, f"{a}.rope.scale_linear")
    if kind in (None, "none") or (kind == "linear" and float(factor or 1.0) == 1.0):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "type": "linear", "factor": _f32(factor)}
    raise CheckpointError(f"{path}: RoPE scaling type {kind!r} is not supported (only linear)")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved -> half-split RoPE layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array in HF layout) for every tensor, dequantized one at a time."""
    path = Path(path)
    reader = open_reader(path)
    cfg = read_config(path, reader)
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    for t in reader.tensors:
        if t.tensor_type not in SUPPORTED_TYPES:
            raise CheckpointError(f"{path}: tensor {t.name!r} has GGML type {t.tensor_type.name}, which jlm "
                                  f"cannot dequantize (supported: "
                                  f"{', '.join(sorted(q.name for q in SUPPORTED_TYPES))})")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except (ValueError, NotImplementedError) as e:
            raise CheckpointError(f"{path}: cannot dequantize tensor {t.name!r} "
                                  f"({t.tensor_type.name}, shape {shape}): {e}") from None
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else None
        if kind in heads:
            if shape[0] % (2 * heads[kind]):
                raise CheckpointError(f"{path}: tensor {t.name!r} has {shape[0]} rows, not a multiple of "
                                      f"2 x {heads[kind]} heads")
            w = _unpermute(w, heads[kind])
        yield hf_name(t.name), w


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    reader = open_reader(path)
    _architecture(reader, Path(path))
    return {hf_name(t.name): tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
