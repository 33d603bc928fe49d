"""Compute budgets before a run: Chinchilla-optimal size, tokens a config sees in a budget, hours for a target.

The compute-optimal rule is Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla):
training compute C ≈ 6·N·D FLOPs for N parameters and D tokens, and the optimum grows N and D equally with compute
(their approaches 1 and 2 fit N_opt ∝ C^0.50 / C^0.49, D_opt ∝ C^0.50 / C^0.51), which lands at D ≈ 20·N
(their Table 3: 1B parameters ↔ 20.2B tokens; Chinchilla itself: 70B on 1.4T). Hence N_opt = sqrt(C / 120) and
D_opt = 20·N_opt.
Their approach 3 fitted the loss directly, L(N, D) = E + A / N^α + B / D^β with E = 1.69, A = 406.4, B = 410.7,
α = 0.34, β = 0.28; Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt") refit the same data to
E = 1.82, A = 482.0, B = 2085.4, α = 0.348, β = 0.366, whose optimum is again ≈ 20 tokens per parameter. N counts
every parameter, embeddings included (KodaLite-1.3B: 1.27B parameters × 20 ≈ 25.4B tokens; it saw 1.64B, 6.5 %).

The 6·N rule only places the optimum. What a concrete config costs per token comes from `trainer.model.flops`
(every matmul plus causal attention), and the peak FLOP/s of a chip and the chips of a machine from the hardware
table (`trainer.hardware`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from trainer import hardware as hw_table
from trainer.config import Config, load_config
from trainer.errors import ConfigError
from trainer.model import flops

TOKENS_PER_PARAM = 20.0  # Chinchilla's compute-optimal ratio D / N
FLOPS_PER_PARAM_TOKEN = 6.0  # C ≈ 6·N·D (forward 2·N·D, backward 4·N·D)


def chinchilla_tokens(params: float) -> float:
    """Compute-optimal training tokens for a model of `params` parameters: 20 per parameter."""
    return TOKENS_PER_PARAM * params


def compute_optimal(flops_budget: float) -> tuple[float, float]:
    """(parameters, tokens) that spend `flops_budget` FLOPs compute-optimally: C = 6·N·D with D = 20·N."""
    params = math.sqrt(flops_budget / (FLOPS_PER_PARAM_TOKEN * TOKENS_PER_PARAM))
    return params, TOKENS_PER_PARAM * params


@dataclass(frozen=True)
class Hardware:
    """What a budget runs on: a name, the chips it has (None for a bare chip kind) and one chip's peak."""

    name: str
    chips: int | None
    peak_tflops: float  # dense bf16, per chip


def parse_hardware(text: str, peak_override: float | None = None) -> Hardware:
    """A machine in the spelling `--target` takes (a TPU slice `v4-32` / `v5e-16`, GPUs `2xl40s` / `8xh100`) or a
    bare chip kind (`v5p`, `h100`: chips unknown, for chip-hour budgets); `peak_override` (TFLOP/s per chip)
    replaces the hardware table's dense bf16 peak, and with it any COUNTxNAME names a machine outside the table."""
    try:
        machine = hw_table.parse_machine(text, bare=True, option="--hardware")
    except ConfigError as e:
        other = re.fullmatch(r"(\d+)x[a-z0-9-]+", text.strip().lower())
        if peak_override is not None and peak_override > 0 and other and int(other.group(1)) > 0:
            return Hardware(text.strip().lower(), int(other.group(1)), peak_override)
        outside = " (a machine outside the table: COUNTxNAME with --peak-tflops)" if "unknown" in str(e) else ""
        raise ConfigError(f"--hardware: {e}{outside}") from None
    peak = machine.chip.peak_bf16_tflops if peak_override is None else peak_override
    if not peak > 0:
        raise ConfigError(f"--peak-tflops must be positive, got {peak:g}")
    return Hardware(machine.name, machine.count, peak)


@dataclass(frozen=True)
class Budget:
    """A compute budget in FLOPs and, when it came from hardware time, what it was made of."""

    flops: float
    hardware: Hardware | None = None
    mfu: float | None = None
    mfu_from: str | None = None  # "--mfu" or the run folder it was measured in
    hours: float | None = None
    chip_hours: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The `budget` object of the plan's JSON line."""
        hw = self.hardware
        return {
            "flops": self.flops,
            "hardware": hw.name if hw else None,
            "chips": hw.chips if hw else None,
            "peak_tflops": hw.peak_tflops if hw else None,
            "mfu": self.mfu,
            "mfu_from": self.mfu_from,
            "hours": self.hours,
            "chip_hours": self.chip_hours,
        }


def sustained_flops_per_hour(hardware: Hardware, mfu: float) -> float:
    """Model FLOPs one chip of `hardware` delivers in an hour at utilisation `mfu`."""
    return hardware.peak_tflops * 1e12 * mfu * 3600.0


def make_budget(
    *,
    flops_budget: float | None = None,
    hardware: Hardware | None = None,
    hours: float | None = None,
    chip_hours: float | None = None,
    mfu: float | None = None,
    mfu_from: str | None = None,
) -> Budget:
    """One budget from exactly one of `flops_budget`, `chip_hours` (with a hardware kind) or `hours` (with a slice);
    hardware time becomes FLOPs at `mfu`."""
    given = [
        name
        for name, v in (("--flops", flops_budget), ("--chip-hours", chip_hours), ("--hours", hours))
        if v is not None
    ]
    if len(given) != 1:
        raise ConfigError(f"give one budget: --flops, --chip-hours or --hours (got {', '.join(given) or 'none'})")
    for name, value in (("--flops", flops_budget), ("--chip-hours", chip_hours), ("--hours", hours)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value:g}")
    if flops_budget is not None:
        if hardware is None or mfu is None:
            return Budget(flops_budget, hardware, mfu, mfu_from)
        chip_hours = flops_budget / sustained_flops_per_hour(hardware, mfu)
        return Budget(
            flops_budget, hardware, mfu, mfu_from, chip_hours / hardware.chips if hardware.chips else None, chip_hours
        )
    if hardware is None:
        raise ConfigError(f"{given[0]} needs --hardware (e.g. --hardware v4-32) to turn time into FLOPs")
    if mfu is None:
        raise ConfigError(f"{given[0]} needs an MFU: --mfu 0.4, or --mfu-from RUN_DIR (a run's metrics.jsonl)")
    if hours is not None:
        if hardware.chips is None:
            raise ConfigError(
                f"--hours needs a machine with a chip count (e.g. v4-32 or 2xl40s), "
                f"not the bare kind {hardware.name!r}; or give --chip-hours"
            )
        chip_hours = hours * hardware.chips
    elif hardware.chips:
        hours = chip_hours / hardware.chips
    return Budget(chip_hours * sustained_flops_per_hour(hardware, mfu), hardware, mfu, mfu_from, hours, chip_hours)


def check_mfu(mfu: float) -> float:
    """An MFU is a fraction in (0, 1]; a percentage passed by mistake fails here."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu is a fraction in (0, 1] (0.45 for 45 %), got {mfu:g}")
    return mfu


def measured_mfu(run_dir: str) -> float:
    """The median MFU of a run's logged steps (metrics.jsonl): what this config reached on that run's hardware."""
    import json
    import statistics

    from trainer import storage

    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(path):
        raise ConfigError(f"--mfu-from {run_dir}: no metrics.jsonl there (a run folder of python -m trainer.main)")
    rows = [json.loads(line) for line in storage.read_bytes(path).decode().splitlines() if line.strip()]
    values = [r["mfu"] for r in rows if isinstance(r.get("mfu"), (int, float)) and r["mfu"] > 0]
    if not values:
        raise ConfigError(
            f"--mfu-from {run_dir}: its metrics hold no mfu (the device's peak was unknown: set "
            "train.peak_tflops in that run, or pass --mfu)"
        )
    return float(statistics.median(values))


@dataclass(frozen=True)
class ConfigPlan:
    """What one config does with a number of tokens."""

    path: str
    params: int
    flops_per_token: float
    tokens_per_step: int
    steps: int
    tokens: int  # steps × tokens_per_step: what the run sees
    closest_seed: bool = False

    @property
    def chinchilla_tokens(self) -> float:
        return chinchilla_tokens(self.params)

    @property
    def chinchilla_percent(self) -> float:
        """Tokens seen as a percentage of Chinchilla-optimal (20 per parameter)."""
        return 100.0 * self.tokens / self.chinchilla_tokens

    @property
    def flops(self) -> float:
        """Model FLOPs of the whole run (attention included)."""
        return self.flops_per_token * self.tokens

    def time_on(self, hardware: Hardware, mfu: float) -> tuple[float, float | None]:
        """(chip-hours, hours on the slice or None without a chip count) the run takes at `mfu`."""
        chip_hours = self.flops / sustained_flops_per_hour(hardware, mfu)
        return chip_hours, (chip_hours / hardware.chips if hardware.chips else None)


def plan_config(
    config: Config,
    path: str,
    *,
    tokens: float | None = None,
    flops_budget: float | None = None,
    closest_seed: bool = False,
) -> ConfigPlan:
    """Steps and tokens of `config` for a token target (rounded up to whole steps), for a FLOP budget (the whole
    steps that fit), or, with neither, for its own `train.steps`."""
    params = flops.param_count(config.model)
    fpt = flops.flops_per_token(config.model, config.train.seq_len)
    per_step = config.train.global_batch_size * config.train.seq_len
    if tokens is not None:
        steps = math.ceil(tokens / per_step)
    elif flops_budget is not None:
        steps = math.floor(flops_budget / (fpt * per_step))
    else:
        steps = config.train.steps
    return ConfigPlan(path, params, fpt, per_step, steps, steps * per_step, closest_seed)


def steps_for_epochs(epochs: float, train_tokens: int, tokens_per_step: int) -> int:
    """Whole steps that pass `epochs` times over `train_tokens` tokens (at least one)."""
    return max(1, math.ceil(epochs * train_tokens / tokens_per_step))


def with_epochs(config: Config) -> Config:
    """`config` with train.steps derived from train.epochs and the train tokens of data.path's manifest (unchanged
    without train.epochs): what the job trains and the planner plans. Packed rows of chat data add a little padding,
    so an epoch of rows is slightly more steps than an epoch of tokens; the tokens are what this counts."""
    import dataclasses

    from trainer.data.shards import read_manifest

    t = config.train
    if t.epochs is None:
        return config
    tokens = read_manifest(config.data.path).totals()["train"]["tokens"]
    steps = steps_for_epochs(t.epochs, tokens, t.global_batch_size * t.seq_len)
    return dataclasses.replace(config, train=dataclasses.replace(t, steps=steps))


def seed_configs(directory: str) -> list[tuple[str, Config]]:
    """The model configs of a folder (every *.yml but base.yml), sorted by size; files that don't load are skipped."""
    if not os.path.isdir(directory):
        raise ConfigError(f"no configs folder at {directory}: pass --configs DIR (the repository's configs/)")
    found = []
    for name in sorted(os.listdir(directory)):
        if name.endswith((".yml", ".yaml")) and name not in ("base.yml", "base.yaml"):
            path = os.path.join(directory, name)
            try:
                found.append((path, load_config(path)))
            except ConfigError:
                continue
    if not found:
        raise ConfigError(f"no model configs in {directory}")
    return sorted(found, key=lambda pc: flops.param_count(pc[1].model))


def closest(configs: list[tuple[str, Config]], params: float) -> tuple[str, Config]:
    """The config whose parameter count is nearest to `params` on a log scale (sizes are compared by ratio)."""
    return min(configs, key=lambda pc: abs(math.log(flops.param_count(pc[1].model) / params)))


def run_line(config: Config) -> str:
    """The planning line a run prints at its start: tokens it will see and their share of Chinchilla-optimal."""
    plan = plan_config(config, "")
    return (
        f"plan: {plan.steps:,} steps × {plan.tokens_per_step:,} tokens = {human_count(plan.tokens)} tokens for "
        f"{human_count(plan.params)} parameters, {plan.chinchilla_percent:.1f}% of Chinchilla-optimal "
        f"({human_count(plan.chinchilla_tokens)} tokens, {TOKENS_PER_PARAM:g} per parameter); "
        f"{plan.flops:.3g} FLOPs"
    )


def human_count(n: float) -> str:
    """1.64B, 25.4B, 4.2M, 512: short counts for people."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def parse_count(text: str, what: str) -> float:
    """`25e9`, `25B`, `1.64b`, `300M`, `4k`, `1.2e21` → a number; anything else is a one-line error."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    if not match:
        raise ConfigError(f"{what} must be a number such as 25e9 or 25B, got {text!r}")
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}[match.group(2).lower()]
    return float(match.group(1)) * scale
