"""Synthetic batches (`data.synthetic: true`): uniformly random tokens of the configured shape, no shards, no tokenizer.

For measuring tokens/s and MFU on a fresh slice before any data is prepared; the loop, evaluation, checkpoints and
resume are the ones of a real run. Row r of global batch s is drawn from its own generator seeded with
(train.seed, split, s, r), so a batch depends neither on the number of hosts (each host draws only its contiguous
block of rows, like the real pipeline) nor on what came before: the iterator's whole state is the batch number, and a
resumed run sees bitwise the same batches. Random tokens carry no information, so the loss stays near ln(vocab).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from trainer.data.pipeline import per_host_batch_size

_SPLITS = {"train": 0, "val": 1}


def _batch(seed: int, split: str, step: int, rows: range, seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Rows `rows` of global batch `step` in the train step's batch contract (see trainer.data.pipeline)."""
    tokens = np.stack(
        [
            np.random.default_rng([seed % 2**63, _SPLITS[split], step, row]).integers(
                0, vocab_size, seq_len + 1, dtype=np.int32
            )
            for row in rows
        ]
    )
    n = len(rows)
    return {
        "inputs": np.ascontiguousarray(tokens[:, :-1]),
        "targets": np.ascontiguousarray(tokens[:, 1:]),
        "loss_mask": np.ones((n, seq_len), np.float32),
        "segment_ids": np.ones((n, seq_len), np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (n, seq_len)).copy(),
    }


def _host_rows(global_batch_size: int, process_index: int, process_count: int) -> range:
    per_host = per_host_batch_size(global_batch_size, process_count)
    return range(process_index * per_host, (process_index + 1) * per_host)


class SyntheticIterator:
    """This host's infinite synthetic training batches; the same interface and state shape as `TrainIterator`."""

    def __init__(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        global_batch_size: int,
        seed: int,
        process_index: int,
        process_count: int,
    ):
        self._rows = _host_rows(global_batch_size, process_index, process_count)
        self._shape = {"seq_len": seq_len, "vocab_size": vocab_size}
        self._seed = seed
        self._step = 0

    @property
    def step(self) -> int:
        """Batches handed out so far (the train step the next batch is for)."""
        return self._step

    def __iter__(self) -> SyntheticIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = _batch(self._seed, "train", self._step, self._rows, **self._shape)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """The batch number, in the shape `pipeline.merge_states` merges across hosts (no streams)."""
        return {"step": self._step, "stage": 0, "streams": {}, "synthetic": True}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue at the saved batch number (a real run's data state also works: only its step is read)."""
        self._step = int(state["step"])

    def close(self) -> None:
        """Nothing to release (no threads, no files); here for the `TrainIterator` interface."""


def make_train_iterator(
    *, vocab_size: int, seq_len: int, global_batch_size: int, seed: int, process_index: int, process_count: int
) -> SyntheticIterator:
    """This process's synthetic training batches."""
    return SyntheticIterator(
        vocab_size=vocab_size,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def make_eval_iterator(
    *,
    vocab_size: int,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    num_batches: int,
) -> Iterator[dict[str, np.ndarray]]:
    """`num_batches` synthetic validation batches, the same at every evaluation (drawn apart from the train ones)."""
    rows = _host_rows(global_batch_size, process_index, process_count)
    for step in range(num_batches):
        yield _batch(seed, "val", step, rows, seq_len, vocab_size)
