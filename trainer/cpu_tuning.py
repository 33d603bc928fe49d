"""XLA:CPU settings for the CPU at hand, chosen at start-up from what was measured on each CPU family.

`apply()` runs before JAX starts its backend (XLA reads `XLA_FLAGS` once, when the backend starts) and adds the
XLA:CPU flags that measured faster, never one the user's `XLA_FLAGS` already sets; the flags only change how XLA
compiles for the CPU, so a run on a GPU or TPU is unaffected. `TRAINER_CPU_TUNING=0` turns it off. The figures behind
the choices are in docs/bench.md ("CPU defaults").
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass, field

# XLA:CPU: keep YNNPACK from fusing reductions (the attention softmax backward became one slow YNN fusion).
YNN_NO_REDUCE = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
OFF_SWITCH = "TRAINER_CPU_TUNING"


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the first processor (empty strings where it is unreadable)."""

    name: str = ""
    vendor: str = ""
    family: int = -1
    model: int = -1
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def family_name(self) -> str:
        """A short, human name of the micro-architecture family: zen4, zen5, intel-avx512, ..."""
        if self.vendor == "AuthenticAMD":
            return {23: "zen2", 25: "zen4" if "avx512f" in self.flags else "zen3", 26: "zen5"}.get(
                self.family, f"amd-family{self.family}"
            )
        if self.vendor == "GenuineIntel":
            if "amx_bf16" in self.flags:
                return "intel-amx"
            return "intel-avx512" if "avx512f" in self.flags else "intel-avx2"
        return platform.machine() or "unknown"


@dataclass(frozen=True)
class Tuning:
    """The settings chosen for one CPU: the XLA flags to add."""

    xla_flags: tuple[str, ...]


def detect(path: str = "/proc/cpuinfo") -> CpuInfo:
    """Read the first processor's model name, vendor, family, model and feature flags (Linux; elsewhere empty)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return CpuInfo(name=platform.processor())

    def number(key: str) -> int:
        try:
            return int(fields.get(key, ""))
        except ValueError:
            return -1

    return CpuInfo(
        name=fields.get("model name", ""),
        vendor=fields.get("vendor_id", ""),
        family=number("cpu family"),
        model=number("model"),
        flags=frozenset(fields.get("flags", "").split()),
    )


def jax_version() -> tuple[int, int]:
    """(major, minor) of the installed jax, read from its package metadata without importing it ((0, 0) if absent)."""
    try:
        major, minor = importlib.metadata.version("jax").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


def choose(info: CpuInfo, jax: tuple[int, int] | None = None) -> Tuning:
    """The settings measured best for this CPU family and jax version (docs/bench.md has the figures).

    x86 with jax 0.10 (AMD Zen 4 / Zen 5 and an Intel Xeon with AMX measured): YNN_NO_REDUCE (−11% on Zen 5,
    −4% on the Xeon, neutral on Zen 4). jax ≥ 0.11 fuses the softmax reductions well itself: the flag costs +13% on
    the Xeon there, so nothing is added. Elsewhere (ARM, macOS) nothing was measured, so nothing is changed.
    """
    jax = jax or jax_version()
    if platform.machine() not in ("x86_64", "AMD64") or not info.vendor or jax >= (0, 11):
        return Tuning(xla_flags=())
    return Tuning(xla_flags=(YNN_NO_REDUCE,))


def add_xla_flags(flags: tuple[str, ...], env: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """Append each flag to env["XLA_FLAGS"] unless that variable already names it (the user's value wins)."""
    current = env.get("XLA_FLAGS", "")
    added = [flag for flag in flags if flag.split("=")[0] not in current]
    if added:
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def apply(env: dict[str, str] | os._Environ = os.environ) -> str | None:
    """Before JAX's backend starts: choose for this CPU, add the XLA flags, return the start-up line saying so.

    None when turned off (TRAINER_CPU_TUNING=0).
    """
    if env.get(OFF_SWITCH, "1").lower() in ("0", "false", "off", "no"):
        return None
    info = detect()
    added = add_xla_flags(choose(info).xla_flags, env)
    chosen = f"XLA_FLAGS += {' '.join(added)}" if added else "XLA flags as given"
    jax = ".".join(map(str, jax_version()))
    return (
        f"cpu: {info.name or 'unknown'} ({info.family_name}, {os.cpu_count()} cores, jax {jax}): {chosen} "
        f"[{OFF_SWITCH}=0: off]"
    )
