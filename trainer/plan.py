"""`python -m trainer.plan`: plan a run before paying for it (Chinchilla-optimal size, tokens, steps, hours).

    python -m trainer.plan --hardware v4-32 --hours 72 --mfu 0.45          # a budget → model size, seed config
    python -m trainer.plan --flops 1.2e21                                  # the same from FLOPs
    python -m trainer.plan --config configs/1.3b.yml --tokens 25.4B --hardware v4-32 --mfu 0.45   # → hours
    python -m trainer.plan --config configs/1.3b.yml --hardware 2xl40s --mfu 0.2   # its own steps, on its own GPUs

The last line printed is one JSON object (docs/plan.md documents every field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from trainer import cli_args
from trainer.config import load_config
from trainer.errors import ConfigError, cli
from trainer.run import budget as b

_REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments: a budget (or a config with a token target), the hardware and an MFU."""
    p = cli_args.ArgumentParser(
        prog="python -m trainer.plan",
        description="Compute-optimal model size and tokens for a budget (Chinchilla, 20 tokens per parameter), what a "
        "config sees in that budget, or how long a config takes for a token target.",
    )
    p.add_argument(
        "--hardware",
        help="a machine as --target spells it: a TPU slice (v4-32, v5e-16) or GPUs "
        "(2xl40s, 8xh100); or a bare chip (v5p, h100) for --chip-hours",
    )
    p.add_argument("--hours", help="budget: wall-clock hours on the --hardware slice")
    p.add_argument("--chip-hours", help="budget: chip-hours of the --hardware kind")
    p.add_argument("--flops", help="budget: model FLOPs (e.g. 1.2e21)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilisation to expect, a fraction (0.45)")
    p.add_argument("--mfu-from", metavar="RUN_DIR", help="take the MFU measured by a run (median of its metrics.jsonl)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 TFLOP/s per chip, instead of the built-in table")
    p.add_argument("--config", help="plan this config instead of the closest seed config")
    p.add_argument(
        "overrides", nargs="*", help="section.key=value overrides of --config (e.g. train.global_batch_size=256)"
    )
    p.add_argument(
        "--tokens",
        help="with --config: a token target (25.4B, 2e10; default: the config's own "
        "train.steps, or train.epochs over its data)",
    )
    p.add_argument(
        "--configs", default=_REPO_CONFIGS, help="folder of seed configs to choose from (default: %(default)s)"
    )
    return p.parse_intermixed_args(argv)


def _number(text: str | None, what: str) -> float | None:
    return None if text is None else b.parse_count(text, what)


def _mfu(args: argparse.Namespace) -> tuple[float | None, str | None]:
    if args.mfu is not None and args.mfu_from:
        raise ConfigError("give --mfu or --mfu-from, not both")
    if args.mfu is not None:
        return b.check_mfu(args.mfu), "--mfu"
    if args.mfu_from:
        return b.check_mfu(b.measured_mfu(args.mfu_from)), args.mfu_from
    return None, None


def make_plan(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The lines for a person and the JSON record, from parsed arguments."""
    hardware = b.parse_hardware(args.hardware, args.peak_tflops) if args.hardware else None
    if args.peak_tflops is not None and hardware is None:
        raise ConfigError("--peak-tflops needs --hardware (what the peak is of, and how many chips)")
    mfu, mfu_from = _mfu(args)
    amounts = {
        "flops_budget": _number(args.flops, "--flops"),
        "hours": _number(args.hours, "--hours"),
        "chip_hours": _number(args.chip_hours, "--chip-hours"),
    }
    tokens = _number(args.tokens, "--tokens")
    has_budget = any(v is not None for v in amounts.values())
    if args.overrides and not args.config:
        raise ConfigError(f"overrides {' '.join(args.overrides)} need --config")
    if tokens is not None and (not args.config or has_budget):
        raise ConfigError("--tokens plans a --config without a budget (drop --hours/--chip-hours/--flops)")
    if not has_budget and not args.config:
        raise ConfigError(
            "give a budget (--hardware v4-32 --hours 72 --mfu 0.45, --chip-hours, --flops) or a --config to plan"
        )

    lines: list[str] = []
    record: dict[str, Any] = {"budget": None, "compute_optimal": None, "config": None}
    budget = None
    if has_budget:
        budget = b.make_budget(hardware=hardware, mfu=mfu, mfu_from=mfu_from, **amounts)
        record["budget"] = budget.to_json()
        lines.append("budget      " + _describe_budget(budget))
        n_opt, d_opt = b.compute_optimal(budget.flops)
        record["compute_optimal"] = {"params": n_opt, "tokens": d_opt, "tokens_per_param": b.TOKENS_PER_PARAM}
        lines.append(
            f"chinchilla  compute-optimal: {b.human_count(n_opt)} parameters on {b.human_count(d_opt)} tokens "
            f"(C = 6·N·D, D = {b.TOKENS_PER_PARAM:g}·N)"
        )

    if args.config:
        path, config = args.config, b.with_epochs(load_config(args.config, args.overrides))
        is_seed = False
    else:
        path, config = b.closest(b.seed_configs(args.configs), record["compute_optimal"]["params"])
        relative = os.path.relpath(path)
        path = path if relative.startswith("..") else relative
        is_seed = True
    if budget is not None:
        plan = b.plan_config(config, path, flops_budget=budget.flops, closest_seed=is_seed)
    else:
        plan = b.plan_config(config, path, tokens=tokens)  # no --tokens: the config's own train.steps
    if plan.steps < 1:
        raise ConfigError(
            f"the budget buys less than one step of {path} "
            f"({plan.tokens_per_step:,} tokens × {plan.flops_per_token:.3g} FLOPs)"
        )
    record["config"] = _config_record(plan, hardware, mfu)
    lines += _describe_config(plan, budget, record["config"], hardware, mfu)
    return lines, record


def _describe_budget(budget: b.Budget) -> str:
    if budget.hardware is None or budget.chip_hours is None or budget.mfu is None:
        return f"{budget.flops:.3g} FLOPs"
    hw = budget.hardware
    chips = f"{hw.chips} chips × " if hw.chips else ""
    hours = f"{_time(budget.hours)} h = " if budget.hours is not None and hw.chips else ""
    return (
        f"{hw.name} ({chips}{hw.peak_tflops:g} TFLOP/s bf16 peak): {hours}{_time(budget.chip_hours)} chip-hours "
        f"at {100 * budget.mfu:.1f}% MFU ({budget.mfu_from}) = {budget.flops:.3g} FLOPs"
    )


def _time(hours: float) -> str:
    """1,152 / 26.0 / 0.034: hours readable at every scale."""
    if hours >= 100:
        return f"{hours:,.0f}"
    return f"{hours:.1f}" if hours >= 1 else f"{hours:.2g}"


def _config_record(plan: b.ConfigPlan, hardware: b.Hardware | None, mfu: float | None) -> dict[str, Any]:
    record = {
        "path": plan.path,
        "closest_seed": plan.closest_seed,
        "params": plan.params,
        "flops_per_token": plan.flops_per_token,
        "tokens_per_step": plan.tokens_per_step,
        "steps": plan.steps,
        "tokens": plan.tokens,
        "flops": plan.flops,
        "chinchilla_tokens": plan.chinchilla_tokens,
        "chinchilla_percent": plan.chinchilla_percent,
        "chip_hours": None,
        "hours": None,
    }
    if hardware is not None and mfu is not None:
        record["chip_hours"], record["hours"] = plan.time_on(hardware, mfu)
    return record


def _describe_config(
    plan: b.ConfigPlan, budget: b.Budget | None, record: dict[str, Any], hardware: b.Hardware | None, mfu: float | None
) -> list[str]:
    which = "closest seed config" if plan.closest_seed else "config"
    lines = [
        (
            f"config      {plan.path} ({which}): {plan.params:,} parameters, "
            f"{plan.flops_per_token / 1e9:.3g} GFLOP per token (attention included)"
        )
    ]
    where = "in this budget" if budget is not None else "planned"
    lines.append(
        f"            {where}: {plan.steps:,} steps × {plan.tokens_per_step:,} tokens = "
        f"{b.human_count(plan.tokens)} tokens, {plan.chinchilla_percent:.1f}% of Chinchilla-optimal "
        f"({b.human_count(plan.chinchilla_tokens)} tokens); {plan.flops:.3g} FLOPs"
    )
    if budget is None:
        if hardware is None or mfu is None:
            lines.append("            (add --hardware and --mfu for the hours it takes)")
        else:
            slice_hours = f"{_time(record['hours'])} h on {hardware.name}, " if record["hours"] is not None else ""
            lines.append(f"time        {slice_hours}{_time(record['chip_hours'])} chip-hours at {100 * mfu:.1f}% MFU")
    return lines


@cli
def main(argv: list[str] | None = None) -> int:
    """Print the plan for a person, then its JSON record on the last line."""
    args = parse_args(argv)
    lines, record = make_plan(args)
    print("\n".join(lines))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
