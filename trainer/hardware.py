"""The accelerators this project plans for, measures and compiles for: one table, and one spelling of a machine.

A machine is written the way `--target` and `trainer.plan --hardware` both take it: a Cloud TPU slice as gcloud names
it (`v4-32`, `v5litepod-16` or `v5e-16`, `v5p-128`, `v6e-8`) or NVIDIA GPUs in one box as COUNTxMODEL (`2xl40s`,
`2xrtx-pro-6000`, `8xh100`). `trainer.plan` also takes a bare chip (`v5p`, `h100`) for chip-hour budgets.

Peaks are dense bf16 matmul FLOP/s per chip. NVIDIA's datasheets headline the 2:4-sparse figure, twice the dense one;
the table holds the dense one (what a transformer's matmuls can reach), with the sparse figure named in the source.
Memory is what the device reports to the framework (GPUs: CUDA's figure, a little under the marketed size). The
launcher (`launch/tpu_catalog.py`, runtimes and zones), the MFU of the step lines (`trainer.model.flops`), the fit
check (`trainer.target`) and the planner (`trainer.run.budget`) read their chip facts from here and hold none of their
own.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from trainer.errors import ConfigError

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Chip:
    """One accelerator chip: what planning, MFU and the fit check need to know about it."""

    name: str  # the spelling in machine names: v4, v5e, l40s, rtx-pro-6000, h100
    family: str  # "tpu" or "gpu"
    device: str  # the name the device reports (jax's device_kind for TPUs, the driver's name for GPUs)
    peak_bf16_tflops: float  # dense (no structured sparsity), per chip
    memory_bytes: int  # per chip, as the device reports it
    interconnect: str  # between chips of one machine or slice
    source: str
    aliases: tuple[str, ...] = ()  # other spellings of `name`
    device_kinds: tuple[str, ...] = ()  # lower-case fragments of jax's device_kind that name this chip


@dataclass(frozen=True)
class TpuGeneration:
    """How gcloud sizes the slices of one TPU generation, and what libtpu's compiler calls its chips."""

    prefix: str  # the accelerator-type prefix gcloud takes: v4, v5litepod, v5p, v6e
    sizes: tuple[int, ...]  # valid slice sizes
    cores_per_chip: int  # 2: sizes count TensorCores (v4, v5p, driven as one "megacore" device); 1: sizes count chips
    chips_per_host: int  # chips per TPU VM worker of a multi-host slice
    single_host_chips: int  # the largest slice served by one worker
    torus_dims: int  # 3 (v4, v5p) or 2: the rank of the chip grid
    libtpu_name: str  # libtpu's topology prefix
    compiler_hbm_bytes: int  # HBM libtpu's compiler may allocate per chip (what it reports when a program is too big)


_V5P_SIZES = (8, 16, 32, 64, *range(128, 12288 + 1, 128))
_GOOGLE = "cloud.google.com/tpu/docs/{} (system architecture: peak bf16 compute and HBM per chip)"
_LIBTPU_HBM = "; usable HBM as libtpu 0.0.42's compiler reports it ('exceeds available HBM (30.75G)')"

CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        Chip(
            "v4",
            "tpu",
            "TPU v4",
            275.0,
            32 * GiB,
            "ICI, 3D torus (twisted at 64+ chips)",
            _GOOGLE.format("v4"),
            device_kinds=("tpu v4",),
        ),
        Chip(
            "v5e",
            "tpu",
            "TPU v5 lite",
            197.0,
            16 * GiB,
            "ICI, 2D torus",
            _GOOGLE.format("v5e"),
            aliases=("v5litepod", "v5lite"),
            device_kinds=("tpu v5 lite", "tpu v5e"),
        ),
        # v5p: Google lists 95 GB of HBM2e; libtpu's compiler may use 95.74 GiB of it, so the chip holds 96 GiB.
        Chip(
            "v5p",
            "tpu",
            "TPU v5",
            459.0,
            96 * GiB,
            "ICI, 3D torus",
            _GOOGLE.format("v5p"),
            aliases=("v5",),
            device_kinds=("tpu v5p", "tpu v5"),
        ),
        Chip(
            "v6e",
            "tpu",
            "TPU v6 lite",
            918.0,
            32 * GiB,
            "ICI, 2D torus",
            _GOOGLE.format("v6e"),
            aliases=("v6",),
            device_kinds=("tpu v6 lite", "tpu v6e"),
        ),
        # KodaLite's GPUs. Datasheet: BF16 tensor 362.05 TFLOPS dense (733 with sparsity), 48 GB GDDR6 with ECC, PCIe
        # Gen4 x16 (64 GB/s both ways), no NVLink. Memory: `nvidia-smi --query-gpu=memory.total` with ECC on.
        Chip(
            "l40s",
            "gpu",
            "NVIDIA L40S",
            362.05,
            46068 * MiB,
            "PCIe Gen4 x16, no NVLink",
            "NVIDIA L40S datasheet (362.05 dense / 733 sparse bf16 TFLOPS); memory as nvidia-smi reports it, ECC on",
            device_kinds=("l40s",),
        ),
        # auto-g-nano's GPUs (the 600 W Workstation Edition): 188 SMs × 1,024 dense bf16 FLOP per clock × 2.617 GHz.
        Chip(
            "rtx-pro-6000",
            "gpu",
            "NVIDIA RTX PRO 6000 Blackwell",
            503.8,
            96 * 1024 * MiB,
            "PCIe Gen5 x16, no NVLink (auto-g-nano ran NCCL_P2P_DISABLE=1)",
            "NVIDIA RTX Blackwell GPU architecture whitepaper: FP16/BF16 tensor with FP32 accumulate 503.8 dense / "
            "1,007.6 sparse TFLOPS (4,000 sparse FP4 TOPS headline); memory: XLA's rtx6000pro device description",
            aliases=("rtx6000pro", "rtx-pro-6000-blackwell", "rtxpro6000"),
            device_kinds=("rtx pro 6000",),
        ),
        Chip(
            "h100",
            "gpu",
            "NVIDIA H100 80GB HBM3",
            989.0,
            84942979072,
            "NVLink 4, 900 GB/s per GPU",
            "NVIDIA H100 SXM datasheet (989 dense / 1,979 sparse bf16 TFLOPS); memory: XLA's h100_sxm description",
            aliases=("h100-sxm",),
            device_kinds=("h100",),
        ),
        Chip(
            "h200",
            "gpu",
            "NVIDIA H200",
            989.0,
            141 * 10**9,
            "NVLink 4, 900 GB/s per GPU",
            "NVIDIA H200 datasheet (989 dense / 1,979 sparse bf16 TFLOPS, 141 GB HBM3e)",
            device_kinds=("h200",),
        ),
        Chip(
            "a100",
            "gpu",
            "NVIDIA A100-SXM4-80GB",
            312.0,
            85100068864,
            "NVLink 3, 600 GB/s per GPU",
            "NVIDIA A100 datasheet (312 dense / 624 sparse bf16 TFLOPS); memory: XLA's a100_sxm_80 description",
            aliases=("a100-80gb",),
            device_kinds=("a100",),
        ),
    )
}

TPU_GENERATIONS: dict[str, TpuGeneration] = {
    "v4": TpuGeneration("v4", tuple(2**k for k in range(3, 13)), 2, 4, 4, 3, "v4", round(30.75 * GiB)),
    "v5e": TpuGeneration("v5litepod", (1, 4, 8, 16, 32, 64, 128, 256), 1, 4, 8, 2, "v5e", round(15.75 * GiB)),
    "v5p": TpuGeneration("v5p", _V5P_SIZES, 2, 4, 4, 3, "v5", round(95.74 * GiB)),
    "v6e": TpuGeneration("v6e", (1, 4, 8, 16, 32, 64, 128, 256), 1, 4, 8, 2, "v6e", round(31.25 * GiB)),
}
TPU_SOURCE = "slice sizes: gcloud's accelerator types (v4/v5p count TensorCores, v5e/v6e chips)" + _LIBTPU_HBM
_PREFIX_TO_GEN = {g.prefix: name for name, g in TPU_GENERATIONS.items()}
_TPU_SPELLINGS = {**{a: CHIPS[n].name for n in TPU_GENERATIONS for a in CHIPS[n].aliases}, **_PREFIX_TO_GEN}
_GPU_NAME = re.compile(r"^(\d+)x([a-z0-9-]+)$")


@dataclass(frozen=True)
class TpuSlice:
    """A validated Cloud TPU slice type, e.g. TpuSlice('v4-32', 'v4', 32)."""

    name: str  # the exact string the TPU API takes
    generation: str  # v4, v5e, v5p, v6e
    size: int

    @property
    def chips(self) -> int:
        """Chips of the slice (v4/v5p sizes count TensorCores, two per chip)."""
        return self.size // TPU_GENERATIONS[self.generation].cores_per_chip

    @property
    def hosts(self) -> int:
        """TPU VM workers of the slice: what `--worker=all` reaches."""
        g = TPU_GENERATIONS[self.generation]
        return 1 if self.chips <= g.single_host_chips else self.chips // g.chips_per_host


@dataclass(frozen=True)
class Machine:
    """What a run is planned on: a TPU slice, GPUs in one box, or a bare chip kind (count None)."""

    name: str  # the canonical spelling: v4-32, v5litepod-16, 2xl40s, v5p, h100
    chip: Chip
    count: int | None  # chips; None for a bare chip kind
    tpu_slice: TpuSlice | None = None


def is_tpu_name(text: str) -> bool:
    """Whether a machine name is a TPU (they start with their generation: `v4-32`, `v5litepod-8`); anything else is
    read as GPUs."""
    return re.match(r"v\d", text.strip().lower()) is not None


def _valid_tpu_summary() -> str:
    return ", ".join(f"{g.prefix}-{g.sizes[0]}..{g.sizes[-1]}" for g in TPU_GENERATIONS.values())


def _nearest_tpu(given: str) -> str:
    """Nearest valid slice: same generation and closest size if the name parses, else by spelling."""
    prefix, _, num = given.lower().rpartition("-")
    gen = _PREFIX_TO_GEN.get(_tpu_prefix(prefix))
    if gen and num.isdigit() and int(num) > 0:
        g = TPU_GENERATIONS[gen]
        best = min(g.sizes, key=lambda s: (abs(math.log2(s) - math.log2(int(num))), -s))
        return f"{g.prefix}-{best}"
    names = [f"{g.prefix}-{n}" for g in TPU_GENERATIONS.values() for n in g.sizes]
    close = difflib.get_close_matches(given.lower(), names, n=1, cutoff=0.0)
    return close[0] if close else "v4-8"


def _tpu_prefix(word: str) -> str:
    """gcloud's prefix for any spelling of a generation (v5e → v5litepod, v5 → v5p)."""
    gen = _TPU_SPELLINGS.get(word, word)
    return TPU_GENERATIONS[gen].prefix if gen in TPU_GENERATIONS else word


def parse_tpu_slice(given: str) -> TpuSlice:
    """A TPU type (`v4-32`, `v5e-8` alias of `v5litepod-8`) → TpuSlice; a bad one is a ConfigError naming the nearest
    valid type, so a typo reaches neither the compiler nor the TPU API."""
    prefix, _, num = given.strip().lower().rpartition("-")
    prefix = _tpu_prefix(prefix)
    gen = _PREFIX_TO_GEN.get(prefix)
    if gen and num.isdigit() and int(num) in TPU_GENERATIONS[gen].sizes:
        return TpuSlice(f"{prefix}-{int(num)}", gen, int(num))
    raise ConfigError(
        f"unknown accelerator {given!r}; did you mean {_nearest_tpu(given)!r}? (valid: {_valid_tpu_summary()})"
    )


def gpu_chip(model: str) -> Chip | None:
    """The GPU a model name (or alias) spells, else None."""
    for chip in CHIPS.values():
        if chip.family == "gpu" and model in (chip.name, *chip.aliases):
            return chip
    return None


def gpu_names() -> list[str]:
    """The GPU models machine names may use."""
    return [c.name for c in CHIPS.values() if c.family == "gpu"]


def parse_gpus(given: str, option: str = "--target", models: tuple[str, ...] | None = None) -> tuple[int, Chip]:
    """COUNTxMODEL (`2xl40s`) → (count, chip), the model one of `models` (default: every GPU of the table); anything
    else is a ConfigError naming the spelling."""
    name = given.strip().lower()
    known = list(models) if models is not None else gpu_names()
    found = _GPU_NAME.match(name)
    if found is None:
        raise ConfigError(
            f"unknown target {given!r}: give a TPU type (v4-32, v5e-16, ...) or GPUs as COUNTxMODEL, "
            f"e.g. 2xl40s (models: {', '.join(known)})"
        )
    count, model = int(found.group(1)), found.group(2)
    chip = gpu_chip(model)
    if chip is None or chip.name not in known:
        near = difflib.get_close_matches(model, known, n=1)
        hint = f"did you mean '{count}x{near[0]}'?" if near else f"known: {', '.join(known)}"
        raise ConfigError(f"unknown GPU model {model!r} in {option} {given}; {hint}")
    if count < 1:
        raise ConfigError(f"{option} {given}: at least one GPU, e.g. 1x{model}")
    return count, chip


def parse_machine(given: str, bare: bool = False, option: str = "--target") -> Machine:
    """A machine in the one spelling `--target` and `--hardware` share (`v4-32`, `2xl40s`); with `bare`, also a chip
    kind without a count (`v5p`, `h100`). The old `h100-8` spelling is refused with the new one named."""
    name = given.strip().lower()
    if bare:
        tpu = _TPU_SPELLINGS.get(name, name)
        if tpu in TPU_GENERATIONS:
            return Machine(tpu, CHIPS[tpu], None)
        if (chip := gpu_chip(name)) is not None:
            return Machine(chip.name, chip, None)
    if is_tpu_name(name):
        tpu_slice = parse_tpu_slice(name)
        return Machine(tpu_slice.name, CHIPS[tpu_slice.generation], tpu_slice.chips, tpu_slice)
    old = re.fullmatch(r"([a-z][a-z0-9-]*?)-(\d+)", name)
    if old and (old_chip := gpu_chip(old.group(1))) is not None:
        raise ConfigError(
            f"{given!r}: GPUs are spelled COUNTxMODEL, as --target takes them: {int(old.group(2))}x{old_chip.name}"
        )
    count, chip = parse_gpus(name, option)
    return Machine(f"{count}x{chip.name}", chip, count)


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip jax's `device_kind` string names ('TPU v4', 'NVIDIA L40S', ...), else None (a CPU, an unknown GPU)."""
    kind = device_kind.lower()
    fragments = sorted(((f, c) for c in CHIPS.values() for f in c.device_kinds), key=lambda fc: -len(fc[0]))
    return next((c for f, c in fragments if f in kind), None)
