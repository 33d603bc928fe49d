"""Faults for tests, plugged into the trainer's step loop as hooks: `runs.trainer_env` puts this folder on PYTHONPATH
and sets TRAINER_HOOKS=fault_injection:install for every trainer subprocess. Each fault reads its steps from an
environment variable, so a test (or a wrapper script between the test and the trainer) chooses them per process:

    TRAINER_TEST_POISON_STEPS=3,4  these steps' batches get a NaN loss mask (non-finite loss and gradients)
    TRAINER_TEST_STOP_AT=5         SIGTERM arrives right after step 5 is dispatched
    TRAINER_TEST_CRASH_AT=5        the process dies (exit code 1, no clean-up) right after step 5
    TRAINER_TEST_KILL_ONCE_AT=5,9  SIGKILL right after step 5 (and 9), each once: a file in TRAINER_TEST_KILL_MARKS
                                   remembers it, so the job a supervisor restarts trains past that step
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from trainer.run.hooks import Hooks, StepInfo

POISON, STOP, CRASH = "TRAINER_TEST_POISON_STEPS", "TRAINER_TEST_STOP_AT", "TRAINER_TEST_CRASH_AT"
KILL_ONCE, KILL_MARKS = "TRAINER_TEST_KILL_ONCE_AT", "TRAINER_TEST_KILL_MARKS"


def install(hooks: Hooks) -> None:
    """The `TRAINER_HOOKS` entry point: add the hooks of the faults this process's environment asks for."""
    poisoned, stop_at, crash_at = _steps(POISON), _steps(STOP), _steps(CRASH)
    if poisoned:
        hooks.add_batch_hook(lambda step, batch: _poison(batch) if step in poisoned else batch)
    if stop_at or crash_at:
        hooks.add("faults", lambda info: _after_step(info, stop_at, crash_at), every=1)
    kill_once = _steps(KILL_ONCE)
    if kill_once:
        hooks.add("kill", lambda info: _kill_once(info.step, kill_once), every=1)


def _steps(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(name, "").split(",") if s.strip()}


def _poison(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "loss_mask": np.full_like(batch["loss_mask"], np.nan)}


def _after_step(info: StepInfo, stop_at: set[int], crash_at: set[int]) -> None:
    if info.step in stop_at:
        signal.raise_signal(signal.SIGTERM)  # the trainer's own handler runs before this returns
    if info.step in crash_at:
        os._exit(1)


def _kill_once(step: int, kill_at: set[int]) -> None:
    mark = os.path.join(os.environ[KILL_MARKS], f"killed-{step}")
    if step in kill_at and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
