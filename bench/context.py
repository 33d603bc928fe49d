"""Did a context extension work? Validation loss at the original and the extended length, before and after.

    python -m bench.context --base runs/tiny --extended runs/extend-tiny [--batches 8]

Reads the extended run's config (its length, its `model.rope_scaling`, its data) and evaluates on the held-out split,
every figure on the same validation tokens (the first `--batches` × `--batch-size` rows of the original length, the
same text cut into half as many rows of twice the length):
  base_at_original          the base run at its own length (what pretraining reached)
  base_unscaled_at_extended the base run at the new length as it is: positions it never saw
  base_scaled_at_extended   the base run at the new length with the extension's scaling, before any training
  extended_at_extended      the extended run at the new length (the recipe's result)
  extended_at_original      the extended run at the old length (what the extension cost there)
Prints ONE JSON object with those losses, the lengths and the scaling. The base run must be the extension's start.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any

if __package__ in (None, ""):  # `python bench/context.py`: make the repo importable like `python -m bench.context`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import log, machine_info, print_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.context", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the run the extension started from (RUN[:STEP])")
    p.add_argument("--extended", required=True, help="the extended run (RUN[:STEP])")
    p.add_argument("--batches", type=int, default=8, help="validation batches per figure (eval.batches)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per validation batch")
    return p.parse_args(argv)


def eval_loss(config: Any, params: Any, seq_len: int, model: Any, batches: int) -> float:
    """Validation loss of `params` under `model` on `batches` batches of `seq_len`-token rows of the held-out data."""
    from trainer import sharding
    from trainer.eval.loss import evaluate
    from trainer.step import make_step_functions

    config = dataclasses.replace(
        config,
        model=model,
        eval=dataclasses.replace(config.eval, batches=batches),
        train=dataclasses.replace(config.train, seq_len=seq_len, microbatches=1),
    )
    step_fns = make_step_functions(config, sharding.make_mesh(config.mesh))
    return float(evaluate(config, step_fns, params)["eval_loss"])


def main(argv: list[str] | None = None) -> None:
    from trainer.checkpoint import load_params

    args = parse_args(argv)
    base_config, base_params, base_step = load_params(args.base)
    config, params, step = load_params(args.extended)
    config = dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, global_batch_size=args.batch_size),
        mesh=dataclasses.replace(config.mesh, data=1, fsdp=-1, tensor=1),
    )
    short, long = base_config.train.seq_len, config.train.seq_len
    if long % short or args.batches * short % long:
        raise SystemExit(f"the lengths {short} and {long} need --batches a multiple of {long // math.gcd(long, short)}")
    batches = {short: args.batches, long: args.batches * short // long}  # the same tokens at both lengths
    unscaled = dataclasses.replace(
        config.model, rope_scaling=base_config.model.rope_scaling, rope_theta=base_config.model.rope_theta
    )
    figures = {}
    for name, p, length, model in [
        ("base_at_original", base_params, short, unscaled),
        ("base_unscaled_at_extended", base_params, long, unscaled),
        ("base_scaled_at_extended", base_params, long, config.model),
        ("extended_at_extended", params, long, config.model),
        ("extended_at_original", params, short, config.model),
    ]:
        figures[name] = eval_loss(config, p, length, model, batches[length])
        log(f"{name}: {figures[name]:.4f}")
    print_json(
        {
            "base": f"{args.base} (step {base_step})",
            "extended": f"{args.extended} (step {step})",
            "original_length": short,
            "extended_length": long,
            "rope_scaling": dataclasses.asdict(config.model.rope_scaling),
            "validation_tokens_per_figure": args.batches * args.batch_size * short,
            "eval_loss": figures,
            "machine": machine_info(),
        }
    )


if __name__ == "__main__":
    main()
