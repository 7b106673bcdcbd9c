"""Logical axis names -> device mesh, by one rules table.

Every weight carries logical axis names in its `axes` metadata (see llama.py) and key activations
are constrained by name. FSDP, tensor and data parallelism differ only in the table below and the
mesh shape, never in model code.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    # weights
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora": None,
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into data*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules=None, strict: bool | None = None) -> P:
    """PartitionSpec for logical `axes`. A mesh axis that does not divide the dimension (e.g. 9
    heads over tensor=2) or is already used by an earlier dimension is dropped: that dimension is
    replicated over it rather than failing. `strict`: None (default) is silent (activations, whose
    batch may legitimately be smaller than the mesh); False warns about an axis dropped for not
    dividing (weights: the layout asked for is not the one given); True raises."""
    rules = RULES if rules is None else rules
    sizes = dict(mesh.shape) if mesh is not None else {}
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = rules.get(name) if name is not None else None
        if target is None:
            spec.append(None)
            continue
        keep, prod = [], 1
        for ax in (target,) if isinstance(target, str) else target:
            size = sizes.get(ax, 1)
            if mesh is not None and (ax in used or size == 1):
                continue
            if mesh is not None and shape is not None and shape[i] % (prod * size):
                if strict is not None:
                    msg = (f"logical axis {name!r} (size {shape[i]}) does not divide over mesh axis {ax!r} "
                           f"(x{size}): that dimension of a {tuple(shape)} array is replicated over {ax!r}")
                    if strict:
                        raise ValueError(msg)
                    warnings.warn(msg, stacklevel=3)
                continue
            keep.append(ax)
            prod *= size
        used.update(keep)
        spec.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*spec)


def named_sharding(mesh: Mesh, axes, shape, strict: bool = False) -> NamedSharding:
    """A weight's sharding (see `logical_to_spec`: an axis that does not divide warns, or raises)."""
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, strict=strict))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))
