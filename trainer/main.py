"""`python -m trainer.main CONFIG [section.key=value ...] [--dry-run]`: the training job's entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys

from trainer import cli_args
from trainer.config import Config, load_config
from trainer.errors import ConfigError, cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments: a config file, dotted overrides, and the dry-run switches."""
    parser = cli_args.ArgumentParser(
        prog="python -m trainer.main",
        description="Train a LLaMA-style model from a YAML config (see configs/base.yml for every key).",
    )
    parser.add_argument("config", help="YAML config file, e.g. configs/tiny.yml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100 mesh.fsdp=8")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build everything abstractly (no weights allocated), print a summary and one JSON line",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="with --dry-run: plan for this many devices instead of the ones present (e.g. 256)",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="with --dry-run: compile the train and eval steps for this TPU slice (v4-32, v5e-16, "
        "v5p-128, v6e-8, ...; needs .[tpu]) or these GPUs (2xl40s, 2xrtx-pro-6000, 8xh100; "
        "needs .[gpu-compile]) and report per-chip memory against its capacity",
    )
    parser.add_argument("--slices", type=int, default=1, help="with --target: this many slices (multi-slice)")
    return parser.parse_intermixed_args(argv)


def dry_run(config: Config, devices: int | None) -> int:
    """Print the summary of the job (parameters, memory per device, FLOPs, mesh, sharding) and one JSON line."""
    import jax
    from jax.sharding import AbstractMesh, AxisType

    from trainer import sharding
    from trainer.run import summary
    from trainer.step import make_step_functions
    from trainer.target import padding

    num_devices = devices if devices is not None else jax.device_count()
    mesh_shape = sharding.resolve_mesh_shape(config.mesh, num_devices)
    sharding.check_batch_divisible(config, mesh_shape)
    uneven = padding.check(config, mesh_shape)
    if devices is None:
        from trainer.model.attention import check_available

        check_available(config.model.attention)
        mesh = sharding.make_mesh(config.mesh)
    else:
        mesh = AbstractMesh(tuple(mesh_shape.values()), sharding.AXES, axis_types=(AxisType.Auto,) * 3)
    step_fns = make_step_functions(config, mesh)
    text, record = summary.summarize(config, step_fns.abstract_state, mesh_shape)
    print(text)
    for u in uneven:
        print(f"uneven     {u.describe()}")
    record["uneven"] = {u.logical: {"size": u.size, "padded": u.padded, "axes": list(u.axes)} for u in uneven}
    print(json.dumps(record))
    return 0


@cli
def main(argv: list[str] | None = None) -> int:
    """Parse, validate and run (or dry-run) the job; a config mistake is one line on stderr and exit code 2."""
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.devices is not None and not args.dry_run:
        raise ConfigError("--devices only plans a --dry-run; a real run uses the devices present")
    if args.devices is not None and args.devices < 1:
        raise ConfigError(f"--devices {args.devices}: plan for at least 1 device, e.g. --devices 256")
    if (args.target or args.slices != 1) and not args.dry_run:
        raise ConfigError("--target and --slices only check a --dry-run; a real run compiles for the devices present")
    if args.target and args.devices is not None:
        raise ConfigError("give --target (a TPU slice or GPUs) or --devices (a device count), not both")
    if args.dry_run and args.target:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile only: this machine's TPU (if any) stays free
        from trainer.target.check import dry_run_target

        return dry_run_target(config, args.target, args.slices)
    if args.dry_run:
        return dry_run(config, args.devices)
    from trainer import cpu_tuning

    cpu_line = cpu_tuning.apply()  # XLA:CPU flags for this CPU: before JAX starts its backend
    from trainer.run.job import run

    return run(config, cpu_line=cpu_line)


if __name__ == "__main__":
    sys.exit(main())
