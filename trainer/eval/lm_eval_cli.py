"""`python -m trainer.eval.lm_eval_cli ARGS`: the `lm_eval` command itself, with our model registered as `trainer`.

lm-evaluation-harness finds models only in its own registry (it has no plugin entry points), so the stock
`lm_eval` script can't see ours; this runs the same CLI after registering it:

    python -m trainer.eval.lm_eval_cli --model trainer --model_args checkpoint=runs/tiny:300 --tasks hellaswag

Every `lm_eval` option works (`--include_path`, `--limit`, `--output_path`, `--log_samples`, …). With `--model
trainer`, the results also land where every other evaluation of the run does: RUN/eval/step_<STEP>.json (merged with
what is there), which the model card reads. The harness writes them to `--output_path` (a temporary folder when none
is given); they are read back from there.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer import storage
from trainer.checkpoint import parse_reference, resolve_step
from trainer.eval import report


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in `argv` (the last one), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def trainer_checkpoint(argv: list[str]) -> str | None:
    """`checkpoint=` of `--model_args` when the model is `trainer` (key=value pairs or a JSON object)."""
    if option(argv, "--model") != "trainer":
        return None
    args = option(argv, "--model_args") or ""
    if args.strip().startswith("{"):
        return json.loads(args).get("checkpoint")
    pairs = dict(p.split("=", 1) for p in args.split(",") if "=" in p)
    return pairs.get("checkpoint")


def newest_results(folder: Path, since: float) -> dict[str, Any] | None:
    """The newest `results_*.json` the harness wrote under `folder` (or the file itself) after `since`, or None."""
    candidates = [folder] if folder.is_file() else list(folder.rglob("results_*.json"))
    files = [p for p in candidates if p.stat().st_mtime >= since]
    if not files:
        return None
    return json.loads(max(files, key=lambda p: p.stat().st_mtime).read_text())


def main() -> None:
    """Register `trainer`, hand the command line to the harness's CLI, then file a trainer run's results."""
    from lm_eval.__main__ import cli_evaluate

    import trainer.eval.harness  # noqa: F401  (registers the `trainer` model)

    argv = sys.argv[1:]
    checkpoint = trainer_checkpoint(argv)
    with tempfile.TemporaryDirectory(prefix="trainer-lm-eval-") as tmp:
        output = option(argv, "--output_path")
        if checkpoint is not None and output is None:
            output = tmp
            sys.argv = [sys.argv[0], *argv, "--output_path", tmp]
        started = time.time()
        cli_evaluate()
        if checkpoint is None or output is None:
            return
        results = newest_results(Path(output), started - 1)
    if results is None:
        return
    run_dir, step = parse_reference(checkpoint)
    step = resolve_step(run_dir, step)
    results["config"] = {**results.get("config", {}), "checkpoint": checkpoint, "step": step}
    path = storage.join(run_dir, "eval", f"step_{step}.json")
    report.write(path, report.merge_into(path, results))
    print(f"results also in {path}")


if __name__ == "__main__":
    main()
