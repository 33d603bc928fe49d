"""The goodput ledger: where a run's wall time went, across every restart, in `RUN/goodput.json`.

Each start of the job appends an entry: its wall-clock start, the step it started from, the seconds per category of
the loop's `Timer` (startup, compile, step, data_wait, checkpoint, eval) and the last step logged, rewritten at every
logged step (so a run killed without warning keeps its last record) and at its end. The next start settles the entry
before it: the steps between its own restored checkpoint and the previous entry's last logged step were trained
twice; their share of that entry's step time is work lost to the crash. The time between one entry's last record and
the next entry's start (the crash unnoticed, the supervisor's back-off, the interpreter starting) is a gap.

`summary` adds the entries into shares of the whole that sum to 1: productive (step time not lost), startup,
compile, data_wait, checkpoint, eval, lost and gaps. The supervisor (`trainer.run.supervise`) tells each restart its
number, its back-off and how the previous job exited through the environment; the ledger keeps them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from trainer import storage
from trainer.run.hooks import StepInfo
from trainer.run.metrics import duration
from trainer.run.supervise import BACKOFF_ENV, PREVIOUS_EXIT_ENV, RESTART_ENV
from trainer.run.timer import CATEGORIES, Timer

LEDGER_FILE = "goodput.json"
SHARES = ("productive", "startup", "compile", "data_wait", "checkpoint", "eval", "lost", "gaps")
LABELS = {
    "productive": "productive",
    "startup": "start-up",
    "compile": "compile",
    "data_wait": "data wait",
    "checkpoint": "checkpoint",
    "eval": "eval",
    "lost": "lost to crashes",
    "gaps": "gaps between runs",
}
REMOTE_EVERY_S = 30.0  # a gs:// ledger is rewritten at most this often between the start and the end


def read_entries(run_dir: str) -> list[dict[str, Any]]:
    """The ledger's entries, oldest first; [] when the run has none yet."""
    path = storage.join(run_dir, LEDGER_FILE)
    return list(storage.read_json(path)["runs"]) if storage.exists(path) else []


def settle(previous: dict[str, Any], restored_step: int) -> None:
    """Charge to `previous` the steps it logged past `restored_step` (trained again now) as lost work: their share of
    its step time, at its mean seconds per step (its first step compiled and is not among them)."""
    lost = max(int(previous["last_step"]) - restored_step, 0)
    ran = int(previous["last_step"]) - int(previous["first_step"])
    step_seconds = float(previous["seconds"]["step"])
    per_step = step_seconds / max(ran - 1, 1)
    previous["lost_steps"] = lost
    previous["lost_seconds"] = min(lost * per_step, step_seconds)


def summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds and shares (summing to 1) of the ledger's wall time per kind of use, with the run's restart facts."""
    seconds = dict.fromkeys(SHARES, 0.0)
    for i, entry in enumerate(entries):
        for category in CATEGORIES:
            seconds[category if category != "step" else "productive"] += float(entry["seconds"][category])
        seconds["productive"] -= float(entry.get("lost_seconds", 0.0))
        seconds["lost"] += float(entry.get("lost_seconds", 0.0))
        if i:
            seconds["gaps"] += max(float(entry["start"]) - float(entries[i - 1]["end"]), 0.0)
    wall = sum(seconds.values())
    return {
        "wall_s": wall,
        "seconds": seconds,
        "shares": {k: (v / wall if wall > 0 else 0.0) for k, v in seconds.items()},
        "runs": len(entries),
        "lost_steps": sum(int(e.get("lost_steps", 0)) for e in entries),
        "backoff_s": sum(float(e.get("backoff_s") or 0.0) for e in entries),
        "last_step": int(entries[-1]["last_step"]) if entries else 0,
    }


def describe(total: dict[str, Any]) -> str:
    """One line: the productive share, then every other share, the runs and the lost steps."""
    shares = total["shares"]
    others = ", ".join(f"{LABELS[k]} {100 * shares[k]:.1f} %" for k in SHARES[1:] if k != "lost")
    lost = f"lost to crashes {100 * shares['lost']:.1f} % ({total['lost_steps']} steps)"
    runs = total["runs"]
    return (
        f"goodput: {100 * shares['productive']:.1f} % of {duration(total['wall_s'])} productive over {runs} "
        f"run{'s' if runs != 1 else ''} ({others}, {lost})"
    )


def card_line(run_dir: str) -> str | None:
    """The ledger's one-line summary for the model card; None for a run that kept no ledger."""
    entries = read_entries(run_dir)
    return describe(summary(entries)) if entries else None


class Ledger:
    """This job's entry of `RUN/goodput.json`, kept up to date from the job's `Timer` (process 0 writes)."""

    def __init__(
        self,
        run_dir: str,
        timer: Timer,
        restored_step: int,
        enabled: bool,
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] = os.environ,
    ):
        self.path = storage.join(run_dir, LEDGER_FILE)
        self.timer, self.enabled, self._clock = timer, enabled, clock
        self._remote = storage.is_remote(run_dir)
        self._written = 0.0
        self.entries = read_entries(run_dir) if enabled else []
        totals = timer.totals()
        self.start = clock() - sum(totals.values())
        if self.entries:
            previous = self.entries[-1]
            settle(previous, restored_step)
            if previous.get("exit") is None and env.get(PREVIOUS_EXIT_ENV):
                previous["exit"] = int(env[PREVIOUS_EXIT_ENV])
        self.entry: dict[str, Any] = {
            "start": self.start,
            "end": self.start + sum(totals.values()),
            "first_step": restored_step,
            "last_step": restored_step,
            "seconds": totals,
            "exit": None,
            "restart": int(env.get(RESTART_ENV, 0)),
            "backoff_s": float(env.get(BACKOFF_ENV, 0.0)),
        }
        self.entries.append(self.entry)
        self._write(force=True)

    def record(self, step: int | None = None, exit_code: int | None = None) -> None:
        """Bring this job's entry up to now (and `step`, the last step logged; `exit_code` at the end) and write it."""
        totals = self.timer.totals()
        self.entry["seconds"] = totals
        self.entry["end"] = self.start + sum(totals.values())
        if step is not None:
            self.entry["last_step"] = step
        if exit_code is not None:
            self.entry["exit"] = exit_code
        self._write(force=exit_code is not None)

    def after_step(self, info: StepInfo) -> None:
        """The loop's `goodput` hook, run with the `log` hook's interval: record the step just logged."""
        self.record(info.step)

    def close(self, exit_code: int) -> str:
        """Record the job's end and return the ledger's one-line summary."""
        self.record(exit_code=exit_code)
        return describe(summary(self.entries))

    def _write(self, force: bool) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if self._remote and not force and now - self._written < REMOTE_EVERY_S:
            return
        self._written = now
        storage.write_json_atomic(self.path, {"runs": self.entries, "summary": summary(self.entries)})
