"""Cooldown branches: a new run folder that starts from a stable-phase checkpoint of a WSD run and runs its decay.

`checkpoint.restore_from: MAIN:STEP` with `checkpoint.restore_params_only: false` restores the whole train state
(params, optimizer state, step); for a branch the data position comes back too, so the branch reads on where the main
run stood (when both read the same data the same way). The main run's folder is only read: it stays resumable.
The branch records where it left in `BRANCH/branch.json` (`{"from": "MAIN:STEP", "stable_step", "decay_start"}`);
at its end it reports its validation loss beside the main run's at the same step, and its model card names the
stable step it left and the decay tokens it saw.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp

from trainer import checkpoint, storage
from trainer.config import Config
from trainer.optim import wsd_decay_start

BRANCH_FILE = "branch.json"


def same_data_stream(a: Config, b: Config) -> bool:
    """Whether two runs read the same batches in the same order (then a data position carries over)."""
    keys = ("global_batch_size", "seq_len", "seed")
    return a.data == b.data and all(getattr(a.train, k) == getattr(b.train, k) for k in keys)


def restore_data_position(source_dir: str, step: int, data_iterator: Any) -> None:
    """Move `data_iterator` to where `source_dir` stood at checkpoint `step` (every process's merged state)."""
    directory = checkpoint.checkpoint_dir(source_dir)
    if not storage.is_remote(directory):
        directory = os.path.abspath(directory)
    with ocp.CheckpointManager(directory, item_names=("data",)) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    data_iterator.set_state(restored["data"])


def begin(config: Config, step: int, data_iterator: Any, say: Callable[[str], None], is_main: bool) -> None:
    """When this run started from another run's whole state (`restore_from`, `restore_params_only: false`) at `step`:
    carry over its data position and, for a WSD schedule, record `branch.json`. Nothing otherwise."""
    reference = config.checkpoint.restore_from
    if not reference or config.checkpoint.restore_params_only:
        return
    source_dir, _ = checkpoint.parse_reference(reference)
    source = checkpoint.read_run_config(source_dir)
    if same_data_stream(config, source):
        restore_data_position(source_dir, step, data_iterator)
        say(f"data position: where {source_dir} stood at step {step}")
    else:
        say(f"data position: from the start of this run's data (its data or batch differs from {source_dir}'s)")
    if is_main and config.optimizer.schedule == "wsd":
        start = wsd_decay_start(config.optimizer, config.train.steps)
        record = {"from": f"{source_dir}:{step}", "stable_step": step, "decay_start": start}
        storage.write_json_atomic(storage.join(config.run.dir, BRANCH_FILE), record)


@dataclasses.dataclass(frozen=True)
class Cooldown:
    """What a branch did by `step`: where it left its main run, the decay tokens it saw, and the validation losses
    of both at `step` (None where not measured)."""

    source: str
    stable_step: int
    step: int
    decay_tokens: int
    eval_loss: float | None
    stable_eval_loss: float | None

    def line(self) -> str:
        """One line for the console and the model card."""
        ours = f"{self.eval_loss:.4f}" if self.eval_loss is not None else "not measured"
        theirs = f"{self.stable_eval_loss:.4f}" if self.stable_eval_loss is not None else "not measured there (yet)"
        return (
            f"cooldown branch of {self.source} (left stable step {self.stable_step}), {self.decay_tokens:,} decay "
            f"tokens: validation loss {ours} at step {self.step}; the stable run at step {self.step}: {theirs}"
        )


def _eval_at(run_dir: str, step: int) -> float | None:
    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(path):
        return None
    found = None
    for line in storage.read_bytes(path).decode().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("step") == step and "eval_loss" in row:
            found = float(row["eval_loss"])
    return found


def cooldown(run_dir: str, config: Config, step: int) -> Cooldown | None:
    """The branch's facts at `step`, from `run_dir/branch.json`; None for a run that is no branch."""
    path = storage.join(run_dir, BRANCH_FILE)
    if not storage.exists(path):
        return None
    record = storage.read_json(path)
    source_dir, _ = checkpoint.parse_reference(record["from"])
    decayed = max(step - max(int(record["decay_start"]), int(record["stable_step"])), 0)
    return Cooldown(
        source=source_dir,
        stable_step=int(record["stable_step"]),
        step=step,
        decay_tokens=decayed * config.train.global_batch_size * config.train.seq_len,
        eval_loss=_eval_at(run_dir, step),
        stable_eval_loss=_eval_at(source_dir, step),
    )
