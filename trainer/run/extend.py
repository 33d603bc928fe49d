"""Continuing a run under new settings without changing what it already trained with.

A warmup-stable-decay (WSD) run's rates before its decay never depend on `train.steps`, so raising `train.steps` of
a run whose latest checkpoint is in the stable phase continues it exactly as if it had been started with the new
length. Once a checkpoint is in the decay, the rates it trained with belong to the old length: such a run is refused
in one line naming the last stable checkpoint, from which a cooldown branch (`trainer.run.branch`) can start instead.
The same rule guards a branch: the steps it inherits must have trained at the rates its own schedule gives them.
"""

from __future__ import annotations

import os

import numpy as np
import orbax.checkpoint as ocp

from trainer import checkpoint, storage
from trainer.config import Config
from trainer.errors import ConfigError
from trainer.optim import make_schedule, wsd_decay_start


def applied_rates(config: Config, steps: int) -> np.ndarray:
    """The learning rates of the first `steps` updates under `config` (update k uses the schedule at k)."""
    schedule = make_schedule(config.optimizer, config.train.steps)
    return np.asarray(schedule(np.arange(steps, dtype=np.int32)), dtype=np.float32)


def first_difference(before: Config, after: Config, steps: int) -> int | None:
    """The first of the first `steps` updates whose rate differs between two configs; None when all agree bitwise."""
    a, b = applied_rates(before, steps), applied_rates(after, steps)
    differ = np.flatnonzero(a.view(np.uint32) != b.view(np.uint32))
    return int(differ[0]) if differ.size else None


def checkpoint_steps(run_dir: str) -> list[int]:
    """The run's complete checkpoint steps, oldest first; [] when it has none."""
    directory = checkpoint.checkpoint_dir(run_dir)
    if not storage.exists(directory):
        return []
    if not storage.is_remote(directory):
        directory = os.path.abspath(directory)
    return sorted(ocp.utils.checkpoint_steps(directory))


def last_stable_step(config: Config, steps: list[int]) -> int | None:
    """The newest of `steps` whose updates all ran before the WSD decay of `config`; None when none did."""
    start = wsd_decay_start(config.optimizer, config.train.steps)
    stable = [s for s in steps if s <= start]
    return stable[-1] if stable else None


def _is_wsd(*configs: Config) -> bool:
    return any(c.optimizer.schedule == "wsd" for c in configs)


def decayed_message(run_dir: str, config: Config, step: int, steps: list[int]) -> str:
    """The one line that refuses to continue `run_dir` past its checkpoint `step`, which is in its WSD decay."""
    start = wsd_decay_start(config.optimizer, config.train.steps)
    stable = last_stable_step(config, steps)
    branch = (
        f"branch a cooldown from its last stable checkpoint instead: checkpoint.restore_from={run_dir}:{stable} "
        "checkpoint.restore_params_only=false in a new run.dir (docs/schedules.md)"
        if stable is not None
        else "it keeps no checkpoint from before the decay to branch from"
    )
    return (
        f"{run_dir}: checkpoint {step} is in the decay that began at step {start} of train.steps="
        f"{config.train.steps}; a decayed run can't be extended without changing the rates it trained with: {branch}"
    )


def check_extension(config: Config, previous: Config, steps: list[int]) -> None:
    """Refuse (one ConfigError line) to continue a WSD run whose new settings change a rate already applied.

    `previous` is the config the run folder was written with, `steps` its checkpoints. Nothing is refused for runs
    that use no WSD schedule, or whose rates up to the latest checkpoint stay the same bitwise (a plain resume, a
    change of anything but the schedule, a longer run still in its stable phase).
    """
    if not steps or not _is_wsd(config, previous):
        return
    latest, run_dir = steps[-1], config.run.dir
    if first_difference(previous, config, latest) is None:
        return
    if previous.optimizer.schedule == "wsd" and latest > wsd_decay_start(previous.optimizer, previous.train.steps):
        raise ConfigError(decayed_message(run_dir, previous, latest, steps))
    _refuse_changed_rates(previous, config, latest, f"{run_dir} (checkpoint {latest})")


def check_branch(config: Config, source: Config, source_dir: str, step: int, steps: list[int]) -> None:
    """Refuse (one ConfigError line) a WSD branch from `source_dir:step` that left the source's stable phase or whose
    own schedule gives the inherited steps other rates than they trained with."""
    if not _is_wsd(config, source) or first_difference(source, config, step) is None:
        return
    if source.optimizer.schedule == "wsd" and step > wsd_decay_start(source.optimizer, source.train.steps):
        raise ConfigError(decayed_message(source_dir, source, step, steps))
    _refuse_changed_rates(source, config, step, f"{source_dir}:{step}")


def _refuse_changed_rates(before: Config, after: Config, steps: int, what: str) -> None:
    k = first_difference(before, after, steps)
    if k is None:
        return
    old, new = applied_rates(before, k + 1)[k], applied_rates(after, k + 1)[k]
    start = wsd_decay_start(after.optimizer, after.train.steps) if after.optimizer.schedule == "wsd" else None
    hint = (
        f"its decay would begin at step {start}, before step {steps}: raise train.steps or shorten the decay"
        if start is not None and start < steps
        else "keep optimizer.learning_rate, warmup_steps and schedule as they were"
    )
    raise ConfigError(
        f"{what}: these settings change the learning rate of update {k + 1} from {old:.6g} to {new:.6g}, "
        f"a step already trained; {hint}"
    )


def check_start(config: Config) -> None:
    """Before anything is written: refuse a continuation of this run, or a whole-state branch from another, that would
    change a learning rate already applied (see the module docstring). One ConfigError / CheckpointError line."""
    steps = checkpoint_steps(config.run.dir)
    if steps and storage.exists(storage.join(config.run.dir, "config.yaml")):
        check_extension(config, checkpoint.read_run_config(config.run.dir), steps)
        return
    reference = config.checkpoint.restore_from
    if steps or not reference or config.checkpoint.restore_params_only:
        return
    source_dir, step = checkpoint.parse_reference(reference)
    step = checkpoint.resolve_step(source_dir, step)
    source = checkpoint.read_run_config(source_dir)
    check_branch(config, source, source_dir, step, checkpoint_steps(source_dir))
