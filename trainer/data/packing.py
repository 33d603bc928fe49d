"""Documents → rows of `seq_len + 1` tokens → the batch contract of the train step.

One component (a prepared folder) becomes an infinite Grain stream of rows:
  shards ─► shuffle (seeded, a new permutation each epoch) ─► this process's slice ─► decode
        ──► concatenate-and-split  |  split long documents + first-fit packing (segment ids, positions)
Rows carry `tokens`, `segment_ids` and `positions` (length seq_len + 1); `ToBatch` turns a stack of rows into
inputs / targets / loss_mask / segment_ids / positions of length seq_len.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from trainer.data import DataError
from trainer.data.integrity import ShardSource
from trainer.data.shards import Manifest, decode_record


class Decode(grain.transforms.Map):
    """A record's bytes → {"tokens": int32 ids}."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def map(self, record: bytes) -> dict[str, np.ndarray]:
        return {"tokens": decode_record(record, self.dtype)}


class SplitLong(grain.experimental.FlatMapTransform):
    """Cut a document longer than a row into row-sized pieces that overlap by one token, so every target is kept."""

    max_fan_out = 1 << 30  # only used by MapDataset.flat_map; pieces are produced lazily per document here

    def __init__(self, row_length: int):
        self.row_length = row_length

    def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        tokens = element["tokens"]
        if len(tokens) <= self.row_length:
            return [element]
        step = self.row_length - 1
        return [{"tokens": tokens[start:start + self.row_length]} for start in range(0, len(tokens) - 1, step)]


class ConcatRow(grain.transforms.Map):
    """A concatenate-and-split row: one segment, positions 0..n-1 (attention may cross documents, by design)."""

    def map(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens = row["tokens"]
        n = len(tokens)
        return {"tokens": tokens, "segment_ids": np.ones(n, np.int32), "positions": np.arange(n, dtype=np.int32)}


class PackedRow(grain.transforms.Map):
    """Rename Grain's packing outputs to the row fields."""

    def map(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "tokens": row["tokens"].astype(np.int32),
            "segment_ids": row["tokens_segment_ids"].astype(np.int32),
            "positions": row["tokens_positions"].astype(np.int32),
        }


class ToBatch(grain.transforms.Map):
    """Stacked rows [B, seq_len+1] → the train step's batch [B, seq_len] (targets = inputs shifted by one).

    A target counts (loss_mask 1) only when it belongs to the same document as its input token: never padding,
    never the first token of the next packed document.
    """

    def map(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, seg, pos = rows["tokens"], rows["segment_ids"], rows["positions"]
        same_doc = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
        return {
            "inputs": np.ascontiguousarray(tokens[:, :-1], dtype=np.int32),
            "targets": np.ascontiguousarray(tokens[:, 1:], dtype=np.int32),
            "loss_mask": same_doc.astype(np.float32),
            "segment_ids": np.ascontiguousarray(seg[:, :-1], dtype=np.int32),
            "positions": np.ascontiguousarray(pos[:, :-1], dtype=np.int32),
        }


def documents(
    manifest: Manifest,
    split: str,
    *,
    seed: int,
    shuffle: bool,
    stream_index: int,
    stream_count: int,
) -> grain.MapDataset:
    """One stream's infinite share of a split's documents: a global seeded shuffle per epoch, then every S-th.

    Shuffling before slicing keeps the streams disjoint within every epoch and, together, equal to the whole split.
    """
    paths = manifest.shard_paths(split)
    if not paths:
        hint = " (prepare with --val-fraction > 0)" if split == "val" else ""
        raise DataError(f"{manifest.location} holds no {split} documents{hint}")
    ds = grain.MapDataset.source(ShardSource(manifest, split))  # a damaged shard fails naming its file
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat()  # reseeds the shuffle each epoch
    ds = ds[stream_index::stream_count]
    return ds.map(Decode(manifest.dtype))


def rows(
    docs: grain.MapDataset,
    *,
    seq_len: int,
    packing: bool,
    seed: int,
    shuffle: bool,
    pad_id: int,
    packing_bins: int,
    read_options: Any = None,
) -> grain.IterDataset:
    """Rows of seq_len + 1 tokens: concatenate-and-split, or whole documents packed first-fit."""
    length = seq_len + 1
    ds = docs.to_iter_dataset(read_options)
    if not packing:
        ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": length})
        return ds.map(ConcatRow())
    ds = grain.experimental.FlatMapIterDataset(ds, SplitLong(length))
    ds = grain.experimental.FirstFitPackIterDataset(
        ds,
        length_struct={"tokens": length},
        num_packing_bins=packing_bins,
        seed=seed,
        shuffle_bins=shuffle,
        padding_struct={"tokens": pad_id},
    )
    return ds.map(PackedRow())
