"""Compile the job's real train and eval steps for a TPU slice (or NVIDIA GPUs) that is not here, read the per-chip
memory the compiler assigns, and find the smallest change that fits when it doesn't.

Nothing executes: the state and the batch are ShapeDtypeStructs carrying their shardings over the topology's
devices, and `jit(...).lower(...).compile()` is as far as it goes (the same compile a TPU VM does at step 1).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding
from trainer.config import Config, RematPolicy
from trainer.errors import ConfigError
from trainer.hardware import GiB
from trainer.model import flops
from trainer.step import BATCH_KEYS, make_step_functions
from trainer.target import padding
from trainer.target.gpu import (
    GpuTarget,
    gpu_devices,
    is_gpu_target,
    missing_tool,
    parse_gpu_target,
    require_cuda_plugin,
)
from trainer.target.tpu import Target, parse_target, require_libtpu, topology_devices

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Fit:
    """Per-chip memory of one compiled job on one target (bytes), and whether it fits the chip's HBM."""

    target: Target | GpuTarget
    mesh: dict[str, int]
    changes: tuple[str, ...]  # overrides applied to the config as given (the suggestion), empty for the config itself
    params_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    temp_bytes: int | None  # compiler temporaries of the train step (None: the compiler refused without a figure)
    peak_bytes: int | None  # train step: arguments + outputs - donated + temporaries
    eval_peak_bytes: int | None  # eval step, with the optimizer state resident beside it
    compile_s: float  # wall time of compiling both steps
    compile_cpu_s: float  # CPU time of this process meanwhile (stable across loaded machines)
    error: str | None = None  # the compiler's out-of-memory line, when it refused

    @property
    def capacity_bytes(self) -> int:
        """HBM the compiler may use per chip."""
        return self.target.hbm_bytes

    @property
    def worst_bytes(self) -> int | None:
        """The larger of the train and eval peaks: what must fit."""
        peaks = [p for p in (self.peak_bytes, self.eval_peak_bytes) if p is not None]
        return max(peaks) if peaks and self.error is None else self.peak_bytes

    @property
    def fits(self) -> bool:
        """Both steps compiled within the chip's HBM."""
        return self.error is None and self.worst_bytes is not None and self.worst_bytes <= self.capacity_bytes

    def record(self) -> dict[str, Any]:
        """The machine-readable result (the last JSON line of `--dry-run --target`)."""
        return {
            "target": self.target.name,
            "slices": self.target.slices,
            "chips": self.target.chips,
            "topology": self.target.topology,
            "mesh": self.mesh,
            "changes": list(self.changes),
            "params_bytes": self.params_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "batch_bytes": self.batch_bytes,
            "temp_bytes": self.temp_bytes,
            "train_peak_bytes": self.peak_bytes,
            "eval_peak_bytes": self.eval_peak_bytes,
            "hbm_peak_bytes": self.worst_bytes,
            "hbm_capacity_bytes": self.capacity_bytes,
            "fits": self.fits,
            "compile_s": round(self.compile_s, 1),
            "compile_cpu_s": round(self.compile_cpu_s, 1),
        }


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def _shard_bytes(tree: Any) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _oom_bytes(message: str) -> int | None:
    """The memory the compiler wanted, from its RESOURCE_EXHAUSTED message ('HLO temporaries (42.43G)' or 'Used X')."""
    for pattern in (r"temporaries \(([\d.]+)([KMGT]?)\)", r"Used ([\d.]+)([KMGT]?)\b"):
        found = re.search(pattern, message)
        if found:
            return int(float(found.group(1)) * _UNITS[found.group(2)])
    return None


def resolve_target(name: str, slices: int = 1) -> Target | GpuTarget:
    """`--target NAME` → a TPU slice (`v4-32`) or GPUs (`2xl40s`), once its compiler is known to be installed; a bad
    name or a missing compiler is a one-line ConfigError."""
    if is_gpu_target(name):
        target: Target | GpuTarget = parse_gpu_target(name, slices)
        require_cuda_plugin()
    else:
        target = parse_target(name, slices)
        require_libtpu()
    return target


def target_devices(target: Target | GpuTarget) -> list[Any]:
    """The compile-only devices of a TPU slice (libtpu) or of a GPU machine (the CUDA plugin)."""
    return gpu_devices(target) if isinstance(target, GpuTarget) else topology_devices(target)


def abstract_batch(step_fns: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of ShapeDtypeStructs laid out as the steps expect (no memory)."""
    t = step_fns.config.train
    return {
        k: jax.ShapeDtypeStruct(
            (t.global_batch_size, t.seq_len),
            jnp.float32 if k == "loss_mask" else jnp.int32,
            sharding=step_fns.batch_sharding,
        )
        for k in BATCH_KEYS
    }


def compile_fit(
    config: Config, target: Target | GpuTarget, devices: list[Any] | None = None, changes: tuple[str, ...] = ()
) -> Fit:
    """Compile train and eval steps of `config` for `target` and measure them per chip (a refusal is a non-fit); a
    GPU compile that fails for want of a CUDA tool (ptxas, cuDNN) is one line naming the extra to install."""
    try:
        return _compile_fit(config, target, devices, changes)
    except RuntimeError as e:  # jax.errors.JaxRuntimeError is one
        missing = missing_tool(e) if isinstance(target, GpuTarget) else None
        if missing is None:
            raise
        raise missing from None


def _compile_fit(
    config: Config, target: Target | GpuTarget, devices: list[Any] | None, changes: tuple[str, ...]
) -> Fit:
    devices = devices if devices is not None else target_devices(target)
    mesh_shape = sharding.resolve_mesh_shape(config.mesh, len(devices))
    sharding.check_batch_divisible(config, mesh_shape)
    padding.check(config, mesh_shape)
    mesh = sharding.make_mesh(config.mesh, devices)
    step_fns = make_step_functions(config, mesh)
    state, batch = step_fns.abstract_state, abstract_batch(step_fns)
    params_bytes, opt_bytes = _shard_bytes(state.params), _shard_bytes(state.opt_state) + _shard_bytes(state.step)
    batch_bytes = _shard_bytes(batch)
    wall, cpu = time.perf_counter(), time.process_time()
    temp = peak = eval_peak = None
    error = None
    cache = jax.config.jax_enable_compilation_cache  # type: ignore[attr-defined]  # set per flag at run time
    jax.config.update("jax_enable_compilation_cache", False)  # executables for absent devices can't be cached
    try:
        train = step_fns.train_step.lower(state, batch).compile().memory_analysis()
        temp = train.temp_size_in_bytes
        peak = train.argument_size_in_bytes + train.output_size_in_bytes - train.alias_size_in_bytes + temp
        ev = step_fns.eval_step.lower(state.params, batch).compile().memory_analysis()
        eval_peak = (
            ev.argument_size_in_bytes
            + ev.output_size_in_bytes
            - ev.alias_size_in_bytes
            + ev.temp_size_in_bytes
            + opt_bytes
        )
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        error = next((line for line in str(e).splitlines() if "RESOURCE_EXHAUSTED" in line), str(e))[:300]
        wanted = _oom_bytes(error)
        if temp is None:  # the train step was refused
            temp = wanted
            peak = None if wanted is None else params_bytes + opt_bytes + batch_bytes + wanted
        else:
            eval_peak = None if wanted is None else params_bytes + opt_bytes + batch_bytes + wanted
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    return Fit(
        target=target,
        mesh=mesh_shape,
        changes=changes,
        params_bytes=params_bytes,
        optimizer_bytes=opt_bytes,
        batch_bytes=batch_bytes,
        temp_bytes=temp,
        peak_bytes=peak,
        eval_peak_bytes=eval_peak,
        compile_s=time.perf_counter() - wall,
        compile_cpu_s=time.process_time() - cpu,
        error=error,
    )


def candidates(config: Config) -> Iterator[tuple[tuple[str, ...], Config]]:
    """Changes that lower the per-chip peak, smallest first: more microbatches (2×, 4×, … while every microbatch still
    splits over the data-parallel devices), then `model.remat_policy=full`, alone and with more microbatches."""
    t, m = config.train, config.model

    def with_(micro: int, remat: RematPolicy) -> tuple[tuple[str, ...], Config]:
        changes = tuple(
            c
            for c, keep in (
                (f"train.microbatches={micro}", micro != t.microbatches),
                (f"model.remat_policy={remat}", remat != m.remat_policy),
            )
            if keep
        )
        return changes, dataclasses.replace(
            config, train=dataclasses.replace(t, microbatches=micro), model=dataclasses.replace(m, remat_policy=remat)
        )

    micros = []
    micro = t.microbatches * 2
    while micro <= t.global_batch_size and t.global_batch_size % micro == 0:
        micros.append(micro)
        micro *= 2
    for micro in micros:
        yield with_(micro, m.remat_policy)
    if m.remat_policy != "full":
        for micro in [t.microbatches] + micros:
            yield with_(micro, "full")


def find_fit(
    config: Config, target: Target | GpuTarget, devices: list[Any] | None = None, say: Any = None
) -> Fit | None:
    """The first candidate change (see `candidates`) whose compiled steps fit, or None; each try is one compile."""
    devices = devices if devices is not None else target_devices(target)
    for changes, candidate in candidates(config):
        try:
            fit = compile_fit(candidate, target, devices, changes)
        except ConfigError:  # e.g. a microbatch that no longer splits over the data-parallel devices
            continue
        if say:
            say(
                f"tried      {' '.join(changes)}: {'fits' if fit.fits else 'does not fit'}, peak "
                f"{_gib(fit.worst_bytes)} ({fit.compile_s:.0f} s)"
            )
        if fit.fits:
            return fit
    return None


def describe(fit: Fit) -> list[str]:
    """The per-chip report for a person."""
    t = fit.target
    headroom = "?"
    if fit.worst_bytes is not None:
        free = t.hbm_bytes - fit.worst_bytes
        headroom = f"{_gib(free)} ({100 * free / t.hbm_bytes:.0f}%)"
    evaluation = (
        "eval step not compiled"
        if fit.eval_peak_bytes is None
        else f"eval peak {_gib(fit.eval_peak_bytes)} (optimizer state resident)"
    )
    lines = [
        f"target     {t.describe()}, mesh " + " × ".join(f"{k}={v}" for k, v in fit.mesh.items()),
        f"compiled   train and eval steps with the {t.compiler} in {fit.compile_s:.1f} s "
        f"({fit.compile_cpu_s:.1f} s CPU)",
        f"{'per ' + t.unit:<10} params {_gib(fit.params_bytes)} + optimizer state {_gib(fit.optimizer_bytes)} + "
        f"batch {_gib(fit.batch_bytes)} + temporaries {_gib(fit.temp_bytes)} = train peak {_gib(fit.peak_bytes)}; "
        f"{evaluation}",
        f"{'HBM' if t.unit == 'chip' else 'memory':<10} {_gib(t.hbm_bytes)} per {t.unit}; peak "
        f"{_gib(fit.worst_bytes)}; headroom {headroom}",
    ]
    if fit.error:
        lines.append(f"compiler   {fit.error}")
    return lines


def verdict(fit: Fit) -> str:
    """One line: 'fits: peak 16.80 GiB of 30.75 GiB per chip' or 'does not fit: 43.28 GiB > 30.75 GiB per chip'."""
    unit = fit.target.unit
    if fit.fits:
        return f"fits: peak {_gib(fit.worst_bytes)} of {_gib(fit.capacity_bytes)} per {unit}"
    if fit.worst_bytes is not None:
        return f"does not fit: {_gib(fit.worst_bytes)} > {_gib(fit.capacity_bytes)} per {unit}"
    return f"does not fit: the compiler refused it ({fit.error})"


def with_slices(config: Config, slices: int) -> tuple[Config, tuple[str, ...]]:
    """A multi-slice target needs the mesh's `dcn_*` axes to span the slices: data parallelism across them unless
    the config says otherwise."""
    dcn = config.mesh.dcn_data * config.mesh.dcn_fsdp
    if dcn == slices:
        return config, ()
    if dcn != 1:
        raise ConfigError(f"--slices {slices} but mesh.dcn_data × mesh.dcn_fsdp = {dcn}; make them equal")
    return dataclasses.replace(config, mesh=dataclasses.replace(config.mesh, dcn_data=slices)), (
        f"mesh.dcn_data={slices}",
    )


def dry_run_target(config: Config, name: str, slices: int = 1, say: Any = print) -> int:
    """`--dry-run --target NAME`: compile for the slice (or GPUs: `2xl40s`), print the per-chip report, a one-line
    verdict (with the smallest change that fits when it doesn't) and one JSON line; exit 0 when it fits, 1 when not."""
    import json

    target = resolve_target(name, slices)
    config, implied = with_slices(config, slices)
    devices = target_devices(target)
    m = config.model
    say(
        f"model      {flops.param_count(m):,} parameters; attention {m.attention}, remat {m.remat_policy}, "
        f"scan_layers {m.scan_layers}; batch {config.train.global_batch_size} × {config.train.seq_len}, "
        f"{config.train.microbatches} microbatch(es)" + (f"; with {' '.join(implied)}" if implied else "")
    )
    fit = compile_fit(config, target, devices, implied)
    for u in padding.uneven_axes(config, fit.mesh):
        say(f"uneven     {u.describe()}")
    for line in describe(fit):
        say(line)
    record = fit.record()
    if fit.fits:
        say(verdict(fit))
    else:
        better = find_fit(config, target, devices, say=say)
        if better is None:
            say(
                f"{verdict(fit)}; no change tried fits (more microbatches, model.remat_policy=full): "
                + ("use more or bigger GPUs" if target.unit == "GPU" else "use a bigger slice or more chips")
            )
        else:
            say(f"{verdict(fit)}; fits with {' '.join(implied + better.changes)} ({_gib(better.worst_bytes)})")
        record["suggestion"] = (
            None
            if better is None
            else {"changes": list(implied + better.changes), "hbm_peak_bytes": better.worst_bytes}
        )
    say(json.dumps(record))
    return 0 if fit.fits else 1
