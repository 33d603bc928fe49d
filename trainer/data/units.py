"""The parallel half of `prepare`: work units (groups of input files) tokenized into shards by worker processes.

A unit reads its items, tokenizes documents in batches, routes each document to the train or val shard by a seeded
hash of its key, closes both shards (hash, then move/upload) and only then writes its sidecar: a sidecar therefore
always describes complete shards, which is what lets a re-run skip the unit after checking the hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import sys
from collections.abc import Iterator
from typing import Any

from trainer import storage
from trainer.data import shards as shards_lib
from trainer.data import sources
from trainer.data import tokenizer as tokenizer_lib
from trainer.data.documents import Document, Item
from trainer.data.shards import ShardWriter

ENCODE_BATCH = 256  # documents per SentencePiece call


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One worker task: a group of input items that becomes one train and one val shard, plus a sidecar."""

    index: int
    items: list[Item]
    out: str
    key: str
    dtype: str
    bos_id: int | None
    eos_id: int
    seed: int
    val_fraction: float


def unit_key(unit: list[Item], settings: dict[str, Any]) -> str:
    """Identity of a unit's output: its inputs (path, size) and every setting that changes the shards."""
    blob = json.dumps({"items": [dataclasses.astuple(i) for i in unit], **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_validation(key: str, seed: int, val_fraction: float) -> bool:
    """Whether the document with this key is held out: a seeded hash, so the split never depends on order or workers."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


_worker_tokenizer: tokenizer_lib.Tokenizer | None = None


def init_worker(kind: str, payload: Any) -> None:
    """Pool initializer: rebuild the tokenizer in this process from its serialized form."""
    global _worker_tokenizer
    if kind == "sentencepiece":
        _worker_tokenizer = tokenizer_lib.SentencePieceTokenizer(payload)
    else:
        _worker_tokenizer = tokenizer_lib.hf_from_files(payload)


def run_unit(task: WorkUnit) -> dict[str, Any]:
    """Tokenize one unit into its train/val shards, then write its sidecar (the unit's 'done' mark)."""
    tok = _worker_tokenizer
    assert tok is not None
    writers = {
        split: ShardWriter(task.out, f"{split}-{task.index:05d}{shards_lib.SHARD_SUFFIX}", split, task.dtype)
        for split in ("train", "val")
    }
    replaced: dict[str, int] = {}
    empty = 0
    prefix = [task.bos_id] if task.bos_id is not None else []

    def flush(batch: list[Document]) -> None:
        for doc, ids in zip(batch, tok.encode_batch([d.text for d in batch])):
            split = "val" if is_validation(doc.key, task.seed, task.val_fraction) else "train"
            writers[split].write(prefix + ids + [task.eos_id])
            if doc.replaced:
                replaced[doc.key] = doc.replaced

    try:
        for item in task.items:
            batch: list[Document] = []
            for doc in sources.read_documents(item):
                if not doc.text:
                    empty += 1
                    continue
                batch.append(doc)
                if len(batch) >= ENCODE_BATCH:
                    flush(batch)
                    batch = []
            flush(batch)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    infos = [info for info in (w.close() for w in writers.values()) if info is not None]
    record = {
        "unit": task.index,
        "key": task.key,
        "inputs": len(task.items),
        "shards": [dataclasses.asdict(info) for info in infos],
        "tokens": sum(info.tokens for info in infos),
        "documents": sum(info.documents for info in infos),
        "replaced": replaced,
        "empty": empty,
    }
    storage.write_json_atomic(shards_lib.sidecar_path(task.out, task.index), record)
    return record


def run_units(
    todo: list[WorkUnit], tok: tokenizer_lib.Tokenizer, workers: int, progress: bool, estimate: int
) -> Iterator[dict[str, Any]]:
    """Run the units (in a spawn pool when it pays off) behind a tqdm bar counting tokens/s."""
    from tqdm import tqdm

    if not todo:
        return
    payload = ("sentencepiece", tok.model_proto) if tok.kind == "sentencepiece" else ("hf", tok.files())
    bar = tqdm(
        total=estimate or None,
        unit="tok",
        unit_scale=True,
        desc="prepare",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    documents = 0
    try:
        processes = min(workers, len(todo))
        if processes <= 1:
            init_worker(*payload)
            results: Iterator[dict[str, Any]] = map(run_unit, todo)
            pool = None
        else:
            # spawn, not fork: the caller may be a trainer that already started JAX / gcsfs threads.
            pool = multiprocessing.get_context("spawn").Pool(processes, init_worker, payload)
            results = pool.imap_unordered(run_unit, todo)
        try:
            for record in results:
                documents += record["documents"]
                if bar.total is not None and bar.n + record["tokens"] > bar.total:
                    bar.total = bar.n + record["tokens"]
                bar.update(record["tokens"])
                bar.set_postfix(docs=f"{documents:,}", refresh=False)
                yield record
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        bar.total = bar.n
    finally:
        bar.close()


def estimate_tokens(tok: tokenizer_lib.Tokenizer, items: list[Item], todo: list[WorkUnit]) -> int:
    """Tokens still to write, from the bytes/token of a small sample: the progress bar's total."""
    if not todo:
        return 0
    parts: list[str] = []
    chars = 0
    for doc in (doc for item in items[:20] for doc in sources.read_documents(item)):
        parts.append(doc.text)
        chars += len(doc.text)
        if chars >= 200_000:  # stop reading: a dataset item is a whole split
            break
    sample = "".join(parts)[:200_000]
    if not sample:
        return 0
    bytes_per_token = len(sample.encode()) / max(1, len(tok.encode(sample)))
    todo_bytes = sum(item.size for task in todo for item in task.items)
    return int(todo_bytes / bytes_per_token)
