"""Grain input pipeline: prepared shards (local or gs://) → per-host batches for the train and eval steps.

Batch contract (dict of numpy arrays, shape [global_batch_size // process_count, seq_len]):
    inputs int32, targets int32 (inputs shifted by one), loss_mask float32 (1 where the target counts),
    segment_ids int32 (document number in the row from 1, 0 on padding; all 1 when concatenating),
    positions int32 (position in its document when packing; 0..seq_len-1 when concatenating).

`make_train_iterator` returns a `TrainIterator`: infinite, exactly resumable from `get_state()` (a small JSON-able
dict: batch number, stage, each row stream's Grain state). The global batch is made of `data.streams` row streams,
never of hosts, so the data order doesn't depend on the number of processes, and the states of all hosts merge into
one (`merge_states`) that resumes on any number of hosts.
"""

from __future__ import annotations

import atexit
import math
import sys
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from trainer.config import DataConfig
from trainer.data import DataError, packing
from trainer.data import mixture as mixture_lib

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


def stream_count(data: DataConfig, global_batch_size: int, process_count: int) -> int:
    """How many independent row streams make up every global batch (`data.streams`, default gcd(64, batch)).

    The streams, not the hosts, own the documents: stream s reads documents s, s+S, s+2S, … of each epoch's
    permutation and fills rows s·B/S … (s+1)·B/S − 1 of every global batch. A host feeds the streams of its
    contiguous block of rows, so it reads only its share, and the global batch is the same for any number of hosts.
    """
    count = data.streams or math.gcd(64, global_batch_size)
    if global_batch_size % count or count % process_count:
        raise DataError(
            f"data.streams={count} must divide train.global_batch_size={global_batch_size} and be a multiple of the "
            f"{process_count} processes; set data.streams to such a number"
        )
    return count


def _streams(
    active: mixture_lib.Stage,
    data: DataConfig,
    *,
    split: str,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    shuffle: bool,
    stage: int,
    stream_ids: list[int],
    stream_count: int,
) -> list[grain.IterDataset]:
    """The row streams `stream_ids` of one stage, each yielding its B/S rows of every global batch (stacked rows).

    Each stream mixes its components' rows by weight; each component reads the stream's share of its documents
    with its own seeded, epoch-aware shuffle (see `stream_count`).
    """
    rows_per_stream = global_batch_size // stream_count
    read_options = grain.ReadOptions(
        num_threads=max(1, _READ_THREADS // len(stream_ids)),
        prefetch_buffer_size=max(16, _READ_BUFFER // len(stream_ids)),
    )
    # Conversations carry a loss mask and are always packed: a reply never attends to another conversation.
    chat = any(c.manifest.kind == "chat" for c in active.components)
    streams = []
    for stream in stream_ids:
        parts = []
        for index, component in enumerate(active.components):
            component_seed = mixture_lib.derive_seed(seed, stage, index)
            docs = packing.documents(
                component.manifest,
                split,
                seed=component_seed,
                shuffle=shuffle,
                stream_index=stream,
                stream_count=stream_count,
                with_mask=chat,
            )
            parts.append(
                packing.rows(
                    docs,
                    seq_len=seq_len,
                    packing=data.packing or chat,
                    seed=mixture_lib.derive_seed(component_seed, stream),
                    shuffle=shuffle,
                    pad_id=int(component.manifest.tokenizer.get("pad_id", 0)),
                    packing_bins=max(_MIN_PACKING_BINS, rows_per_stream),
                    read_options=read_options,
                    with_mask=chat,
                )
            )
        streams.append(mixture_lib.mix(parts, [c.weight for c in active.components]).batch(rows_per_stream))
    return streams


def host_streams(stream_count_: int, process_index: int, process_count: int) -> list[int]:
    """The streams whose rows this process feeds: its contiguous block of the global batch."""
    per_host = stream_count_ // process_count
    return list(range(process_index * per_host, (process_index + 1) * per_host))


_TO_BATCH = packing.ToBatch()


def merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The streams' rows, stream after stream (the global batch's row order) → the train step's batch contract."""
    return _TO_BATCH.map({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def _with_prefetch(ds: grain.IterDataset, data: DataConfig) -> grain.IterDataset:
    if data.worker_count > 0:
        _ensure_absl_flags()
        options = grain.MultiprocessingOptions(
            num_workers=data.worker_count, per_worker_buffer_size=max(1, data.prefetch)
        )
        return ds.mp_prefetch(options)
    if data.prefetch > 0:
        return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data.prefetch)
    return ds


def _ensure_absl_flags() -> None:
    """Grain worker processes read absl flags; a program that never parsed them (not absl.app) must do so first."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1], known_only=True)


class TrainIterator:
    """This host's infinite training batches: one Grain iterator per row stream, switched stage by stage.

    The state is process-count free — {"step", "stage", "streams": {stream: Grain state}} — so the states of all
    hosts merge into one (`merge_states`) and a run saved by N hosts resumes exactly on M hosts: each host picks
    its own streams out of the merged state (`set_state`). States hold indices and counters, never data.
    """

    def __init__(
        self,
        data: DataConfig,
        *,
        seq_len: int,
        global_batch_size: int,
        seed: int,
        process_index: int,
        process_count: int,
        stages: Sequence[mixture_lib.Stage] | None = None,
    ):
        self._inners: dict[int, Any] = {}
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} is outside 0..{process_count - 1}")
        if seq_len <= 0:
            raise DataError(f"seq_len must be positive, got {seq_len}")
        per_host_batch_size(global_batch_size, process_count)
        self._data = data
        self._stages = list(stages) if stages is not None else mixture_lib.read_stages(data)
        count = stream_count(data, global_batch_size, process_count)
        self._kwargs = dict(
            split="train",
            seq_len=seq_len,
            seed=seed,
            shuffle=data.shuffle,
            global_batch_size=global_batch_size,
            stream_ids=host_streams(count, process_index, process_count),
            stream_count=count,
        )
        self._step = 0
        self._stage = 0
        self._open(0)
        _open_iterators.add(self)

    def _open(self, stage: int) -> None:
        self.close()
        self._stage = stage
        streams = _streams(self._stages[stage], self._data, stage=stage, **self._kwargs)
        self._inners = {
            stream: iter(_with_prefetch(ds, self._data)) for stream, ds in zip(self._kwargs["stream_ids"], streams)
        }

    @property
    def step(self) -> int:
        """Batches handed out so far (the train step the next batch is for)."""
        return self._step

    @property
    def stage(self) -> int:
        """Index of the stage the last batch came from."""
        return self._stage

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self._inners:
            raise ValueError("this TrainIterator was closed")
        stage = mixture_lib.stage_at(self._stages, self._step)
        if stage != self._stage:
            self._open(stage)
        batch = merge([next(it) for it in self._inners.values()])
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """Small, JSON-able: the batch number, the stage and the Grain state of each of this host's streams."""
        return {
            "step": self._step,
            "stage": self._stage,
            "streams": {str(stream): it.get_state() for stream, it in self._inners.items()},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` (this host's or a merged one) was taken; a stage boundary opens fresh."""
        step = int(state["step"])
        stage = mixture_lib.stage_at(self._stages, step)
        self._open(stage)
        self._step = step
        if state.get("stage") != stage:
            return
        missing = [s for s in self._inners if str(s) not in state["streams"]]
        if missing:
            raise DataError(
                f"the saved data state has no stream {missing[0]}: it was saved with another data.streams "
                "or global batch size, which changes the data order; keep them to resume"
            )
        for stream, it in self._inners.items():
            it.set_state(_slices_as_tuples(state["streams"][str(stream)]))

    def close(self) -> None:
        """Stop prefetching and release the pipelines (idempotent)."""
        for it in self._inners.values():
            _close_and_wait(it)
        self._inners = {}


class _StackedToBatch(grain.transforms.Map):
    """[streams, rows per stream, length] → the batch contract, stream after stream."""

    def map(self, stacked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return merge([{k: v[i] for k, v in stacked.items()} for i in range(len(next(iter(stacked.values()))))])


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One state from every host's `get_state()` (all at the same step): the union of their streams."""
    steps = {(s["step"], s["stage"]) for s in states}
    if len(steps) != 1:
        raise ValueError(f"hosts are at different steps: {sorted(steps)}")
    merged = {"step": states[0]["step"], "stage": states[0]["stage"], "streams": {}}
    for s in states:
        merged["streams"].update(s["streams"])
    return merged


def _slices_as_tuples(state: Any) -> Any:
    """Undo JSON's tuple → list on ConcatThenSplit's `remainder_slices` (Grain 0.2.18 compares them to (-1, -1)).

    Without this, a state that went through JSON (any checkpoint) restores a phantom remainder and the stream drifts.
    """
    if isinstance(state, dict):
        return {
            k: ({f: tuple(v) for f, v in value.items()} if k == "remainder_slices" else _slices_as_tuples(value))
            for k, value in state.items()
        }
    if isinstance(state, list):
        return [_slices_as_tuples(v) for v in state]
    return state


def make_train_iterator(
    data: DataConfig,
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    stages: Sequence[mixture_lib.Stage] | None = None,
) -> TrainIterator:
    """This process's infinite training batches for `data` (a DataConfig); see the module docstring for the contract.

    `stages`: what `mixture.read_stages(data)` returned, when the caller (a job) has read them already."""
    return TrainIterator(
        data,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        stages=stages,
    )


def make_eval_iterator(
    data: DataConfig,
    *,
    seq_len: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    num_batches: int,
    stages: Sequence[mixture_lib.Stage] | None = None,
) -> Iterator[dict[str, Any]]:
    """`num_batches` deterministic batches of the validation split (the last stage's mixture), fresh each call.

    No shuffle, so every evaluation sees the same rows; the split repeats if it is shorter than asked. `stages` as in
    `make_train_iterator`.
    """
    read = list(stages) if stages is not None else mixture_lib.read_stages(data)
    count = stream_count(data, global_batch_size, process_count)
    stream_ids = host_streams(count, process_index, process_count)
    streams = _streams(
        read[-1],
        data,
        split="val",
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        seed=0,
        shuffle=False,
        stage=len(read) - 1,
        stream_ids=stream_ids,
        stream_count=count,
    )
    # The streams take turns; `batch` stacks one turn (one part of each stream), `merge` lays them out in order.
    ds = streams[0] if len(streams) == 1 else grain.IterDataset.mix(streams, [1 / len(streams)] * len(streams))
    ds = ds.batch(len(streams)).map(_StackedToBatch())
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


def describe(data: DataConfig, stages: Sequence[mixture_lib.Stage]) -> str:
    """One line per stage for the logs: sources, sizes, weights and how rows are built."""
    lines = []
    for index, stage in enumerate(stages):
        parts = []
        total = sum(c.weight for c in stage.components)
        for c in stage.components:
            totals = c.manifest.totals()
            share = f"{100 * c.weight / total:.0f}% " if len(stage.components) > 1 else ""
            train, val = totals["train"], totals["val"]
            parts.append(
                f"{share}{c.path} ({train['documents']:,} docs / {_short(train['tokens'])} tokens, "
                f"val {_short(val['tokens'])})"
            )
        prefix = f"stage {index} from step {stage.start_step}: " if len(stages) > 1 else ""
        lines.append(prefix + ", ".join(parts))
    tok = mixture_lib.tokenizer_manifest(stages).tokenizer
    chat = any(c.manifest.kind == "chat" for stage in stages for c in stage.components)
    mode = (
        "conversations packed first-fit, loss on replies only"
        if chat
        else "packed first-fit"
        if data.packing
        else "concatenated"
    )
    lines.append(
        f"{tok['kind']} vocab {tok['vocab_size']:,}; rows {mode}; shuffle {'on' if data.shuffle else 'off'}; "
        f"prefetch {data.prefetch}; grain workers {data.worker_count}"
    )
    return "data: " + "\n      ".join(lines)


def _short(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
