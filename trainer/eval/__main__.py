"""`python -m trainer.eval --checkpoint RUN[:STEP] --tasks hellaswag,arc_easy,... --data-dir DIR`: zero-shot tasks of
lm-evaluation-harness on a checkpoint, scored by the harness itself, offline from local task files.

Prints the harness's table (acc, acc_norm, perplexity, stderr), writes the results JSON (lm-eval's schema) into
RUN/eval/step_<STEP>.json and, with --output, to a file of your choice; --markdown adds a model-card table;
--text FILE scores text files as wikitext does (word and byte perplexity, bits per byte). docs/eval.md has the task
files and the details. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from trainer.errors import ConfigError, cli

TASKS_HELP = "comma-separated lm-eval task names (default: the 8 zero-shot tasks when --data-dir is given)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m trainer.eval", description="Score a checkpoint on lm-evaluation-harness tasks from local files."
    )
    p.add_argument("--checkpoint", required=True, help="run folder, optionally :STEP (default: the latest step)")
    p.add_argument("--tasks", default=None, help=TASKS_HELP)
    p.add_argument("--data-dir", default=None, help="folder with one file per task: <task>.jsonl / .json / .parquet")
    p.add_argument(
        "--text",
        nargs="+",
        default=[],
        metavar="FILE",
        help="text files to score like wikitext (each file one document): word/byte perplexity",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N documents of each task")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="rows per device call (rounded up to a multiple of the data-parallel size)",
    )
    p.add_argument(
        "--bootstrap-iters",
        type=int,
        default=1000,
        help="resamples for the stderr of perplexities (acc stderrs are exact); 0: no stderrs",
    )
    p.add_argument("--output", default=None, help="also write the results JSON (lm-eval's schema) here")
    p.add_argument("--markdown", action="store_true", help="also print a model-card table (acc, acc_norm, average)")
    return p.parse_args(argv)


def task_list(args: argparse.Namespace) -> list[str]:
    """The tasks the arguments name."""
    if args.tasks:
        return [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.data_dir:
        from trainer.eval.tasks import ZERO_SHOT

        return list(ZERO_SHOT)
    return []


def check_args(args: argparse.Namespace, tasks: list[str]) -> None:
    """Fail before loading anything on arguments that can't work."""
    if not tasks and not args.text:
        raise ConfigError("nothing to evaluate: pass --tasks with --data-dir DIR, or --text FILE")
    if tasks and not args.data_dir:
        raise ConfigError("--tasks read their documents from --data-dir DIR (one file per task, docs/eval.md)")
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise ConfigError(f"--data-dir {args.data_dir} is not a folder")
    if args.limit is not None and args.limit <= 0:
        raise ConfigError("--limit must be positive")
    if args.output and os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output} is a folder; name a .json file")


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on input a person must fix."""
    args = parse_args(argv)
    tasks = task_list(args)
    check_args(args, tasks)
    try:
        from trainer.eval import report
        from trainer.eval import tasks as harness_tasks
        from trainer.eval.harness import TrainerLM
    except ImportError as e:
        raise ConfigError(
            f'evaluation needs lm-evaluation-harness ({e.name} is missing): pip install -e ".[eval]"'
        ) from None
    from trainer import storage
    from trainer.checkpoint import parse_reference

    for task in tasks:  # every task file is found before the checkpoint is loaded
        harness_tasks.task_file(args.data_dir, task)
    run_dir, _ = parse_reference(args.checkpoint)
    started = time.perf_counter()
    lm = TrainerLM(checkpoint=args.checkpoint, batch_size=args.batch_size)
    results = harness_tasks.evaluate(
        lm, tasks, args.data_dir, args.text, limit=args.limit, bootstrap_iters=args.bootstrap_iters
    )
    results["config"] = {
        **results.get("config", {}),
        "model": "trainer",
        "checkpoint": args.checkpoint,
        "step": lm.step,
    }
    print(report.harness_table(results))
    if args.markdown:
        print(report.card_markdown(results))
    path = storage.join(run_dir, "eval", f"step_{lm.step}.json")
    report.write(path, report.merge_into(path, results))
    if args.output:
        report.write(args.output, results)
    print(
        f"step {lm.step}: {sum(results['n-samples'][t]['effective'] for t in results['n-samples'])} documents in "
        f"{time.perf_counter() - started:.1f}s; results in {path}" + (f" and {args.output}" if args.output else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
