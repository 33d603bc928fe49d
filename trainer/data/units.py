"""The parallel half of `prepare`: work units tokenized into shards by worker processes, for text and chat alike.

A unit is a group of input items (files, a byte range of a large JSONL file, a range of a dataset's rows, one data file
of a streamed dataset). It reads its items, tokenizes documents in batches (text) or renders and masks conversations
(chat, `WorkUnit.chat`), routes each to the train or val shard by a seeded hash of its key, closes both shards (hash,
then move/upload) and only then writes its sidecar: a sidecar therefore always describes complete shards, which is
what lets a re-run skip the unit after checking the hashes.

Memory per worker is bounded whatever the input size: a text unit holds at most `PREFETCH` + 1 batches of
`ENCODE_BATCH` documents or `BATCH_CHARS` characters (a reader thread parses the next batches while the tokenizer,
which releases the GIL, encodes the current one); a chat unit holds one conversation, except for a file of flat
OpenAssistant rows (its trees need the whole file). Shards go to disk record by record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from trainer import storage
from trainer.data import DataError, chat, conversations, sources
from trainer.data import shards as shards_lib
from trainer.data import tokenizer as tokenizer_lib
from trainer.data.documents import Document, Item
from trainer.data.shards import ShardWriter

ENCODE_BATCH = 1024  # documents per tokenizer call at most
BATCH_CHARS = 4 << 20  # ... and characters: a batch of long documents stays a few MB
PREFETCH = 2  # batches parsed ahead of the tokenizer


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
    chat: dict[str, Any] | None = None  # chat mode: the ChatTemplate's fields; None: text
    limit: int = 0  # chat mode: stop after this many conversations (0: all)


def unit_key(unit: list[Item], settings: dict[str, Any]) -> str:
    """Identity of a unit's output: its inputs (path, size, range) and every setting that changes the shards."""
    blob = json.dumps({"items": [dataclasses.astuple(i) for i in unit], **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_validation(key: str, seed: int, val_fraction: float) -> bool:
    """Whether the document with this key is held out: a seeded hash, so the split never depends on order or workers."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


_worker_tokenizer: tokenizer_lib.Tokenizer | None = None


def init_worker(kind: str, payload: Any, threads: int = 0) -> None:
    """Pool initializer: rebuild the tokenizer in this process from its serialized form. `threads` > 0 caps the
    threads a Hugging Face tokenizer's batch encoder starts here (its Rayon pool, read at first use): N workers
    share the cores instead of each starting one thread per core."""
    global _worker_tokenizer
    if threads > 0:
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    if kind == "sentencepiece":
        _worker_tokenizer = tokenizer_lib.SentencePieceTokenizer(payload)
    else:
        _worker_tokenizer = tokenizer_lib.hf_from_files(payload)


# One encoded record: (key, ids or None for an empty document, loss mask or None, U+FFFD count).
Encoded = tuple[str, Sequence[int] | None, list[int] | None, int]


def run_unit(task: WorkUnit) -> dict[str, Any]:
    """Tokenize one unit into its train/val shards, then write its sidecar (the unit's 'done' mark)."""
    tok = _worker_tokenizer
    assert tok is not None
    writers = {
        split: ShardWriter(task.out, f"{split}-{task.index:05d}{shards_lib.SHARD_SUFFIX}", split, task.dtype)
        for split in ("train", "val")
    }
    replaced: dict[str, int] = {}
    empty = masked = 0
    encoded = _chat_encoded(task, tok) if task.chat is not None else _text_encoded(task, tok)
    try:
        for key, ids, mask, bad in encoded:
            if ids is None:
                empty += 1
                continue
            split = "val" if is_validation(key, task.seed, task.val_fraction) else "train"
            writers[split].write(ids, mask)
            if mask is not None:
                masked += sum(mask)
            if bad:
                replaced[key] = bad
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
    if task.chat is not None:
        record["masked"] = masked
    storage.write_json_atomic(shards_lib.sidecar_path(task.out, task.index), record)
    return record


def _text_encoded(task: WorkUnit, tok: tokenizer_lib.Tokenizer) -> Iterator[Encoded]:
    start = 1 if task.bos_id is not None else 0
    dtype = np.dtype(task.dtype).newbyteorder("<")
    for batch in prefetched(_document_batches(task.items)):
        texts = [d.text for d in batch if d.text]
        encoded = iter(tok.encode_batch(texts)) if texts else iter(())
        for doc in batch:
            if not doc.text:
                yield doc.key, None, None, doc.replaced
                continue
            ids = next(encoded)
            record = np.empty(start + len(ids) + 1, dtype)  # BOS? + ids + EOS, converted once, never concatenated
            if start:
                record[0] = task.bos_id
            record[start:-1] = ids
            record[-1] = task.eos_id
            yield doc.key, record, None, doc.replaced


def _document_batches(items: list[Item]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for item in items:
        for doc in sources.read_documents(item):
            batch.append(doc)
            chars += len(doc.text)
            if len(batch) >= ENCODE_BATCH or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def prefetched(source: Iterable[Any], depth: int = PREFETCH) -> Iterator[Any]:
    """`source`'s values, produced by a background thread up to `depth` ahead: reading and parsing overlap with the
    consumer's work whenever it releases the GIL (tokenizers, file writes). An error in `source` is raised here."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for value in source:
                while not stop.is_set():
                    try:
                        slots.put(("value", value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("end", None))
        except BaseException as e:  # handed to the consumer, raised in its thread
            slots.put(("error", e))

    thread = threading.Thread(target=produce, name="prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def _chat_encoded(task: WorkUnit, tok: tokenizer_lib.Tokenizer) -> Iterator[Encoded]:
    assert task.chat is not None
    spec = chat.ChatTemplate(**{k: tuple(v) if isinstance(v, list) else v for k, v in task.chat.items()})
    count = 0
    for item in task.items:
        for key, where, messages in _conversations(item):
            bos = task.bos_id is not None
            try:
                ids, mask = chat.encode(spec, chat.normalize(messages, key), tok, bos=bos, where=key)
            except DataError as e:
                raise DataError(str(e).replace(key, where(), 1)) from None
            yield key, ids, mask, 0
            count += 1
            if task.limit and count >= task.limit:
                return


def _conversations(item: Item) -> Iterator[tuple[str, Any, list[Any]]]:
    """(key, a function naming the source for errors, messages) of one chat item."""
    if item.kind == "stdlib_qa":
        for key, messages in conversations.stdlib_instructions(item.rows or None):
            yield key, lambda key=key: key, messages
        return
    for row, messages in conversations.read_item(item):
        yield row.key, row.where, messages


def finished_units(
    tasks: Sequence[WorkUnit], out: str, verbose: bool
) -> tuple[dict[int, dict[str, Any]], list[WorkUnit]]:
    """The units of `tasks` a previous run of the same command finished (their sidecar verified against their shards),
    by index, and the ones still to do: a re-run redoes only what is missing or damaged."""
    done: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        record = shards_lib.read_verified_sidecar(out, task.index, task.key)
        if record is None:
            todo.append(task)
        else:
            done[task.index] = record
    if verbose and done:
        print(f"resuming: {len(done)} of {len(tasks)} work units already complete and verified in {out}")
    return done, todo


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
            threads = max(1, (os.cpu_count() or 1) // processes)
            pool = multiprocessing.get_context("spawn").Pool(processes, init_worker, (*payload, threads))
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
        if chars >= 50_000:  # stop reading: a dataset item is a whole split
            break
    sample = "".join(parts)[:50_000]
    if not sample:
        return 0
    bytes_per_token = len(sample.encode()) / max(1, len(tok.encode(sample)))
    todo_bytes = sum(item.size for task in todo for item in task.items)
    return int(todo_bytes / bytes_per_token)
