"""`log.profile_steps: [start, end]`: a jax.profiler trace of those train steps in `run.dir/profile/`.

The trace (`plugins/profile/<time>/<host>.xplane.pb` for TensorBoard's profile plugin / XProf, and
`perfetto_trace.json.gz` for ui.perfetto.dev) holds every step in the window, each marked as a `train` step with its
number. Process 0 traces its own devices. Tracing starts before step `start` is dispatched and stops once step `end`
has finished on the devices; a run resumed inside the window traces the rest of it. For a gs:// run folder the trace
is written locally and copied up when it stops.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import jax

from trainer import storage
from trainer.run.hooks import StepInfo


class StepProfiler:
    """Starts and stops one jax.profiler trace around the configured window of train steps."""

    def __init__(self, window: list[int] | None, run_dir: str, enabled: bool, say: Any = print):
        self.window = tuple(window) if window and enabled else None
        self.run_dir = run_dir
        self.say = say
        self.active = False
        self._local: str | None = None

    def step(self, step: int) -> contextlib.AbstractContextManager:
        """Enter around dispatching train step `step`: starts the trace at the window's first step (or the first
        step run, when a resumed run starts inside the window) and marks the step in the trace."""
        if self.window is None:
            return contextlib.nullcontext()
        start, end = self.window
        if not self.active and start <= step <= end:
            self._start()
        if self.active:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    @property
    def last_step(self) -> int | None:
        """The window's last step (where `after` writes the trace), or None without a window."""
        return self.window[1] if self.window is not None else None

    def after(self, info: StepInfo) -> None:
        """The loop's `profile` hook: after the window's last step, wait for it and write the trace."""
        if self.active and self.window is not None and info.step >= self.window[1]:
            jax.block_until_ready(info.metrics)
            self.stop()

    def _start(self) -> None:
        target = storage.join(self.run_dir, "profile")
        if storage.is_remote(target):
            self._local = tempfile.mkdtemp(prefix="trainer-profile-")
        else:
            os.makedirs(target, exist_ok=True)
        jax.profiler.start_trace(self._local or target, create_perfetto_trace=True)
        self.active = True

    def stop(self) -> None:
        """Write the trace if one is running (also when the run stops inside the window)."""
        if not self.active:
            return
        jax.profiler.stop_trace()
        self.active = False
        target = storage.join(self.run_dir, "profile")
        if self._local is not None:
            for root, _, files in os.walk(self._local):
                for name in files:
                    local = os.path.join(root, name)
                    relative = os.path.relpath(local, self._local).replace(os.sep, "/")
                    with open(local, "rb") as f:
                        storage.write_bytes_atomic(storage.join(target, relative), f.read())
        start, end = self.window
        self.say(
            f"profile of steps {start}..{end} written to {target} (tensorboard --logdir {target}, or "
            "perfetto_trace.json.gz in ui.perfetto.dev)"
        )
