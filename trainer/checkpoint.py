"""Async Orbax checkpoints of the train state, the data iterator of every process, and the resolved config.

Layout of a run folder (local or gs://):
    config.yaml                      the resolved config of the run
    checkpoints/<step>/state         params, optimizer state, step (Orbax, sharded arrays)
    checkpoints/<step>/data          JSON: the data iterator state of every process, merged (any host count resumes)
    checkpoints/<step>/meta          JSON: the config and the step
    checkpoints/<step>/digest.json   size and SHA-256 of every file above (trainer/checkpoint_digest.py)
Orbax writes a step into a temporary folder and renames (or, on GCS, marks) it only when complete, so a process
killed mid-write leaves nothing that `latest_step` would pick up: the previous complete step is restored instead.
A step damaged after it was committed (truncated, removed or altered files) fails its digest check before any read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml

from trainer import checkpoint_digest, distributed, storage
from trainer.config import CheckpointConfig, Config, from_dict
from trainer.errors import CheckpointError, StorageError


class _StepMetadataElsewhere(logging.Filter):
    """Reading one item of a step directly makes Orbax warn that the step's metadata file is missing from the item's
    folder; it lives one level up, so the warning says nothing. Everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


@contextlib.contextmanager
def _reading_one_item() -> Iterator[None]:
    """While one item of a step is read directly, drop Orbax's warning about the step metadata (see above)."""
    quiet = _StepMetadataElsewhere()
    logger = logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


DAMAGED_DIR = "damaged_checkpoints"  # where steps that can't be restored are kept, beside checkpoints/
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED")


def _gist(error: BaseException) -> str:
    """A tensorstore/Orbax error in a few words: its status code and innermost clause (they run to 2,000 chars)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].split(" [tensorstore_spec")[0]
    code = re.match(r"[A-Z_]{4,}: ", text)
    if code is None:
        return text[:200]
    return (code.group(0) + text.rsplit(": ", 1)[-1])[:200]


def _is_transient(error: BaseException) -> bool:
    """A store that is unreachable or refused access (retrying later may work), rather than damaged data."""
    return any(code in str(error)[:300] for code in _TRANSIENT) or isinstance(error, (ConnectionError, TimeoutError))


def _is_main() -> bool:
    return jax.process_index() == 0


def _damage(step_dir: str) -> str | None:
    """What process 0 finds wrong with a step's files against their digest (None: intact, or no digest); every
    process gets the same answer."""
    found = checkpoint_digest.damage(step_dir) if _is_main() else None
    return distributed.allgather_json(found)[0]


def checkpoint_dir(run_dir: str) -> str:
    """Where a run keeps its checkpoints."""
    return storage.join(run_dir, "checkpoints")


def _absolute(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path)


class Checkpointer:
    """Saves and restores one run's checkpoints; saving returns as soon as the arrays are copied off the devices."""

    def __init__(self, run_dir: str, options: CheckpointConfig, digest: bool = True):
        """`digest=False` records no digests (bench/checkpoint.py measures what they cost the loop)."""
        self.directory = _absolute(checkpoint_dir(run_dir))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=options.keep,
                keep_period=options.keep_every,
                enable_async_checkpointing=options.async_save,
                create=True,
            ),
            item_names=("state", "data", "meta"),
        )
        # process 0 digests every step once committed (the files of all processes: the store is shared)
        self._digests = (
            checkpoint_digest.DigestWriter(self.manager.wait_until_finished) if digest and _is_main() else None
        )

    def step_dir(self, step: int) -> str:
        """The folder of checkpoint `step`."""
        return storage.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        """The newest complete step, or None when the run has no checkpoint yet."""
        return self.manager.latest_step()

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """Restore the newest step that can be read; None when the run has no checkpoint yet.

        A committed step whose files were damaged afterwards (truncated, removed or altered by a disk or a bad copy:
        Orbax's commit marker can't tell) fails its digest check before any of it is read (a step from before
        digests fails its read instead) and costs that step, not the run: when an older step restores, the damaged
        newer ones are moved to `RUN/damaged_checkpoints/` (out of Orbax's view, never deleted) with one warning line
        each, and the run continues from the older step exactly as if they had never been written. When no step
        restores (all damaged, a different optimizer), nothing is moved: one CheckpointError.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        for step in steps:
            error = _damage(self.step_dir(step))  # checked before any read: a damaged step never starts one
            if error is None:
                try:
                    state = self.restore(step, abstract_state, data_iterator)
                except Exception as e:  # tensorstore / Orbax / JSON errors of a damaged step
                    if _is_transient(e):
                        raise StorageError(
                            f"can't read checkpoint {self.directory}/{step} ({_gist(e)}): the store "
                            "is unreachable or refused; run again when it is back"
                        ) from None
                    error = _gist(e)
            if all(distributed.allgather_json(error is None)):  # every process restored this step
                for bad, reason in failed:
                    aside = self._set_aside(bad)
                    if jax.process_index() == 0:
                        print(
                            f"warning: checkpoint {self.directory}/{bad} is damaged ({reason}); moved it to "
                            f"{aside} and resuming from step {step}",
                            file=sys.stderr,
                            flush=True,
                        )
                if failed:
                    self.manager.reload()
                return state, step
            failed.append((step, error or "another process could not read it"))
        if not failed:
            return None
        listed = ", ".join(str(s) for s, _ in failed)
        raise CheckpointError(
            f"no checkpoint of {self.directory} can be restored (steps {listed}; newest: "
            f"{failed[0][1]}): was the run's optimizer or code changed? Use a new run.dir, or "
            "move checkpoints/ away to start over"
        )

    def _set_aside(self, step: int) -> str:
        """Move a damaged step out of Orbax's view to RUN/damaged_checkpoints/<step>[-n] (process 0; all wait)."""
        target_dir = storage.join(os.path.dirname(self.directory.rstrip("/")), DAMAGED_DIR)
        target = storage.join(target_dir, str(step))
        if jax.process_index() == 0:
            n = 1
            while storage.exists(target):
                target, n = storage.join(target_dir, f"{step}-{n}"), n + 1
            storage.move(storage.join(self.directory, str(step)), target)
        target = distributed.allgather_json(target)[0]
        return target

    def save(self, step: int, state: Any, data_iterator: Any, config: Config, force: bool = False) -> bool:
        """Start saving `step` (returns once the device arrays are copied; the write continues in the background).

        The data state is taken now, from every process, and merged: the loop moves on while the write runs.
        """
        from trainer.data.pipeline import merge_states  # only saving needs Grain (and the pipeline's exit hook)

        data_state = merge_states(distributed.allgather_json(data_iterator.get_state()))
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave({"step": step, "config": config.to_dict()}),
            ),
            force=force,
        )
        if saved and self._digests is not None:
            self._digests.submit(self.step_dir(step))
        return saved

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """Restore `step` into arrays with the shardings of `abstract_state` (any mesh, any number of hosts) and
        rewind the data iterator to the same point of the stream."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
        data_iterator.set_state(restored["data"])
        return restored["state"]

    def wait(self) -> None:
        """Block until every save in flight is written and digested."""
        self.manager.wait_until_finished()
        if self._digests is not None:
            self._digests.wait()

    def close(self) -> None:
        """Finish pending writes and digests, and release the manager's threads."""
        self.manager.wait_until_finished()
        if self._digests is not None:
            self._digests.close()
        self.manager.close()


def parse_reference(reference: str) -> tuple[str, int | None]:
    """`RUN_DIR[:STEP]` → (run_dir, step or None); `gs://b/run:1200` keeps its scheme."""
    head, sep, tail = reference.rpartition(":")
    if sep and tail.isdigit() and head and not head.endswith(("gs", "file", "s3")):
        return head, int(tail)
    return reference, None


def _find_step(run_dir: str, step: int | None) -> tuple[str, int]:
    storage.check_reachable(run_dir, "the run folder")
    directory = _absolute(checkpoint_dir(run_dir))
    if not storage.exists(directory):
        raise CheckpointError(f"no checkpoint at {run_dir}: expected a run folder holding checkpoints/")
    steps = sorted(ocp.utils.checkpoint_steps(directory))
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {directory}")
    if step is None:
        return directory, steps[-1]
    if step not in steps:
        raise CheckpointError(f"step {step} is not among the checkpoints of {run_dir} (available: {steps})")
    return directory, step


def resolve_step(run_dir: str, step: int | None = None) -> int:
    """The step `RUN_DIR[:STEP]` names: `step` when it is among the run's complete checkpoints, else (None) the
    latest; one CheckpointError line otherwise."""
    return _find_step(run_dir, step)[1]


def read_run_config(run_dir: str) -> Config:
    """The resolved config a run folder was written with."""
    storage.check_reachable(run_dir, "the run folder")
    path = storage.join(run_dir, "config.yaml")
    if not storage.exists(path):
        raise CheckpointError(f"{path} is missing: not a run folder of this trainer")
    return from_dict(yaml.safe_load(storage.read_bytes(path)))


def write_run_config(run_dir: str, config: Config) -> None:
    """Store the resolved config in the run folder (atomically)."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    storage.write_bytes_atomic(storage.join(run_dir, "config.yaml"), text.encode())


def restore_params_from(reference: str, abstract_params: Any) -> tuple[Any, int]:
    """Only the params of another run's checkpoint (`RUN_DIR[:STEP]`), into the shardings of `abstract_params`."""
    run_dir, step = parse_reference(reference)
    directory, step = _find_step(run_dir, step)
    _check_intact(run_dir, directory, step)
    return _restore_params(run_dir, step, abstract_params, lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding))


def restore_state_from(reference: str, abstract_state: Any) -> tuple[Any, int]:
    """The whole train state of another run's checkpoint (`RUN_DIR[:STEP]`, default its latest), into the shardings of
    `abstract_state`; the data iterator is not restored (this run reads its own data from the start)."""
    run_dir, step = parse_reference(reference)
    directory, step = _find_step(run_dir, step)
    _check_intact(run_dir, directory, step)
    with _explained(run_dir, directory, step), ocp.CheckpointManager(directory, item_names=("state",)) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], step


def _restore_params(run_dir: str, step: int | None, target: Any, restore_arg: Any) -> tuple[Any, int]:
    directory, step = _find_step(run_dir, step)
    item = {"params": target}
    with _explained(run_dir, directory, step), _reading_one_item():
        restored = ocp.PyTreeCheckpointer().restore(
            storage.join(directory, str(step), "state"),
            args=ocp.args.PyTreeRestore(item=item, restore_args=jax.tree.map(restore_arg, item), partial_restore=True),
        )
    return restored["params"], step


@contextlib.contextmanager
def _explained(run_dir: str, directory: str, step: int) -> Iterator[None]:
    """Turn a failure to read step `step` of another run into one line naming the step and the steps to use instead."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # tensorstore / Orbax errors of a damaged (or unreachable) step
        if _is_transient(e):
            raise StorageError(
                f"can't read checkpoint {directory}/{step} ({_gist(e)}): the store is unreachable "
                "or refused; try again when it is back"
            ) from None
        raise _damaged(run_dir, directory, step, _gist(e)) from None


def _check_intact(run_dir: str, directory: str, step: int) -> None:
    """Refuse, before any read, a step of another run whose files differ from their digest."""
    reason = _damage(storage.join(directory, str(step)))
    if reason is not None:
        raise _damaged(run_dir, directory, step, reason)


def _damaged(run_dir: str, directory: str, step: int, reason: str) -> CheckpointError:
    """The one line for a damaged step of another run: what is wrong and the step to use instead."""
    older = [s for s in sorted(ocp.utils.checkpoint_steps(directory)) if s < step]
    instead = f"use an earlier step, e.g. {run_dir}:{older[-1]}" if older else "it is the run's only checkpoint"
    return CheckpointError(f"checkpoint step {step} of {run_dir} is damaged ({reason}); {instead}")


def load_params(path: str, step: int | None = None, dtype: str | None = None) -> tuple[Config, dict[str, Any], int]:
    """A run's config and params as numpy arrays on the host, whatever mesh saved them (for exporters).

    `dtype` (e.g. "bfloat16"): the tensors are read a few at a time (≤ CAST_BATCH_BYTES as saved) and cast as they
    are read, so the saved (float32) tree is never held whole: the peak is the cast tree plus one batch.
    """
    run_dir, ref_step = parse_reference(path)
    step = step if step is not None else ref_step
    config = read_run_config(run_dir)
    directory, step = _find_step(run_dir, step)
    _check_intact(run_dir, directory, step)
    with _explained(run_dir, directory, step), _reading_one_item():
        metadata = ocp.PyTreeCheckpointer().metadata(storage.join(directory, str(step), "state"))
        if hasattr(metadata, "item_metadata"):
            if metadata.item_metadata is None:
                raise ValueError("its metadata can't be read")
            metadata = metadata.item_metadata
        tree = metadata.tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree["params"])
    if dtype is None:
        params, step = _restore_params(run_dir, step, target, lambda _: ocp.RestoreArgs(restore_type=np.ndarray))
        return config, params, step
    cast = jax.numpy.dtype(dtype)
    params: dict[str, Any] = {}
    for batch in _batches(target, CAST_BATCH_BYTES):
        part, step = _restore_params(
            run_dir, step, batch, lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=cast)
        )
        _merge(params, part)
    return config, params, step


CAST_BATCH_BYTES = 256 << 20  # how much of the saved tree load_params(dtype=...) reads at once


def _batches(tree: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """The leaves of a nested dict of ShapeDtypeStructs as sub-trees of about `budget` bytes (a bigger leaf alone)."""
    batches: list[dict[str, Any]] = []
    size = budget
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        if size + nbytes > budget:
            batches.append({})
            size = 0
        node = batches[-1]
        keys = [k.key for k in path]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = leaf
        size += nbytes
    return batches


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = value


def save_params(run_dir: str, config: Config, params: dict[str, Any], step: int = 0) -> None:
    """Write a params-only checkpoint and the config into a run folder (a starting point for `restore_from`)."""
    storage.makedirs(run_dir)
    write_run_config(run_dir, config)
    with ocp.CheckpointManager(_absolute(checkpoint_dir(run_dir)), item_names=("state", "meta")) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params}),
                meta=ocp.args.JsonSave({"step": step, "config": config.to_dict(), "params_only": True}),
            ),
        )
        manager.wait_until_finished()
    if _is_main():
        checkpoint_digest.write(storage.join(_absolute(checkpoint_dir(run_dir)), str(step)))
