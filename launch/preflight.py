"""What a TPU launch checks before it creates (and pays for) anything: the config loads, names no placeholder
bucket, its paths are reachable from here, and its train step fits the accelerator's HBM.

The checks are the trainer's own (`trainer.run.job.check_reachable`, `trainer.target`), run on this machine: a config
the workers would refuse is refused here, before a VM exists. The fit check compiles the real train and eval steps
for the accelerator's topology when libtpu is installed (`pip install -e ".[tpu]"`); without it, a note says so.
"""

from __future__ import annotations

import importlib.util
import os
import shlex

from launch.tpu_catalog import LaunchError
from launch.tpu_job import Job
from trainer.config import load_config
from trainer.errors import TrainerError
from trainer.target.tpu import parse_target


def preflight(job: Job, dry_run: bool, fit: bool = True) -> list[str]:
    """Run the checks for `up`; raise LaunchError (one line) on a refusal, return notes for stderr.

    A dry run checks the config and its placeholders only: reaching storage and compiling (a minute or more for a
    large model) belong to the real launch, and the notes say how to run the fit check now.
    """
    from trainer.run.job import check_reachable  # JAX: only `up` loads it

    try:
        config = load_config(job.config, list(job.overrides))
        check_reachable(config, reach=not dry_run)
    except TrainerError as e:
        raise LaunchError(f"{job.config}: {e}") from None
    check_cmd = shlex.join(
        ["python", "-m", "trainer.main", job.config, *job.overrides, "--dry-run", "--target", job.accelerator.name]
    )
    if not fit:
        return []
    if importlib.util.find_spec("libtpu") is None:
        return [
            f'note: not checking that the step fits {job.accelerator.name} (pip install -e ".[tpu]" to compile '
            "it here before creating the TPU)"
        ]
    if dry_run:
        return [f"note: the launch compiles the step for {job.accelerator.name} before creating it; now: {check_cmd}"]
    return [_check_fit(config, job, check_cmd)]


def _check_fit(config, job: Job, check_cmd: str) -> str:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile only; set before jax is imported
    from trainer.target.check import compile_fit, verdict  # JAX, after JAX_PLATFORMS above

    try:
        result = compile_fit(config, parse_target(job.accelerator.name))
    except TrainerError as e:
        raise LaunchError(f"{job.config} on {job.accelerator.name}: {e}") from None
    if not result.fits:
        raise LaunchError(
            f"{job.config} {verdict(result)} on {job.accelerator.name}; `{check_cmd}` finds "
            "the smallest change that fits (or --skip-fit-check)"
        )
    return f"fit check: {job.config} {verdict(result)} on {job.accelerator.name}"
