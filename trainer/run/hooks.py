"""The step loop's periodic actions, each registered with its interval.

A hook added with `every=N` runs after every N-th step and, unless `at_last=False`, after the run's last step; hooks
run in the order they were added, each timed under its category of the run's `Timer`. A hook may end the run by
returning an exit code. Hooks added with `at_end` run once, after the last step, when training finished normally.
Batch hooks see (and may replace) each batch of this process before its step.

The loop adds its own hooks (log, eval, tasks, stop, checkpoint; the sample at the end). More can be plugged in without
editing it: `TRAINER_HOOKS=package.module:function[,...]` names functions that are called with the loop's `Hooks`
before the loop adds its own, so theirs run first each step (the test suite injects its faults this way).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from typing import Any

from trainer.errors import ConfigError
from trainer.run.timer import Timer

PLUGINS_ENV = "TRAINER_HOOKS"


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a hook sees after a step: its number, the run's last step, the new state and the step's metrics (device
    arrays: reading them waits for the step to finish)."""

    step: int
    last: int
    state: Any
    metrics: dict[str, Any]


StepHook = Callable[[StepInfo], int | None]  # returns an exit code to end the run, or None to go on
BatchHook = Callable[[int, dict[str, Any]], dict[str, Any]]  # (step about to run, batch) → the batch to train on


@dataclasses.dataclass(frozen=True)
class Hook:
    """One registered action: `run` after every `every`-th step (None: only at the end), timed as `category`."""

    name: str
    run: StepHook
    every: int | None
    category: str = "step"
    at_last: bool = True

    def due(self, step: int, last: int) -> bool:
        """Whether the hook runs after `step` of a run that ends at `last`."""
        return (self.every is not None and step % self.every == 0) or (self.at_last and step == last)


class Hooks:
    """The hooks of one run, in order, and the timer their time is charged to."""

    def __init__(self, timer: Timer):
        self.timer = timer
        self._after_step: list[Hook] = []
        self._at_end: list[Hook] = []
        self._batch: list[BatchHook] = []

    def add(self, name: str, run: StepHook, every: int, category: str = "step", at_last: bool = True) -> None:
        """Run `run(info)` after every `every`-th step (and after the last one unless `at_last=False`)."""
        if every < 1:
            raise ValueError(f"hook {name}: every={every} must be at least 1")
        self._after_step.append(Hook(name, run, every, category, at_last))

    def at_end(self, name: str, run: StepHook, category: str = "step") -> None:
        """Run `run(info)` once when the last step is done and saved (not after a stop request or an error)."""
        self._at_end.append(Hook(name, run, None, category))

    def add_batch_hook(self, run: BatchHook) -> None:
        """Pass each batch of this process through `run(step, batch)` before its step (to inspect or alter it)."""
        self._batch.append(run)

    def batch(self, step: int, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch that step `step` trains on, after every batch hook."""
        for run in self._batch:
            batch = run(step, batch)
        return batch

    def after_step(self, info: StepInfo) -> int | None:
        """Run the hooks due after `info.step`; the first exit code one returns ends the run (later ones don't run)."""
        for hook in self._after_step:
            if hook.due(info.step, info.last):
                with self.timer.during(hook.category):
                    code = hook.run(info)
                if code is not None:
                    return code
        return None

    def finish(self, info: StepInfo) -> None:
        """Run the end-of-training hooks."""
        for hook in self._at_end:
            with self.timer.during(hook.category):
                hook.run(info)


def install_plugins(hooks: Hooks, spec: str | None = None) -> None:
    """Call each `module:function` named by TRAINER_HOOKS (or `spec`) with `hooks`: the one place it is read."""
    spec = os.environ.get(PLUGINS_ENV, "") if spec is None else spec
    for entry in (s.strip() for s in spec.split(",")):
        if not entry:
            continue
        module, _, name = entry.partition(":")
        if not module or not name:
            raise ConfigError(f"{PLUGINS_ENV}={spec}: expected package.module:function (comma-separated)")
        try:
            function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{PLUGINS_ENV}: can't load {entry} ({e})") from None
        function(hooks)
