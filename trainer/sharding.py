"""The device mesh (`data`, `fsdp`, `tensor`) and the shardings that logical axis names resolve to.

Only this module turns logical names into mesh placements, from the rules in `config.mesh.rules`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from trainer.config import Config, ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh: MeshConfig, num_devices: int) -> dict[str, int]:
    """Sizes of (data, fsdp, tensor) over all devices, filling a -1 axis; their product must be the device count."""
    dcn = {"data": mesh.dcn_data, "fsdp": mesh.dcn_fsdp, "tensor": 1}
    if any(v < 1 for v in dcn.values()):
        raise ConfigError("mesh.dcn_data and mesh.dcn_fsdp must be positive")
    slices = math.prod(dcn.values())
    if num_devices % slices:
        raise ConfigError(f"{num_devices} devices can't be split into mesh.dcn_data × mesh.dcn_fsdp = {slices} slices")
    per_slice = num_devices // slices
    ici = {name: getattr(mesh, name) for name in AXES}
    fixed = math.prod(v for v in ici.values() if v != -1)
    for name, size in ici.items():
        if size == -1:
            if per_slice % fixed:
                raise ConfigError(
                    f"mesh.{name}=-1 can't fill {per_slice} devices per slice: the other axes multiply to {fixed}, "
                    "which does not divide it"
                )
            ici[name] = per_slice // fixed
    if math.prod(ici.values()) != per_slice:
        sizes = " × ".join(f"{n}={ici[n]}" for n in AXES)
        raise ConfigError(
            f"mesh {sizes} uses {math.prod(ici.values())} devices per slice but {per_slice} are present; "
            "set one axis to -1 or change the sizes so their product is the device count"
        )
    return {name: ici[name] * dcn[name] for name in AXES}


def make_mesh(mesh: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` over all devices with Auto axis types; device order from jax's mesh utilities (ICI-friendly on TPU)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(mesh, len(devices))
    dcn_shape = (mesh.dcn_data, mesh.dcn_fsdp, 1)
    ici_shape = tuple(shape[n] // d for n, d in zip(AXES, dcn_shape))
    if math.prod(dcn_shape) > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, allow_split_physical_axes=True)
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
        except (AssertionError, NotImplementedError, ValueError):
            grid = np.array(devices).reshape(ici_shape)  # backends without a physical topology description
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


@contextlib.contextmanager
def activate(mesh: Mesh | AbstractMesh, config: Config) -> Iterator[None]:
    """Make `mesh` and the config's logical rules current, for tracing model code that names logical axes.

    An AbstractMesh (planning for devices that are not here, `--dry-run --devices N`) is enough for tracing.
    """
    current = jax.sharding.use_abstract_mesh(mesh) if isinstance(mesh, AbstractMesh) else jax.set_mesh(mesh)
    with current, nn.logical_axis_rules(config.mesh.logical_rules()):
        yield


def logical_shardings(abstract_boxed: Any, mesh: Mesh, config: Config) -> Any:
    """NamedShardings for a tree of (possibly) logically-partitioned values; unannotated leaves are replicated."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, config.mesh.logical_rules())


def batch_axes(config: Config) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over (from the 'batch' rule)."""
    return tuple(config.mesh.rules.get("batch") or ())


def batch_sharding(mesh: Mesh, config: Config) -> NamedSharding:
    """Sharding of [batch, length] arrays: batch over the 'batch' rule's axes, length whole."""
    axes = batch_axes(config)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None, None))


def check_batch_divisible(config: Config, mesh_shape: dict[str, int], process_count: int = 1) -> None:
    """The global batch (and each microbatch) must split evenly over the data-parallel devices and the hosts."""
    shards = math.prod(mesh_shape[a] for a in batch_axes(config))
    t = config.train
    micro = t.global_batch_size // t.microbatches
    if micro % shards:
        what = "train.global_batch_size" if t.microbatches == 1 else "train.global_batch_size / train.microbatches"
        raise ConfigError(
            f"{what} = {micro} is not divisible by the data-parallel size {shards} "
            f"({' × '.join(batch_axes(config))}); use a multiple of {shards}"
        )
    if t.global_batch_size % process_count:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by the {process_count} processes"
        )


def shard_shape(shape: Sequence[int], spec: PartitionSpec, mesh_shape: dict[str, int]) -> tuple[int, ...]:
    """The shape of one device's shard under `spec` (ceil for uneven splits) — no devices needed."""
    out = []
    for i, dim in enumerate(shape):
        entry = spec[i] if i < len(spec) else None
        names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        out.append(-(-dim // math.prod(mesh_shape[n] for n in names)))
    return tuple(out)
