"""`python -m trainer.goodput RUN_DIR [--json]`: where a run's wall time went, across its restarts.

Prints `RUN_DIR/goodput.json` (`trainer.run.goodput`) for a finished or a running run: one row per start of the job
(its steps, its seconds, how it ended, the steps its crash lost), then the shares of the whole — productive steps,
start-up, compilation, data waits, checkpoint blocking, evaluation, work lost to crashes, gaps between runs — which
sum to 1. With `--json` the last line is the summary as one JSON object.
"""

from __future__ import annotations

import json
import sys
import time

from trainer import cli_args, storage
from trainer.errors import CheckpointError, cli
from trainer.run.goodput import LEDGER_FILE, describe, read_entries, summary
from trainer.run.metrics import duration


def _ending(entry: dict, last: bool, now: float) -> str:
    code = entry.get("exit")
    if code is not None:
        return {0: "finished", 143: "stopped (SIGTERM)", 130: "interrupted", 3: "non-finite"}.get(
            code, f"exit {code}" if code >= 0 else f"killed by signal {-code}"
        )
    if last:
        return f"running, or ended without a record (last record {duration(now - entry['end'])} ago)"
    return "ended without a record (killed)"


def table(entries: list[dict], now: float) -> str:
    """One row per start of the job: steps, wall time, the time before it since the previous run, how it ended."""
    lines = [f"{'run':>3}  {'steps':>13}  {'wall':>7}  {'gap before':>10}  {'lost steps':>10}  ended"]
    for i, entry in enumerate(entries):
        gap = duration(max(entry["start"] - entries[i - 1]["end"], 0.0)) if i else "-"
        steps = f"{entry['first_step']} → {entry['last_step']}"
        lines.append(
            f"{i + 1:>3}  {steps:>13}  {duration(entry['end'] - entry['start']):>7}  {gap:>10}  "
            f"{entry.get('lost_steps', 0):>10}  {_ending(entry, i == len(entries) - 1, now)}"
        )
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    """Print a run's goodput ledger; one line and exit 2 when the folder holds none."""
    parser = cli_args.ArgumentParser(prog="python -m trainer.goodput", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", help="the run folder (local or gs://)")
    parser.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    args = parser.parse_args(argv)
    storage.check_reachable(args.run_dir, "the run folder")
    entries = read_entries(args.run_dir)
    if not entries:
        raise CheckpointError(
            f"{storage.join(args.run_dir, LEDGER_FILE)} is missing: not a run folder, or the run never started a step"
        )
    total = summary(entries)
    print(table(entries, time.time()))
    print(describe(total))
    if args.json:
        print(json.dumps(total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
