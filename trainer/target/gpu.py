"""NVIDIA GPU machines named `COUNTxMODEL` (`2xl40s`, `2xrtx-pro-6000`, `8xh100`) → the devices XLA's GPU compiler
builds for, without a GPU ("deviceless" compilation).

The CUDA plugin creates a compile-only topology from a text `GpuTargetConfigProto`: the device description a real
GPU would report (compute capability, SM count, memory, caches). XLA keeps such files for a few GPUs inside its C++
library but exposes none to Python, so the table below holds each model's description, with its source; the name,
memory and peak of each GPU, and the COUNTxMODEL spelling, are the hardware table's (`trainer/hardware.py`). Compiling
needs the plugin and CUDA's `ptxas`, nothing else: no driver, no GPU (`pip install -e ".[gpu-compile]"`, ~580 MB:
`jax[cuda12-local]` and `nvidia-cuda-nvcc-cu12`); on jax 0.10 `model.attention=cudnn` also needs cuDNN, which
`.[gpu]` (the whole CUDA runtime, for training on GPUs) brings. The memory figure matters twice: XLA's scheduler
plans with it, and JAX on a real GPU lets its allocator use only `XLA_PYTHON_CLIENT_MEM_FRACTION` of it (0.75
unless set): that share is the capacity a job must fit in.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from trainer import hardware
from trainer.errors import ConfigError
from trainer.hardware import MiB

GPU_EXTRA_HINT = 'compiling for NVIDIA GPUs needs the CUDA plugin: pip install -e ".[gpu-compile]"'
PTXAS_HINT = (
    'compiling for NVIDIA GPUs needs CUDA\'s ptxas: pip install -e ".[gpu-compile]" (or put a CUDA 12 ptxas on PATH)'
)
CUDNN_HINT = (
    'model.attention=cudnn compiled for GPUs needs cuDNN: pip install -e ".[gpu]" '
    "(or check the fit with model.attention=dot_product)"
)
DEFAULT_MEM_FRACTION = 0.75  # JAX's default XLA_PYTHON_CLIENT_MEM_FRACTION


@dataclass(frozen=True)
class GpuModel:
    """What XLA's GPU compiler needs to know about one GPU model (the fields of its device description)."""

    device: str  # the name the driver reports
    compute_capability: tuple[int, int]
    sms: int  # streaming multiprocessors ("cores" to XLA)
    memory_bytes: int  # device memory as CUDA reports it (before JAX takes its fraction)
    memory_bandwidth: int  # bytes/s
    l2_bytes: int
    clock_ghz: float
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int
    threads_per_sm: int
    fp32_units_per_sm: int
    source: str

    def target_config(self, dnn_version: tuple[int, int, int]) -> str:
        """The device as a text GpuTargetConfigProto, the form the CUDA plugin's topology takes."""
        major, minor = self.compute_capability
        dnn_major, dnn_minor, dnn_patch = dnn_version
        dnn = f"{{ major: {dnn_major} minor: {dnn_minor} patch: {dnn_patch} }}"
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: {self.threads_per_sm}
  core_count: {self.sms}
  fpus_per_core: {self.fp32_units_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.memory_bandwidth}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {dnn}
device_description_str: "{self.device}"
"""


_XLA_SPECS = "XLA's device description (xla/backends/gpu/target_config/specs/{}.txtpb)"
# model → (compute capability, SMs, memory bandwidth B/s, L2 bytes, clock GHz, shared memory per SM, shared memory per
# block opt-in, threads per SM, FP32 units per SM, source).
_DESCRIPTIONS: dict[str, tuple[tuple[int, int], int, int, int, float, int, int, int, int, str]] = {
    # Ada Lovelace AD102: NVIDIA's L40S datasheet (142 SMs = 18,176 CUDA cores / 128, 864 GB/s, 96 MB L2, 2.52 GHz
    # boost), CUDA's table for compute capability 8.9 (100 KB shared memory and 1,536 threads per SM).
    "l40s": (
        (8, 9),
        142,
        864 * 10**9,
        96 * MiB,
        2.52,
        102400,
        101376,
        1536,
        128,
        "NVIDIA L40S datasheet; memory as nvidia-smi reports it (ECC on)",
    ),
    "rtx-pro-6000": (
        (12, 0),
        188,
        1792 * 10**9,
        128 * MiB,
        2.6,
        131072,
        101376,
        1536,
        128,
        _XLA_SPECS.format("rtx6000pro"),
    ),
    "h100": ((9, 0), 132, 3352320000000, 50 * MiB, 1.98, 233472, 232448, 2048, 128, _XLA_SPECS.format("h100_sxm")),
    "a100": ((8, 0), 108, 2039040000000, 40 * MiB, 1.41, 167936, 166912, 2048, 64, _XLA_SPECS.format("a100_sxm_80")),
}
GPUS: dict[str, GpuModel] = {
    name: GpuModel(
        hardware.CHIPS[name].device,
        cc,
        sms,
        hardware.CHIPS[name].memory_bytes,
        bandwidth,
        l2,
        clock,
        smem,
        smem_optin,
        threads,
        fp32,
        source,
    )
    for name, (cc, sms, bandwidth, l2, clock, smem, smem_optin, threads, fp32, source) in _DESCRIPTIONS.items()
}


def is_gpu_target(name: str) -> bool:
    """Whether `--target` names GPUs: TPU types start with their generation (`v4-32`, `v5litepod-8`), anything else
    is read as COUNTxMODEL."""
    return not hardware.is_tpu_name(name)


def memory_fraction() -> float:
    """The share of each GPU's memory JAX's allocator may use: XLA_PYTHON_CLIENT_MEM_FRACTION, else JAX's 0.75."""
    value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    if value is None:
        return DEFAULT_MEM_FRACTION
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise ConfigError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={value!r}: give a fraction in (0, 1], e.g. .9")
    return fraction


@dataclass(frozen=True)
class GpuTarget:
    """`chips` GPUs of one model in one machine (the devices of the mesh), and the share of their memory a JAX job
    may use."""

    name: str  # as given, e.g. "2xl40s"
    model: GpuModel
    chips: int
    fraction: float
    slices: ClassVar[int] = 1
    compiler: ClassVar[str] = "XLA GPU compiler (CUDA plugin)"
    unit: ClassVar[str] = "GPU"

    @property
    def topology(self) -> str:
        """The plugin's topology: partitions × hosts per partition × GPUs per host."""
        return f"1x1x{self.chips}"

    @property
    def hbm_bytes(self) -> int:
        """What JAX's allocator may hold per GPU: the GPU's memory times the fraction."""
        return int(self.model.memory_bytes * self.fraction)

    def describe(self) -> str:
        """e.g. '2 × NVIDIA L40S (45.0 GiB each, JAX may use 75%)'."""
        return (
            f"{self.chips} × {self.model.device} ({self.model.memory_bytes / 2**30:.1f} GiB each, JAX may use "
            f"{self.fraction:.0%}: XLA_PYTHON_CLIENT_MEM_FRACTION)"
        )


def parse_gpu_target(name: str, slices: int = 1) -> GpuTarget:
    """Validate COUNTxMODEL (the hardware table's spelling) into a GpuTarget; an unknown model is one line naming the
    nearest one the compiler has a description of."""
    count, chip = hardware.parse_gpus(name, models=tuple(GPUS))
    if slices != 1:
        raise ConfigError("--slices is for TPU slices; a GPU target is one machine (COUNTxMODEL)")
    return GpuTarget(name=f"{count}x{chip.name}", model=GPUS[chip.name], chips=count, fraction=memory_fraction())


def require_cuda_plugin() -> None:
    """One line naming the extra to install when the CUDA plugin (XLA's GPU compiler) is missing."""
    if importlib.util.find_spec("jax_plugins") is None or importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        raise ConfigError(GPU_EXTRA_HINT)


def missing_tool(error: BaseException) -> ConfigError | None:
    """The one-line error for a GPU compile that failed because a CUDA tool or library is not installed (XLA's own
    message lists every folder it searched), or None for any other failure."""
    text = str(error)
    if "ptxas" in text and ("Couldn't find" in text or "not found" in text.lower()):
        return ConfigError(PTXAS_HINT)
    if "cudnn" in text.lower() and "not found" in text.lower():
        return ConfigError(CUDNN_HINT)
    return None


def _dnn_version() -> tuple[int, int, int]:
    """The cuDNN of this install (the one a GPU machine with the same install would load)."""
    try:
        parts = [int(p) for p in importlib.metadata.version("nvidia-cudnn-cu12").split(".")[:3]]
    except (importlib.metadata.PackageNotFoundError, ValueError):
        parts = [9, 8, 0]
    major, minor, patch = (parts + [0, 0])[:3]
    return major, minor, patch


def gpu_devices(target: GpuTarget) -> list[Any]:
    """The target's GPUs as XLA's GPU compiler sees them (compile-only: nothing can run on them)."""
    require_cuda_plugin()
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="cuda", target_config=target.model.target_config(_dnn_version()), topology=target.topology
    )
    return list(topology.devices)
