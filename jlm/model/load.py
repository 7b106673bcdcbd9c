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

import os
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from flax import nnx

from jlm.checkpoint import FLOAT_DTYPES, iter_tensors, read_config, write_hf_checkpoint
from jlm.checkpoint.paths import ALIASES, DEFAULT_MODEL, base_checkpoint
from jlm.checkpoint.peft import AdapterConfig, iter_adapter_tensors, read_adapter_config, tensor_names, weights_file
from jlm.checkpoint.peft import write_adapter
from jlm.model.config import LlamaConfig
from jlm.model.hf_layout import HF_PROJ, WeightError, check_complete, check_tensor, hf_name, hf_shapes, to_hf, to_model
from jlm.model.llama import Llama, LoRAParam, initial_value
from jlm.model.options import ModelOptions
from jlm.model.sharding import named_sharding
from jlm.model.spec import PROJ_EINSUM, lora_specs
from jlm.tokenizer import export_tokenizer

__all__ = ["DEFAULT_MODEL", "WeightError", "abstract_model", "load_model", "hf_tensors", "save_adapter",
           "save_pretrained"]


# ------------------------------------------------------------------------------------- loading
def abstract_model(cfg: LlamaConfig, options: ModelOptions | None = None) -> Llama:
    """The model's structure with shapes and dtypes only: no memory is allocated."""
    return nnx.eval_shape(lambda: Llama(cfg, options, rngs=nnx.Rngs(0)))


def _read_adapter(adapter: Path, cfg: LlamaConfig, base: Path) -> tuple[float, dict[str, list[np.ndarray]]]:
    """(scale, {HF weight name: [A [r, in], B [out, r]] in fp32}) of a PEFT LoRA adapter, checked
    against the config of the base model it is loaded on."""
    acfg = read_adapter_config(adapter)
    f = weights_file(adapter)
    shapes = hf_shapes(cfg)
    expected: dict[str, tuple[str, int, tuple[int, int]]] = {}  # tensor -> (weight, 0: A / 1: B, shape)
    for i in range(cfg.num_layers):
        for t in acfg.targets:
            weight = hf_name(("layers", i, HF_PROJ[t]))
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


def load_model(path: str | os.PathLike = DEFAULT_MODEL, options: ModelOptions | None = None, *,
               base: str | os.PathLike | None = None, mesh: jax.sharding.Mesh | None = None, seed: int = 0,
               **overrides) -> tuple[Llama, LlamaConfig]:
    """Load a LLaMA-architecture checkpoint: an HF directory (safetensors or PyTorch .bin shards),
    a `.safetensors` file, a `.gguf` file, `smollm2` (the default small model), or a Hugging Face
    PEFT LoRA adapter directory on one of those (see `base_checkpoint`; `base` overrides the base
    model its adapter_config.json names).

    options: how the model runs (ModelOptions: dtype, param_dtype, attn_impl, remat, scan_layers,
    lora); `overrides` replace single fields of it, e.g. `load_model(path, dtype=jnp.bfloat16)`.
    With `mesh`, every weight is placed straight into its sharding (see sharding.py).
    A PEFT adapter is merged into the base weights as they load (in fp32, before the cast to the
    storage dtype). With `lora`, adapters are added (B = 0, so the model starts equal to the
    checkpoint; A seeded by `seed`).
    """
    options = (ModelOptions() if options is None else options).replace(**overrides)
    lora, param_dtype = options.lora, options.storage_dtype
    path, adapter = base_checkpoint(path, base)
    cfg = LlamaConfig.from_hf(read_config(path), source=str(path))
    scale, factors = _read_adapter(adapter, cfg, path) if adapter is not None else (0.0, {})
    model = abstract_model(cfg, options)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))

    def place(var, value):
        sharding = (named_sharding(mesh, var.get_metadata()["axes"], value.shape) if mesh is not None
                    else jax.local_devices()[0])  # several processes: jax.devices()[0] may be another's
        return var.replace(jax.device_put(value, sharding))

    expected = hf_shapes(cfg)
    seen: set[str] = set()
    for name, w in iter_tensors(path):
        if not check_tensor(path, cfg, expected, name, w.shape):
            continue
        if name in factors:  # PEFT: W + (alpha / r) B A, in fp32
            a, b = factors.pop(name)
            w = np.asarray(w, np.float32) + np.float32(scale) * (b @ a)
        key, value = to_model(name, w, cfg)
        flat[key] = place(flat[key], np.asarray(value).astype(param_dtype))
        seen.add(name)
        del w, value
    check_complete(path, expected, seen)

    # adapters are not in the checkpoint: initialised per their spec (A random, B zero)
    specs = lora_specs(cfg, lora) if lora is not None else {}
    key = jax.random.key(seed)
    for k, var in flat.items():
        if isinstance(var, LoRAParam):
            key, sub = jax.random.split(key)
            flat[k] = place(var, np.asarray(initial_value(specs[k[-1]], sub)))
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
        name, w = to_hf(key, w, model.cfg)
        yield name, (w if dtype is None else w.astype(dtype))


def save_pretrained(model: Llama, out_dir: str | os.PathLike, *, dtype: str = "bfloat16",
                    tokenizer_src: str | os.PathLike | None = None) -> Path:
    """Export to a Hugging Face directory (safetensors + config.json [+ tokenizer])."""
    write_hf_checkpoint(out_dir, hf_tensors(model, FLOAT_DTYPES[dtype]), model.cfg.to_hf(dtype))
    if tokenizer_src is not None:
        export_tokenizer(base_checkpoint(tokenizer_src)[0], out_dir)
    return Path(out_dir)


def save_adapter(model: Llama, out_dir: str | os.PathLike, *, base: str | os.PathLike | None,
                 dtype: str = "float32") -> Path:
    """Write the model's LoRA adapters as a Hugging Face PEFT adapter directory (adapter_config.json,
    adapter_model.safetensors) that `load_model` and peft's `PeftModel.from_pretrained` read.

    base: the base model as `load_model` takes it; an alias (`smollm2`) is written as it is, a path
    made absolute. None writes no base: loading then needs `load_model(..., base=...)`."""
    np_dtype = FLOAT_DTYPES[dtype]
    targets = [p for p in PROJ_EINSUM if model.layers and hasattr(model.layers[0], f"{p}_lora_a")]
    if not targets:
        raise ValueError("the model has no LoRA adapters to save")
    rank = getattr(model.layers[0], f"{targets[0]}_lora_a").get_value().shape[-1]
    if base is not None and str(base).lower() not in ALIASES:
        base = os.path.abspath(base)

    def tensors():
        for i, block in enumerate(model.layers):
            for p in targets:
                a = np.asarray(jax.device_get(getattr(block, f"{p}_lora_a").get_value()), np.float32)
                b = np.asarray(jax.device_get(getattr(block, f"{p}_lora_b").get_value()), np.float32)
                # model: A [in..., r], B [r, out...]; PEFT: A [r, in], B [out, r], with the input and
                # output dims flattened as in the HF weight (hf_layout.to_hf)
                name_a, name_b = tensor_names(hf_name(("layers", i, p)))
                yield name_a, a.reshape(-1, rank).T.astype(np_dtype)
                yield name_b, b.reshape(rank, -1).T.astype(np_dtype)

    config = AdapterConfig(rank=rank, alpha=model.layers[0].lora_scale * rank,
                           targets=tuple(t for t, p in HF_PROJ.items() if p in targets),
                           base=None if base is None else str(base))
    write_adapter(out_dir, tensors(), config)
    return Path(out_dir)
