"""What the TPU launcher knows about Cloud TPU: accelerator types (validated against trainer/hardware.py, the
project's one hardware table), runtimes, zones.

Pure data and pure functions, no cloud calls. The zone table follows Google's public
"TPU regions and zones" page (cloud.google.com/tpu/docs/regions-zones); it is a small
guard against obvious mistakes, not an availability oracle: unknown zones only warn,
and `--skip-zone-check` bypasses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer import hardware
from trainer.errors import ConfigError


class LaunchError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2."""


# Generation -> TPU VM runtime (software) version. Slice sizes, chips and hosts are trainer/hardware.py's.
RUNTIMES: dict[str, str] = {
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}

# Zone -> generations it hosts (Google's public list; single-tenant-only zones included).
ZONES: dict[str, frozenset[str]] = {
    "us-central2-b": frozenset({"v4"}),
    "us-central1-a": frozenset({"v5e", "v5p"}),
    "us-central1-b": frozenset({"v6e"}),
    "us-east1-d": frozenset({"v6e"}),
    "us-east5-a": frozenset({"v5e", "v5p", "v6e"}),
    "us-east5-b": frozenset({"v5e", "v6e"}),
    "us-east5-c": frozenset({"v5e"}),
    "us-south1-a": frozenset({"v5e"}),
    "us-west1-c": frozenset({"v5e"}),
    "us-west4-a": frozenset({"v5e"}),
    "europe-west4-a": frozenset({"v6e"}),
    "europe-west4-b": frozenset({"v5e", "v5p"}),
    "asia-northeast1-b": frozenset({"v6e"}),
    "asia-southeast1-b": frozenset({"v5e"}),
}


@dataclass(frozen=True)
class Accelerator:
    """A validated accelerator type, e.g. Accelerator('v4-32', 'v4', 32)."""

    name: str  # the exact string the TPU API takes
    generation: str  # v4, v5e, v5p, v6e
    size: int

    @property
    def runtime(self) -> str:
        """Default TPU VM runtime (software) version for this generation."""
        return RUNTIMES[self.generation]

    @property
    def chips(self) -> int:
        """Number of chips of the slice (the hardware table's count)."""
        return hardware.TpuSlice(self.name, self.generation, self.size).chips

    @property
    def hosts(self) -> int:
        """Number of TPU VM workers (hosts) of the slice: what `--worker=all` reaches."""
        return hardware.TpuSlice(self.name, self.generation, self.size).hosts


def parse_accelerator(given: str) -> Accelerator:
    """Validate an accelerator type ('v4-32', 'v5e-8' alias of 'v5litepod-8', ...) against the hardware table.

    Raises LaunchError naming the nearest valid type, so a typo never reaches the API.
    """
    try:
        tpu = hardware.parse_tpu_slice(given)
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    return Accelerator(tpu.name, tpu.generation, tpu.size)


def check_zone(zone: str, acc: Accelerator) -> str | None:
    """Check that `zone` hosts `acc`'s generation; return a warning for unknown zones.

    Raises LaunchError (with the zones that do host it) for a known zone that does not.
    """
    if zone not in ZONES:
        return (
            f"warning: zone {zone!r} is not in this launcher's zone table; "
            f"not checking that it offers {acc.generation} TPUs"
        )
    if acc.generation not in ZONES[zone]:
        hosts = sorted(ZONES[zone])
        where = ", ".join(z for z, gens in ZONES.items() if acc.generation in gens)
        raise LaunchError(
            f"zone {zone} has no {acc.generation} TPUs (it offers {', '.join(hosts)}); "
            f"{acc.generation} zones: {where} (or pass --skip-zone-check)"
        )
    return None
