"""`python -m trainer.eval --checkpoint RUN[:STEP] --tasks arc_challenge:25,hellaswag:10,mmlu:5 --data-dir DIR`:
lm-evaluation-harness tasks and groups on a checkpoint, scored by the harness itself, offline from local task files.

A task spec is `name` or `name:SHOTS`; `--num-fewshot N` sets the shots of every spec without its own; `--suite`
names a seed's whole table (kodalite, smallcoder, leaderboard-v1). Generation tasks run on the KV-cache generator;
code tasks (humaneval, mbpp) need `--allow-code-execution` and run each program contained (trainer.eval.sandbox).
Prints the harness's table (every metric, its filter, n-shot, stderr), writes the results JSON (lm-eval's schema)
into RUN/eval/step_<STEP>.json and, with --output, to a file of your choice; --markdown adds a model-card table;
--text FILE scores text files as wikitext does (word and byte perplexity, bits per byte). docs/eval.md has the task
files and the details. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from trainer import cli_args
from trainer.errors import ConfigError, cli
from trainer.eval.sandbox import Limits
from trainer.eval.suites import ZERO_SHOT, TaskSpec, parse_specs, suite

TASKS_HELP = (
    "comma-separated task specs, `name` or `name:SHOTS` (arc_challenge:25,mmlu:5); default: the 8 zero-shot tasks "
    "when --data-dir is given and no --suite"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = cli_args.ArgumentParser(
        prog="python -m trainer.eval", description="Score a checkpoint on lm-evaluation-harness tasks from local files."
    )
    p.add_argument("--checkpoint", required=True, help="run folder, optionally :STEP (default: the latest step)")
    p.add_argument("--tasks", default=None, help=TASKS_HELP)
    p.add_argument(
        "--suite", default=None, help="a seed's table: kodalite, smallcoder or leaderboard-v1 (docs/eval.md)"
    )
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples for every spec without :SHOTS")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder of task files: <task>.jsonl or <task>.<split>.jsonl (.json, .parquet), group folders (mmlu/)",
    )
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
    p.add_argument("--apply-chat-template", action="store_true", help="prompt through the run's chat template")
    p.add_argument(
        "--fewshot-as-multiturn", action="store_true", help="with --apply-chat-template: each example a chat turn"
    )
    p.add_argument("--system-instruction", default=None, help="a system message before every prompt")
    p.add_argument(
        "--gen-kwargs",
        default=None,
        help="override every generation task's settings, as lm_eval does (max_gen_toks=512,temperature=0)",
    )
    p.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="let code tasks (humaneval, mbpp) run the model's programs, each in a contained child process",
    )
    p.add_argument("--code-timeout", type=float, default=10.0, help="wall seconds (and CPU seconds) per program")
    p.add_argument("--code-memory-mb", type=int, default=2048, help="address space per program, MiB")
    p.add_argument("--output", default=None, help="also write the results JSON (lm-eval's schema) here")
    p.add_argument("--markdown", action="store_true", help="also print a model-card table (the suite's metrics)")
    return p.parse_args(argv)


def task_list(args: argparse.Namespace) -> list[TaskSpec]:
    """The task specs the arguments name: --suite's, then --tasks' (--num-fewshot goes to the harness itself)."""
    specs = suite(args.suite) if args.suite else []
    if args.tasks:
        specs += parse_specs(args.tasks)
    elif args.data_dir and not args.suite:
        specs = parse_specs(list(ZERO_SHOT))
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError("--tasks names a task that --suite already has")
    return specs


def check_args(args: argparse.Namespace, tasks: list[TaskSpec]) -> None:
    """Fail before loading anything on arguments that can't work."""
    if not tasks and not args.text:
        raise ConfigError("nothing to evaluate: pass --tasks or --suite with --data-dir DIR, or --text FILE")
    if tasks and not args.data_dir:
        raise ConfigError("--tasks read their documents from --data-dir DIR (one file per task, docs/eval.md)")
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise ConfigError(f"--data-dir {args.data_dir} is not a folder")
    if args.limit is not None and args.limit <= 0:
        raise ConfigError("--limit must be positive")
    if args.output and os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output} is a folder; name a .json file")
    if args.fewshot_as_multiturn and not args.apply_chat_template:
        raise ConfigError("--fewshot-as-multiturn needs --apply-chat-template")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ConfigError("--num-fewshot must be ≥ 0")
    if args.code_timeout <= 0 or args.code_memory_mb <= 0:
        raise ConfigError("--code-timeout and --code-memory-mb must be positive")


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

    if tasks:  # every task file is found, and code execution allowed, before the checkpoint is loaded
        harness_tasks.check_tasks(tasks, args.data_dir, args.num_fewshot)
        code = [t.name for t in tasks if harness_tasks.is_code_task(t)]
        if code and not args.allow_code_execution:
            raise ConfigError(f"{', '.join(code)} run the model's programs: pass --allow-code-execution (docs/eval.md)")
    run_dir, _ = parse_reference(args.checkpoint)
    started = time.perf_counter()
    lm = TrainerLM(checkpoint=args.checkpoint, batch_size=args.batch_size)
    results = harness_tasks.evaluate(
        lm,
        tasks,
        args.data_dir,
        args.text,
        limit=args.limit,
        bootstrap_iters=args.bootstrap_iters,
        allow_code_execution=args.allow_code_execution,
        code_limits=Limits(
            wall_s=args.code_timeout, cpu_s=max(1, int(args.code_timeout)), memory_bytes=args.code_memory_mb << 20
        ),
        apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        system_instruction=args.system_instruction,
        gen_kwargs=args.gen_kwargs,
        num_fewshot=args.num_fewshot,
    )
    results["config"] = {
        **results.get("config", {}),
        "model": "trainer",
        "checkpoint": args.checkpoint,
        "step": lm.step,
    }
    print(report.harness_table(results))
    if args.markdown:
        print(report.card_markdown(results, {t.name: t.metric for t in tasks if t.metric}))
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
