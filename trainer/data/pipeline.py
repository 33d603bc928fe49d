"""Grain input pipeline: prepared shards (local or gs://) → per-host batches for the train and eval steps.

Batch contract (dict of numpy arrays, shape [global_batch_size // process_count, seq_len]):
    inputs int32, targets int32 (inputs shifted by one), loss_mask float32 (1 where the target counts),
    segment_ids int32 (document number in the row from 1, 0 on padding; all 1 when concatenating),
    positions int32 (position in its document when packing; 0..seq_len-1 when concatenating).

`make_train_iterator` returns a `TrainIterator`: infinite, exactly resumable from `get_state()` (a small JSON-able
dict: batch number, stage, Grain's own state), usable as the item of `grain.checkpoint.CheckpointSave/Restore`.
"""

from __future__ import annotations

import atexit
import sys
import weakref
from typing import Any, Iterator, Optional

import grain

from trainer.data import DataError
from trainer.data import mixture as mixture_lib
from trainer.data import packing

_READ_THREADS = 4  # threads reading documents from ArrayRecord (local or GCS) ahead of packing
_READ_BUFFER = 64  # documents read ahead (per component)
_MIN_PACKING_BINS = 64  # first-fit over at least this many rows: ~1 % padding on code at seq_len 256

# Iterators still open at exit are closed while the interpreter is intact: Grain's prefetch threads otherwise
# fail noisily in __del__ during module teardown.
_open_iterators: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for it in list(_open_iterators):
        it.close()


def per_host_batch_size(global_batch_size: int, process_count: int) -> int:
    """The batch each process feeds: global_batch_size // process_count, which must divide evenly."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise DataError(
            f"train.global_batch_size={global_batch_size} must be a positive multiple of the process count "
            f"({process_count}) so every host feeds the same share"
        )
    return global_batch_size // process_count


def _batches(
    phase: mixture_lib.Phase,
    data: Any,
    *,
    split: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    stage: int,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """One stage's batches: each component's rows (own seeded shuffle), mixed by weight, batched, contract fields."""
    read_options = grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_BUFFER)
    streams = []
    for index, component in enumerate(phase.components):
        component_seed = mixture_lib.derive_seed(seed, stage, index)
        docs = packing.documents(component.manifest, split, seed=component_seed, shuffle=shuffle,
                                 process_index=process_index, process_count=process_count)
        streams.append(packing.rows(
            docs, seq_len=seq_len, packing=data.packing, seed=component_seed, shuffle=shuffle,
            pad_id=int(component.manifest.tokenizer.get("pad_id", 0)),
            packing_bins=max(_MIN_PACKING_BINS, batch_size), read_options=read_options,
        ))
    ds = mixture_lib.mix(streams, [c.weight for c in phase.components])
    return ds.batch(batch_size, drop_remainder=True).map(packing.ToBatch())


def _with_prefetch(ds: grain.IterDataset, data: Any) -> grain.IterDataset:
    if data.worker_count > 0:
        _ensure_absl_flags()
        options = grain.MultiprocessingOptions(num_workers=data.worker_count,
                                               per_worker_buffer_size=max(1, data.prefetch))
        return ds.mp_prefetch(options)
    if data.prefetch > 0:
        return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data.prefetch)
    return ds


def _ensure_absl_flags() -> None:
    """Grain worker processes read absl flags; a program that never parsed them (not absl.app) must do so first."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1], known_only=True)


class TrainIterator(grain.DatasetIterator):
    """Infinite per-host training batches that switch stage exactly at each `start_step` and resume exactly.

    The state is {"step", "stage", "pipeline"}: the number of batches handed out, the stage they came from and
    Grain's state of that stage's pipeline (indices and counters, never data).
    """

    def __init__(self, data: Any, *, seq_len: int, global_batch_size: int, seed: int, process_index: int,
                 process_count: int):
        super().__init__()
        self._inner: Optional[grain.DatasetIterator] = None
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} is outside 0..{process_count - 1}")
        if seq_len <= 0:
            raise DataError(f"seq_len must be positive, got {seq_len}")
        self._data = data
        self._phases = mixture_lib.plan(data)
        self._kwargs = dict(split="train", seq_len=seq_len, seed=seed, shuffle=data.shuffle,
                            batch_size=per_host_batch_size(global_batch_size, process_count),
                            process_index=process_index, process_count=process_count)
        self._step = 0
        self._stage = 0
        self._inner = self._open(0)
        _open_iterators.add(self)

    def _open(self, stage: int) -> grain.DatasetIterator:
        ds = _batches(self._phases[stage], self._data, stage=stage, **self._kwargs)
        return iter(_with_prefetch(ds, self._data))

    def _switch(self, stage: int) -> None:
        if self._inner is not None:
            _close_and_wait(self._inner)
        self._stage = stage
        self._inner = self._open(stage)

    @property
    def step(self) -> int:
        """Batches handed out so far (the train step the next batch is for)."""
        return self._step

    @property
    def stage(self) -> int:
        """Index of the stage the last batch came from."""
        return self._stage

    def __next__(self) -> dict[str, Any]:
        if self._inner is None:
            raise ValueError("this TrainIterator was closed")
        stage = mixture_lib.phase_at(self._phases, self._step)
        if stage != self._stage:
            self._switch(stage)
        batch = next(self._inner)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """Small, JSON-able: the batch number, the stage and Grain's pipeline state."""
        return {"step": self._step, "stage": self._stage, "pipeline": self._inner.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken (a state saved on a stage boundary opens the next stage fresh)."""
        step = int(state["step"])
        stage = mixture_lib.phase_at(self._phases, step)
        self._switch(stage)
        self._step = step
        if state.get("stage") == stage:
            self._inner.set_state(_slices_as_tuples(state["pipeline"]))

    def start_prefetch(self) -> None:
        self._inner.start_prefetch()

    def close(self) -> None:
        """Stop prefetching and release the pipeline (idempotent)."""
        if self._inner is not None:
            _close_and_wait(self._inner)
            self._inner = None


def _slices_as_tuples(state: Any) -> Any:
    """Undo JSON's tuple → list on ConcatThenSplit's `remainder_slices` (Grain 0.2.18 compares them to (-1, -1)).

    Without this, a state that went through JSON (any checkpoint) restores a phantom remainder and the stream drifts.
    """
    if isinstance(state, dict):
        return {k: ({f: tuple(v) for f, v in value.items()} if k == "remainder_slices" else _slices_as_tuples(value))
                for k, value in state.items()}
    if isinstance(state, list):
        return [_slices_as_tuples(v) for v in state]
    return state


def make_train_iterator(data: Any, *, seq_len: int, global_batch_size: int, seed: int, process_index: int,
                        process_count: int) -> TrainIterator:
    """This process's infinite training batches for `data` (a DataConfig); see the module docstring for the contract."""
    return TrainIterator(data, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                         process_index=process_index, process_count=process_count)


def make_eval_iterator(data: Any, *, seq_len: int, global_batch_size: int, process_index: int, process_count: int,
                       num_batches: int) -> Iterator[dict[str, Any]]:
    """`num_batches` deterministic batches of the validation split (the last stage's mixture), fresh each call.

    No shuffle, so every evaluation sees the same rows; the split repeats if it is shorter than asked.
    """
    phases = mixture_lib.plan(data)
    ds = _batches(phases[-1], data, split="val", seq_len=seq_len,
                  batch_size=per_host_batch_size(global_batch_size, process_count), seed=0, shuffle=False,
                  stage=len(phases) - 1, process_index=process_index, process_count=process_count)
    ds = grain.experimental.LimitIterDataset(ds, count=num_batches)
    if data.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data.prefetch)
    batches = _closing(ds)
    _open_iterators.add(batches)
    return batches


def _closing(ds: grain.IterDataset) -> Iterator[dict[str, Any]]:
    """Iterate `ds`, closing Grain's iterator when done or when the generator is closed (at exit at the latest)."""
    it = iter(ds)
    try:
        yield from it
    finally:
        _close_and_wait(it)


def _close_and_wait(it: grain.DatasetIterator) -> None:
    """Close a Grain iterator and wait for the document reads its read-ahead threads already started.

    Grain's close() only cancels queued reads; one still running against a store that then goes away (a test's GCS
    emulator) would block interpreter exit for the GCS client's retry period (minutes).
    """
    it.close()
    stack = [it]
    while stack:
        node = stack.pop()
        executor = getattr(node, "_executor", None)  # PrefetchDatasetIterator's read threads
        if executor is not None:
            executor.shutdown(wait=True)
        stack.extend(getattr(node, "_parents", ()))


def describe(data: Any) -> str:
    """One line per stage for the logs: sources, sizes, weights and how rows are built."""
    phases = mixture_lib.plan(data)
    lines = []
    for index, phase in enumerate(phases):
        parts = []
        total = sum(c.weight for c in phase.components)
        for c in phase.components:
            totals = c.manifest.totals()
            share = f"{100 * c.weight / total:.0f}% " if len(phase.components) > 1 else ""
            train, val = totals["train"], totals["val"]
            parts.append(f"{share}{c.path} ({train['documents']:,} docs / {_short(train['tokens'])} tokens, "
                         f"val {_short(val['tokens'])})")
        prefix = f"stage {index} from step {phase.start_step}: " if len(phases) > 1 else ""
        lines.append(prefix + ", ".join(parts))
    tok = phases[0].components[0].manifest.tokenizer
    mode = "packed first-fit" if data.packing else "concatenated"
    lines.append(f"{tok['kind']} vocab {tok['vocab_size']:,}; rows {mode}; shuffle {'on' if data.shuffle else 'off'}; "
                 f"prefetch {data.prefetch}; grain workers {data.worker_count}")
    return "data: " + "\n      ".join(lines)


def _short(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def dataset_vocab_size(data: Any) -> Optional[int]:
    """The tokenizer vocabulary of the configured data (to check model.vocab_size against); None when unset."""
    if not (data.path or data.mixture or data.stages):
        return None
    return int(mixture_lib.plan(data)[0].components[0].manifest.tokenizer["vocab_size"])
