"""TPU slices named as gcloud names them (`v4-32`, `v5litepod-16` / `v5e-16`, `v5p-128`, `v6e-8`) → the topology the
TPU compiler builds devices for, without a TPU.

Slice sizes, generations and the HBM the compiler may use per chip come from the hardware table
(`trainer/hardware.py`), which the launcher validates `--accelerator` against too, so `--target` accepts exactly what
`launch/tpu_vm.py` does. libtpu reports no capacity for devices that are not attached, so the table holds what its
compiler reports when a program is too big ("exceeds available HBM (30.75G)"), checked by tests/plan/test_tpu_fit.py.
The chip layout per slice (`v4:2x2x4`) is derived here.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from trainer import hardware
from trainer.errors import ConfigError

TPU_EXTRA_HINT = 'compiling for a TPU slice needs libtpu: pip install -e ".[tpu]"'


@dataclass(frozen=True)
class Target:
    """One TPU slice type (times `slices` for multi-slice) and the topology its train step is compiled for."""

    name: str  # as gcloud writes it, e.g. "v4-32", "v5litepod-16"
    generation: str  # v4, v5e, v5p, v6e
    chips_per_slice: int
    slices: int
    topology: str  # libtpu's name for the chip grid of one slice, e.g. "v4:2x2x4"
    chip_config: str  # "megacore" or "default"
    hbm_bytes: int  # per chip, what the compiler may allocate
    compiler: ClassVar[str] = "TPU compiler"
    unit: ClassVar[str] = "chip"

    @property
    def chips(self) -> int:
        """Chips of all slices together: the devices of the mesh."""
        return self.chips_per_slice * self.slices

    def describe(self) -> str:
        """e.g. 'v4-32 (16 chips, topology v4:2x2x4)' or '2 × v5litepod-16 (32 chips, ...)'."""
        many = f"{self.slices} × " if self.slices > 1 else ""
        return f"{many}{self.name} ({self.chips} chips, topology {self.topology})"


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid of a slice (its topology), e.g. 4 → 2x2x1, 16 → 2x2x4 or 4x4, 2048 → 8x16x16.

    From 2x2x1 (v4/v5p: a host's 4 chips) or 1x1, doubling the smallest axis (the last of equals) gives Google's
    grids for every power of two; an odd factor (v5p-384: 192 chips) multiplies the last axis (4x4x12).
    """
    odd = chips
    while odd % 2 == 0:
        odd //= 2
    shape = [2, 2, 1] if dims == 3 and chips >= 4 else [1] * dims
    while math.prod(shape) < chips // odd:
        smallest = min(shape)
        shape[max(j for j, s in enumerate(shape) if s == smallest)] *= 2
    shape[-1] *= odd
    return tuple(shape)


def parse_target(name: str, slices: int = 1) -> Target:
    """Validate a TPU type (and slice count) into a Target; an unknown name is one line naming the nearest valid one."""
    if slices < 1:
        raise ConfigError(f"--slices must be at least 1, got {slices}")
    tpu = hardware.parse_tpu_slice(name)
    g = hardware.TPU_GENERATIONS[tpu.generation]
    grid = chip_grid(tpu.chips, g.torus_dims)
    # v4 and v5p chips are two TensorCores driven as one "megacore" device; v5e and v6e chips have one core
    return Target(
        name=tpu.name,
        generation=tpu.generation,
        chips_per_slice=tpu.chips,
        slices=slices,
        topology=f"{g.libtpu_name}:{'x'.join(map(str, grid))}",
        chip_config="megacore" if g.cores_per_chip == 2 else "default",
        hbm_bytes=g.compiler_hbm_bytes,
    )


def require_libtpu() -> None:
    """One line naming the extra to install when the TPU compiler (libtpu) is missing."""
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(TPU_EXTRA_HINT)


def topology_devices(target: Target) -> list[Any]:
    """The target's devices as the TPU compiler sees them (not attached: usable for compiling only, never executing).

    libtpu normally locks /tmp/libtpu_lockfile so that one process owns the local TPU chips; compiling for chips
    that are not here owns nothing, so the lock is waived and several compiles (or a CPU run) can share the machine.
    """
    require_libtpu()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # Off a TPU VM libtpu warns that it can't find these (harmless); what they say does not change the compile.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.name)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies

    bounds = (1, 1, 1) if target.chips_per_slice == 1 else (2, 2, 1)
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=target.topology,
        chip_config_name=target.chip_config,
        chips_per_host_bounds=bounds,
        num_slices=target.slices,
    )
    return list(topology.devices)
