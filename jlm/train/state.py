"""Train state: the mesh, the model split into trainable / frozen weight dicts, the optimizer state,
and their shardings, all derived from the weights' logical axes (jlm/model/sharding.py RULES).

Weights travel through jit and orbax as flat dicts {"layers.3.wq": array}: plain pytrees, one key
per weight, the same keys in params, gradients, optimizer moments and checkpoints. `ModelParts`
turns them back into a `Llama` inside the step (`nnx.merge`, trace time only).

Nothing is ever built replicated: random init is one `jax.jit` with `out_shardings`, loading goes
tensor by tensor into shards (jlm.model.load), the optimizer state is created by a jit whose
outputs are sharded like the parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jlm.checkpoint import read_config
from jlm.checkpoint.paths import resolve_model_path
from jlm.model.config import MODEL_SHAPES, LlamaConfig
from jlm.model.llama import Block, Llama, LoRA, LoRAParam
from jlm.model.options import ModelOptions
from jlm.model.load import abstract_model, load_model
from jlm.model.sharding import logical_to_spec, make_mesh, named_sharding
from jlm.train.config import TrainConfig, TrainConfigError

Array = jax.Array


@struct.dataclass
class TrainState:
    step: Array  # int32 [], optimizer updates done
    params: dict[str, Array]  # trainable weights: all of them, or only the LoRA adapters
    frozen: dict[str, Array]  # weights held fixed: the base model under LoRA, else empty
    opt_state: Any


# ------------------------------------------------------------------------------------- mesh
def mesh_from_config(cfg: TrainConfig, devices=None) -> Mesh:
    return make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor, devices=devices)


def batch_split(cfg: TrainConfig, mesh: Mesh) -> tuple[int, int]:
    """(micro_batch, accumulation steps) for the global batch on this mesh.

    The global batch is fixed by the config, so the update does not depend on the device count;
    only how it is cut into micro-batches does (default: one row per data shard)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.micro_batch if cfg.micro_batch is not None else shards
    if cfg.global_batch % micro:
        raise TrainConfigError(f"global_batch={cfg.global_batch} is not a multiple of micro_batch={micro}")
    if micro % shards:
        raise TrainConfigError(f"micro_batch={micro} does not split over data x fsdp = {shards} devices; "
                               f"use a multiple of {shards}")
    if micro % jax.process_count():
        raise TrainConfigError(f"micro_batch={micro} does not split over {jax.process_count()} hosts")
    return micro, cfg.global_batch // micro


# -------------------------------------------------------------------------------- precision
def dtypes(cfg: TrainConfig) -> tuple[Any, Any]:
    """(compute dtype, base-weight storage dtype). LoRA adapters are always fp32 (model code)."""
    if cfg.precision == "fp32":
        return jnp.float32, jnp.float32
    if cfg.precision == "bf16":
        return jnp.bfloat16, jnp.bfloat16
    # mixed: fp32 masters for trained weights; frozen base weights under LoRA are only ever read
    # in bf16, so store them in bf16 (half the memory, same results)
    return jnp.bfloat16, (jnp.bfloat16 if cfg.lora_rank else jnp.float32)


def resolve_attn_impl(cfg: TrainConfig) -> str:
    if cfg.attn_impl != "auto":
        return cfg.attn_impl
    return "cudnn" if jax.default_backend() == "gpu" else "xla"


def model_options(cfg: TrainConfig) -> ModelOptions:
    """How the model runs under this train config (the one place TrainConfig becomes ModelOptions)."""
    compute, storage = dtypes(cfg)
    lora = LoRA(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=tuple(cfg.lora_targets)) if cfg.lora_rank else None
    return ModelOptions(dtype=compute, param_dtype=storage, attn_impl=resolve_attn_impl(cfg), remat=cfg.remat,
                        scan_layers=cfg.scan_layers, lora=lora)


# ------------------------------------------------------------------------------- model parts
def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelParts:
    """The model's structure (graphdef) and abstract weights, split into trainable and frozen keys."""
    cfg: LlamaConfig
    graphdef: Any
    template: dict[str, nnx.Variable]  # key -> abstract Variable (shape, dtype, logical axes)
    paths: dict[str, tuple]  # key -> nnx state path
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]

    @classmethod
    def build(cls, model_cfg: LlamaConfig, train_cfg: TrainConfig) -> "ModelParts":
        options = model_options(train_cfg)
        lora = options.lora
        model = abstract_model(model_cfg, options)
        graphdef, state = nnx.split(model)
        template, paths = {}, {}
        for path, var in nnx.to_flat_state(state):
            if not isinstance(var, nnx.Param):
                raise TypeError(f"unexpected non-parameter state {path} ({type(var).__name__}) in the model")
            template[_key(path)], paths[_key(path)] = var, path
        if lora is None:
            trainable, frozen = tuple(template), ()
        else:
            trainable = tuple(k for k, v in template.items() if isinstance(v, LoRAParam))
            frozen = tuple(k for k, v in template.items() if not isinstance(v, LoRAParam))
        return cls(model_cfg, graphdef, template, paths, trainable, frozen)

    def merge(self, params: dict[str, Array], frozen: dict[str, Array]) -> Llama:
        """A Llama over these arrays (use inside jit: it only rebuilds Python objects)."""
        both = {**params, **frozen}
        flat = [(self.paths[k], self.template[k].replace(both[k])) for k in self.template]
        return nnx.merge(self.graphdef, nnx.from_flat_state(flat))

    def split_model(self, model: Llama) -> tuple[dict[str, Array], dict[str, Array]]:
        """(trainable, frozen) arrays of a concrete model with this structure."""
        _, state = nnx.split(model)
        arrays = {_key(p): v.get_value() for p, v in nnx.to_flat_state(state)}
        if set(arrays) != set(self.template):
            raise ValueError(f"model weights {sorted(set(arrays) ^ set(self.template))[:5]} do not match the config")
        return {k: arrays[k] for k in self.trainable}, {k: arrays[k] for k in self.frozen}

    def shape(self, key: str) -> jax.ShapeDtypeStruct:
        v = self.template[key].get_value()
        return jax.ShapeDtypeStruct(v.shape, v.dtype)

    def shardings(self, mesh: Mesh, keys) -> dict[str, NamedSharding]:
        return {k: named_sharding(mesh, self.template[k].get_metadata()["axes"], self.shape(k).shape)
                for k in keys}

    def abstract(self, keys) -> dict[str, jax.ShapeDtypeStruct]:
        return {k: self.shape(k) for k in keys}


# -------------------------------------------------------------------------------- the state
@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """Everything static about a run: mesh, model parts, optimizer, shardings."""
    cfg: TrainConfig
    mesh: Mesh
    parts: ModelParts
    optimizer: optax.GradientTransformation
    state_shardings: TrainState
    micro_batch: int
    accum: int

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state (an orbax restore target)."""
        params = self.parts.abstract(self.parts.trainable)
        frozen = self.parts.abstract(self.parts.frozen)
        opt = jax.eval_shape(self.optimizer.init, params)
        shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, frozen=frozen, opt_state=opt)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.state_shardings)

    def batch_sharding(self) -> NamedSharding:
        """Batches arrive as [accum, micro, T]: micro-batch rows split over (data, fsdp)."""
        spec = logical_to_spec((None, "act_batch", None), (self.accum, self.micro_batch, 1), self.mesh)
        return NamedSharding(self.mesh, spec)


def make_setup(cfg: TrainConfig, model_cfg: LlamaConfig, optimizer: optax.GradientTransformation,
               mesh: Mesh | None = None) -> Setup:
    mesh = mesh_from_config(cfg) if mesh is None else mesh
    parts = ModelParts.build(model_cfg, cfg)
    micro, accum = batch_split(cfg, mesh)
    param_sh = parts.shardings(mesh, parts.trainable)
    replicated = NamedSharding(mesh, P())
    opt_abs = jax.eval_shape(optimizer.init, parts.abstract(parts.trainable))
    # moments are laid out like their parameters; counters and other scalars are replicated
    opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, opt_abs, param_sh,
                                   transform_non_params=lambda _: replicated)
    state_sh = TrainState(step=replicated, params=param_sh, frozen=parts.shardings(mesh, parts.frozen),
                          opt_state=opt_sh)
    return Setup(cfg, mesh, parts, optimizer, state_sh, micro, accum)


def model_config(cfg: TrainConfig) -> LlamaConfig:
    """The architecture: from the checkpoint's config, or the named shape for random init."""
    if cfg.init == "random":
        if cfg.model_shape is None:
            raise TrainConfigError("init=random needs model_shape (one of " + ", ".join(MODEL_SHAPES) + ")")
        return MODEL_SHAPES[cfg.model_shape]
    if cfg.model is None:
        hint = f" ({cfg.model_shape}: its base model)" if cfg.model_shape else ""
        raise TrainConfigError(f"no base model: pass --model PATH{hint}, or --init random for a dry run")
    path = resolve_model_path(cfg.model)
    model_cfg = LlamaConfig.from_hf(read_config(path), source=str(path))
    return model_cfg


def random_weights(setup: Setup) -> tuple[dict[str, Array], dict[str, Array]]:
    """A seeded random init (the model's own initialisers), made straight into shards.

    One jit builds one block and is called once per layer (with that layer's key), another builds
    the embeddings, final norm and head: a single jit of the whole model would hold one inlined
    copy of the RNG per weight, which XLA:GPU compiles for minutes on a 1B model."""
    cfg, parts = setup.cfg, setup.parts
    options = model_options(cfg)
    shardings = {**setup.state_shardings.params, **setup.state_shardings.frozen}

    def flat(module) -> dict[str, Array]:
        _, state = nnx.split(module)
        return {_key(p): v.get_value() for p, v in nnx.to_flat_state(state)}

    def top(key):  # a zero-layer Llama: embed, final norm, lm_head
        return flat(Llama(parts.cfg.replace(num_layers=0), options, rngs=nnx.Rngs(params=key)))

    def block(key):
        return flat(Block(parts.cfg, options, rngs=nnx.Rngs(params=key)))

    names = list(jax.eval_shape(block, jax.random.key(0)))
    top_keys = [k for k in parts.template if not k.startswith("layers.")]
    root = jax.random.key(cfg.seed)
    with jax.set_mesh(setup.mesh):
        weights = jax.jit(top, out_shardings={k: shardings[k] for k in top_keys})(jax.random.fold_in(root, 0))
        make_block = jax.jit(block, out_shardings={n: shardings[f"layers.0.{n}"] for n in names})
        for i in range(parts.cfg.num_layers):
            weights.update({f"layers.{i}.{n}": w for n, w in make_block(jax.random.fold_in(root, i + 1)).items()})
    return {k: weights[k] for k in parts.trainable}, {k: weights[k] for k in parts.frozen}


def init_state(setup: Setup, params: dict[str, Array] | None = None,
               frozen: dict[str, Array] | None = None) -> TrainState:
    """A fresh state from given (sharded) weights, or from `random_weights`; the optimizer state
    is made by a jit whose outputs are sharded like the parameters."""
    sh = setup.state_shardings
    if params is None:
        params, frozen = random_weights(setup)
    with jax.set_mesh(setup.mesh):
        opt_state = jax.jit(setup.optimizer.init, in_shardings=(sh.params,), out_shardings=sh.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), sh.step)
    return TrainState(step=step, params=params, frozen=frozen or {}, opt_state=opt_state)


def load_weights(setup: Setup) -> tuple[dict[str, Array], dict[str, Array]]:
    """The base checkpoint (and fresh LoRA adapters) placed straight into their shards."""
    cfg = setup.cfg
    model, _ = load_model(cfg.model, model_options(cfg), mesh=setup.mesh, seed=cfg.seed)
    params, frozen = setup.parts.split_model(model)
    # load_model places each weight by the same rules; make sure nothing drifted
    want = {**setup.state_shardings.params, **setup.state_shardings.frozen}
    moved = {k: jax.device_put(v, want[k]) if v.sharding != want[k] else v for k, v in {**params, **frozen}.items()}
    return {k: moved[k] for k in params}, {k: moved[k] for k in frozen}


def count_params(parts: ModelParts, keys) -> int:
    return int(sum(np.prod(parts.shape(k).shape) for k in keys))
