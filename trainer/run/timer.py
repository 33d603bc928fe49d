"""Where a run's wall time goes, by category: one stopwatch that is always running in exactly one of them.

- `startup`: from the job's start to the first train step (checks, data preparation, building and restoring the state);
- `compile`: the first train step of this process (tracing, compiling and running it);
- `step`: dispatching train steps and waiting for the devices to finish them (the step line's device reads);
- `data_wait`: waiting for the next batch;
- `checkpoint`: the part of a save the loop waits for (copying arrays off the devices, the final write);
- `eval`: measuring the model instead of training it: validation loss, lm-eval tasks, writing a profile trace, the
  closing sample.

`totals()` adds them up in one dict: the categories sum to the wall time since the timer started. Throughput counts
`step`, `data_wait` and `checkpoint` time only (`window()`), so an evaluation or the compilation never lowers tokens/s.
The goodput ledger (`trainer.run.goodput`) keeps these totals for every start of a run in `RUN/goodput.json` and adds
them up across restarts, with the work lost to crashes and the gaps between starts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

CATEGORIES = ("startup", "compile", "step", "data_wait", "checkpoint", "eval")
TRAINING = ("step", "data_wait", "checkpoint")  # the time a throughput figure divides by


class Timer:
    """Accumulates wall time per category; starts in `startup` when created."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._totals = dict.fromkeys(CATEGORIES, 0.0)
        self.category = "startup"
        self._since = clock()
        self._window_start = 0.0  # training seconds when the current throughput window began

    def switch(self, category: str) -> None:
        """Charge the time since the last switch to the current category and continue in `category`.

        Leaving `compile` starts the first throughput window: the compiled step is no step's time.
        """
        if category not in self._totals:
            raise ValueError(f"unknown timer category {category!r}; one of {', '.join(CATEGORIES)}")
        now = self._clock()
        self._totals[self.category] += now - self._since
        self._since = now
        leaving_compile = self.category == "compile" and category != "compile"
        self.category = category
        if leaving_compile:
            self._window_start = self._training(self._totals)

    @contextlib.contextmanager
    def during(self, category: str) -> Iterator[None]:
        """Charge the time inside the `with` block to `category`, then return to the category before it."""
        previous = self.category
        self.switch(category)
        try:
            yield
        finally:
            self.switch(previous)

    def totals(self) -> dict[str, float]:
        """Seconds per category so far, the running interval included (every category present, in order)."""
        out = dict(self._totals)
        out[self.category] += self._clock() - self._since
        return out

    def window(self) -> float:
        """Training seconds (step, data wait, checkpoint) since the previous call, or since compilation ended: what
        tokens/s over the steps in between divides by."""
        now = self._training(self.totals())
        seconds, self._window_start = now - self._window_start, now
        return seconds

    @staticmethod
    def _training(totals: dict[str, float]) -> float:
        return sum(totals[c] for c in TRAINING)
