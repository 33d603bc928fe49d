"""Running the TPU VM launcher's steps: commands without a shell, TPU API requests through google-cloud-tpu, and
polling a node's state. The steps themselves are built by launch/tpu_steps.py; what to run when is launch/tpu_vm.py's.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from launch.tpu_job import Job, Step


class StepFailed(Exception):
    """A command or API call of the plan failed (exit code 1, not 2)."""


class Runner:
    """Runs Steps: commands with subprocess (no shell), API requests with google-cloud-tpu."""

    def __init__(self, job: Job, wait_s: float) -> None:
        self.job, self.wait_s, self._clients = job, wait_s, {}

    def _client(self, api: str):
        mod_name, cls_name, method = api.split(".")
        if mod_name not in self._clients:
            from google.cloud import tpu_v2, tpu_v2alpha1

            mod = {"tpu_v2": tpu_v2, "tpu_v2alpha1": tpu_v2alpha1}[mod_name]
            self._clients[mod_name] = getattr(mod, cls_name)()
        return getattr(self._clients[mod_name], method)

    def call(self, step: Step) -> None:
        """Run a step to completion; raise StepFailed if it fails."""
        print(f"+ {step.render()[:300]}", file=sys.stderr, flush=True)
        if step.argv:
            rc = subprocess.run(list(step.argv)).returncode
            if rc != 0:
                raise StepFailed(f"exit code {rc}: {shlex.join(step.argv)[:300]}")
            return
        try:
            result = self._client(step.api)(request=step.request)
            if hasattr(result, "result"):  # long-running operation
                result.result(timeout=self.wait_s)
        except Exception as e:  # noqa: BLE001 - surfaced as one line
            raise StepFailed(f"{step.api}: {e}") from e

    def capture(self, step: Step) -> str | None:
        """Run a command step and return its stdout, or None if it failed."""
        r = subprocess.run(list(step.argv), capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    def state(self, step: Step) -> str | None:
        """State of the node / queued resource (e.g. READY, PREEMPTED), or None if it does not exist."""
        if step.argv:
            r = subprocess.run(list(step.argv), capture_output=True, text=True)
            if r.returncode == 0:
                return r.stdout.strip() or "UNKNOWN"
            if "NOT_FOUND" in r.stderr or "not found" in r.stderr.lower():
                return None
            raise StepFailed(f"{shlex.join(step.argv)[:300]}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        from google.api_core import exceptions

        try:
            res = self._client(step.api)(request=step.request)
        except exceptions.NotFound:
            return None
        except Exception as e:  # noqa: BLE001
            raise StepFailed(f"{step.api}: {e}") from e
        return res.state.state.name if self.job.queued else res.state.name

    def is_dead(self, describe: Step) -> bool:
        """Whether the node (or queued resource) is gone or in a dead state; False when its state can't be read."""
        try:
            st = self.state(describe)
        except StepFailed:
            return False
        return st is None or st in self.job.dead_states

    def wait(self, step: Step, until: str) -> None:
        """Poll the state until `until`; fail on a dead state, on absence, or after wait_s."""
        deadline, last = time.monotonic() + self.wait_s, ""
        while True:
            st = self.state(step)
            if st != last:
                print(f"  state: {st or 'absent'}", file=sys.stderr, flush=True)
                last = st or "absent"
            if st == until:
                return
            if st is None or st in self.job.dead_states:
                raise StepFailed(f"{self.job.name} is {st or 'gone'} while waiting for {until}")
            if time.monotonic() > deadline:
                raise StepFailed(f"{self.job.name} not {until} after {self.wait_s / 60:g} min (state {st})")
            time.sleep(max(self.job.poll_s, 0.1))
