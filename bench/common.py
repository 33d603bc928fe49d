"""Shared helpers of the benches: median-of-N timing, progress on stderr, one JSON object on stdout, run context.

Every bench prints exactly one JSON object on stdout (machine-readable, one line) and its progress on stderr, so
`python -m bench.step > out.json` keeps the figures and shows the progress.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*parts: Any) -> None:
    """A progress line on stderr (stdout is reserved for the JSON result)."""
    print("[bench]", *parts, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall-clock seconds of one call of `fn` (which must block until its work is done) and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall-clock seconds, this process's CPU seconds (user + system, all threads) of one call of `fn`, its result.

    CPU seconds barely move when a neighbour takes the cores away (wall time does): on a shared machine they show
    the work a step costs, wall time what it cost this time.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def warm_up(fn: Callable[[], Any], times: int, label: str | None = None) -> None:
    """Run `fn` `times` times untimed (caches, allocators, thread pools settle), logging each duration."""
    for i in range(times):
        seconds, cpu, _ = timed_cpu(fn)
        if label:
            log(f"{label}: warm-up {i + 1}/{times} {seconds:.3f} s (cpu {cpu:.2f} s)")


def median_time(fn: Callable[[], Any], iters: int, warmup: int = 1, label: str | None = None) -> dict[str, Any]:
    """Run `fn` `warmup` times untimed, then `iters` times timed; `fn` must block until its work is done.

    Returns {"median_s", "min_s", "max_s", "times_s", "cpu_median_s"}: the median wall time is the figure to report
    on a shared, noisy machine (a neighbour's burst inflates single steps, never shortens them), min/max show the
    spread, and `cpu_median_s` is the median CPU time of this process (all threads) per call.
    """
    for i in range(warmup):
        seconds, cpu, _ = timed_cpu(fn)
        if label:
            log(f"{label}: warm-up {i + 1}/{warmup} {seconds:.3f} s (cpu {cpu:.2f} s)")
    times, cpus = [], []
    for i in range(max(1, iters)):
        seconds, cpu, _ = timed_cpu(fn)
        times.append(seconds)
        cpus.append(cpu)
        if label:
            log(f"{label}: {i + 1}/{iters} {seconds:.3f} s (cpu {cpu:.2f} s)")
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": [round(t, 4) for t in times],
        "cpu_median_s": statistics.median(cpus),
    }


def block_rounds(
    fns: dict[str, Callable[[], Any]], rounds: int, timed_per_block: int, settle: int = 1, label: str | None = None
) -> dict[str, Any]:
    """Time several blocking callables in alternating blocks: each round runs, for each callable in turn, `settle`
    untimed calls and then `timed_per_block` timed ones.

    Alternating blocks (rather than one long run each) spread a neighbour's burst on a shared machine over all of
    them; the untimed calls at the start of every block absorb the cost of switching (caches, allocator and thread
    pools left in another framework's state: a JAX step right after a torch step measured ~30% slower here).
    Returns, per name, what `median_time` returns.
    """
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max(1, rounds)):
        for name, fn in fns.items():
            warm_up(fn, settle)
            for _ in range(max(1, timed_per_block)):
                seconds, cpu, _ = timed_cpu(fn)
                walls[name].append(seconds)
                cpus[name].append(cpu)
            if label:
                shown = ", ".join(f"{t:.3f}" for t in walls[name][-timed_per_block:])
                log(f"{label} round {r + 1}/{rounds} {name}: {shown} s (cpu {cpus[name][-1]:.2f} s last)")
    return {
        name: {
            "median_s": statistics.median(walls[name]),
            "min_s": min(walls[name]),
            "max_s": max(walls[name]),
            "times_s": [round(t, 4) for t in walls[name]],
            "cpu_median_s": statistics.median(cpus[name]),
        }
        for name in fns
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf → null, floats rounded to 6 significant digits, tuples → lists."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def print_json(result: dict[str, Any]) -> None:
    """The bench's result: one JSON object, one line, on stdout."""
    sys.stdout.write(json.dumps(_clean(result)) + "\n")
    sys.stdout.flush()


def machine_info() -> dict[str, Any]:
    """Context for reading the figures: CPU model, core count and the load average when the bench started."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "loadavg_at_start": load, "python": platform.python_version()}


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages now (another process using the cores shows here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
