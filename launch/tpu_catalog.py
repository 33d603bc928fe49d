"""What the TPU launcher knows about Cloud TPU: accelerator types, runtimes, zones.

Pure data and pure functions, no cloud calls. The zone table follows Google's public
"TPU regions and zones" page (cloud.google.com/tpu/docs/regions-zones); it is a small
guard against obvious mistakes, not an availability oracle: unknown zones only warn,
and `--skip-zone-check` bypasses it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass


class LaunchError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2."""


# Generation -> accelerator-type prefix, valid sizes, runtime (software) version.
# v4/v5p sizes count TensorCores (2 per chip, 4 chips per host); v5e/v6e count chips.
_V5P_SIZES = (8, 16, 32, 64, *range(128, 12288 + 1, 128))
GENERATIONS: dict[str, dict] = {
    "v4": {"prefix": "v4", "sizes": tuple(2**k for k in range(3, 13)), "runtime": "tpu-ubuntu2204-base"},
    "v5e": {"prefix": "v5litepod", "sizes": (1, 4, 8, 16, 32, 64, 128, 256), "runtime": "v2-alpha-tpuv5-lite"},
    "v5p": {"prefix": "v5p", "sizes": _V5P_SIZES, "runtime": "v2-alpha-tpuv5"},
    "v6e": {"prefix": "v6e", "sizes": (1, 4, 8, 16, 32, 64, 128, 256), "runtime": "v2-alpha-tpuv6e"},
}
_PREFIX_TO_GEN = {g["prefix"]: name for name, g in GENERATIONS.items()}
_ALIASES = {"v5e": "v5litepod", "v5lite": "v5litepod", "v6": "v6e", "v5": "v5p"}

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
        return GENERATIONS[self.generation]["runtime"]

    @property
    def chips(self) -> int:
        """Number of chips of the slice: v4/v5p sizes count TensorCores (2 per chip), v5e/v6e sizes count chips."""
        return self.size // 2 if self.generation in ("v4", "v5p") else self.size

    @property
    def hosts(self) -> int:
        """Number of TPU VM workers (hosts) of the slice: what `--worker=all` reaches."""
        if self.generation in ("v4", "v5p"):
            return max(1, self.size // 8)  # size = TensorCores; 4 chips x 2 cores per host
        return 1 if self.size <= 8 else self.size // 4  # v5e/v6e: 8-chip single host, else 4 per host


def all_accelerator_names() -> list[str]:
    """Every accelerator type this launcher accepts (used for suggestions)."""
    return [f"{g['prefix']}-{n}" for g in GENERATIONS.values() for n in g["sizes"]]


def _valid_summary() -> str:
    return ", ".join(f"{g['prefix']}-{g['sizes'][0]}..{g['sizes'][-1]}" for g in GENERATIONS.values())


def _nearest(given: str) -> str:
    """Nearest valid name: same generation and closest size if we can parse it, else by spelling."""
    prefix, _, num = given.lower().rpartition("-")
    prefix = _ALIASES.get(prefix, prefix)
    if prefix in _PREFIX_TO_GEN and num.isdigit() and int(num) > 0:
        sizes = GENERATIONS[_PREFIX_TO_GEN[prefix]]["sizes"]
        best = min(sizes, key=lambda s: (abs(math.log2(s) - math.log2(int(num))), -s))
        return f"{prefix}-{best}"
    close = difflib.get_close_matches(given.lower(), all_accelerator_names(), n=1, cutoff=0.0)
    return close[0] if close else "v4-8"


def parse_accelerator(given: str) -> Accelerator:
    """Validate an accelerator type ('v4-32', 'v5e-8' alias of 'v5litepod-8', ...).

    Raises LaunchError naming the nearest valid type, so a typo never reaches the API.
    """
    prefix, _, num = given.strip().lower().rpartition("-")
    prefix = _ALIASES.get(prefix, prefix)
    gen = _PREFIX_TO_GEN.get(prefix)
    if gen and num.isdigit() and int(num) in GENERATIONS[gen]["sizes"]:
        return Accelerator(f"{prefix}-{int(num)}", gen, int(num))
    raise LaunchError(
        f"unknown accelerator {given!r}; did you mean {_nearest(given)!r}? (valid: {_valid_summary()})"
    )


def check_zone(zone: str, acc: Accelerator) -> str | None:
    """Check that `zone` hosts `acc`'s generation; return a warning for unknown zones.

    Raises LaunchError (with the zones that do host it) for a known zone that does not.
    """
    if zone not in ZONES:
        return (f"warning: zone {zone!r} is not in this launcher's zone table; "
                f"not checking that it offers {acc.generation} TPUs")
    if acc.generation not in ZONES[zone]:
        hosts = sorted(ZONES[zone])
        where = ", ".join(z for z, gens in ZONES.items() if acc.generation in gens)
        raise LaunchError(
            f"zone {zone} has no {acc.generation} TPUs (it offers {', '.join(hosts)}); "
            f"{acc.generation} zones: {where} (or pass --skip-zone-check)"
        )
    return None
