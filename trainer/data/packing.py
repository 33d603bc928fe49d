"""Documents → rows of `seq_len + 1` tokens → the batch contract of the train step.

One component (a prepared folder) becomes an infinite Grain stream of rows:
  shards ─► shuffle (seeded, a new permutation each epoch) ─► this process's slice ─► decode
        ──► concatenate-and-split  |  split long documents + first-fit packing (segment ids, positions)
Rows carry `tokens`, `segment_ids` and `positions` (length seq_len + 1), and for conversations (a "chat" dataset)
a per-token `loss_mask` that packing moves along with the tokens; `ToBatch` turns a stack of rows into
inputs / targets / loss_mask / segment_ids / positions of length seq_len.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from trainer.data import DataError
from trainer.data.shard_source import ShardSource
from trainer.data.shards import Manifest, decode_chat_record, decode_record


class Decode(grain.transforms.Map):
    """A record's bytes → {"tokens": int32 ids} (+ "loss_mask" with `with_mask`: a chat record's own, all ones for
    a text document mixed in with conversations)."""

    def __init__(self, dtype: str, chat: bool = False, with_mask: bool = False):
        self.dtype, self.chat, self.with_mask = dtype, chat, with_mask or chat

    def map(self, record: bytes) -> dict[str, np.ndarray]:
        if self.chat:
            tokens, mask = decode_chat_record(record, self.dtype)
            return {"tokens": tokens, "loss_mask": mask}
        tokens = decode_record(record, self.dtype)
        return {"tokens": tokens, "loss_mask": np.ones_like(tokens)} if self.with_mask else {"tokens": tokens}


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
        return [
            {k: v[start : start + self.row_length] for k, v in element.items()}
            for start in range(0, len(tokens) - 1, step)
        ]


class ConcatRow(grain.transforms.Map):
    """A concatenate-and-split row: one segment, positions 0..n-1 (attention may cross documents, by design)."""

    def map(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens = row["tokens"]
        n = len(tokens)
        out = {"tokens": tokens, "segment_ids": np.ones(n, np.int32), "positions": np.arange(n, dtype=np.int32)}
        if "loss_mask" in row:
            out["loss_mask"] = row["loss_mask"].astype(np.int32)
        return out


class PackedRow(grain.transforms.Map):
    """Rename Grain's packing outputs to the row fields."""

    def map(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {
            "tokens": row["tokens"].astype(np.int32),
            "segment_ids": row["tokens_segment_ids"].astype(np.int32),
            "positions": row["tokens_positions"].astype(np.int32),
        }
        if "loss_mask" in row:
            out["loss_mask"] = row["loss_mask"].astype(np.int32)
        return out


class ToBatch(grain.transforms.Map):
    """Stacked rows [B, seq_len+1] → the train step's batch [B, seq_len] (targets = inputs shifted by one).

    A target counts (loss_mask 1) only when it belongs to the same document as its input token: never padding,
    never the first token of the next packed document; in conversations, only when the target token's own mask is 1
    (an assistant reply or its end-of-turn token).
    """

    def map(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, seg, pos = rows["tokens"], rows["segment_ids"], rows["positions"]
        same_doc = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
        if "loss_mask" in rows:
            same_doc &= rows["loss_mask"][:, 1:] != 0
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
    with_mask: bool = False,
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
    return ds.map(Decode(manifest.dtype, chat=manifest.kind == "chat", with_mask=with_mask))


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
    with_mask: bool = False,
) -> grain.IterDataset:
    """Rows of seq_len + 1 tokens: concatenate-and-split, or whole documents packed first-fit. `with_mask`: the
    documents carry a `loss_mask` (conversations), packed alongside the tokens."""
    length = seq_len + 1
    lengths = {"tokens": length, "loss_mask": length} if with_mask else {"tokens": length}
    ds = docs.to_iter_dataset(read_options)
    if not packing:
        ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=lengths)
        return ds.map(ConcatRow())
    ds = grain.experimental.FlatMapIterDataset(ds, SplitLong(length))
    ds = grain.experimental.FirstFitPackIterDataset(
        ds,
        length_struct=lengths,
        num_packing_bins=packing_bins,
        seed=seed,
        shuffle_bins=shuffle,
        padding_struct={"tokens": pad_id, "loss_mask": 0} if with_mask else {"tokens": pad_id},
    )
    return ds.map(PackedRow())
