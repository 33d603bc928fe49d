"""The text preparer: documents → tokenizer + ArrayRecord shards + manifest.json, locally or on gs://.

`prepare(...)` is what `python -m trainer.data.prepare` (trainer.data.prepare) runs for `--format text` and what a
recipe's first run calls for its corpus. Inputs are read in parallel (one work unit = a group of input files,
trainer.data.units), documents get EOS (and BOS with `bos`), a seeded hash of each document's key sends it to the
validation split, and every unit writes a sidecar after its shards so a re-run skips what is complete and verified.
The manifest is written last, atomically.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Iterator, Sequence

from trainer import storage
from trainer.data import DataError, sources
from trainer.data import records as records_lib
from trainer.data import shards as shards_lib
from trainer.data import tokenizer as tokenizer_lib
from trainer.data import units as units_lib
from trainer.data.documents import Item
from trainer.data.folder import claim_folder, existing_tokenizer
from trainer.data.shards import Manifest, ShardInfo
from trainer.data.units import WorkUnit

TOKENIZER_SAMPLE_CHARS = 16_000_000  # enough for a 4k-32k BPE; the stdlib corpus (12 M chars) fits whole
MAX_REPLACED_SHARE = 0.2  # random bytes decode to ~44% U+FFFD; text in a legacy 8-bit encoding to a few %
_MAX_REPORTED_INPUTS = 100  # replacement counts listed per input in the manifest


def prepare(
    inputs: Sequence[str] = (),
    out: str = "",
    vocab_size: int = 4096,
    *,
    corpus: str | None = None,
    tokenizer: str | None = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
    bos: bool = False,
    workers: int | None = None,
    seed: int = 0,
    dtype: str | None = None,
    max_files: int | None = None,
    tfds_data_dir: str | None = None,
    split: str = "train",
    unit_bytes: int | None = None,
    progress: bool = True,
    verbose: bool = True,
    command: str | None = None,
    fields: Sequence[str] = (),
    template: str = "",
    stream: bool = False,
) -> Manifest:
    """Tokenize `inputs` (or the built-in `corpus='stdlib'`) into `out` and return its manifest.

    The trainer calls this to prepare the stdlib corpus on a first run; the CLI is a thin wrapper. Raises DataError
    (one actionable line) on bad input; a half-done run leaves no manifest and resumes when called again.
    `unit_bytes` is the input size of one work unit (one train + one val shard); by default 1/16 of the input,
    between 256 KiB and 128 MiB; an uncompressed JSONL file larger than that is cut into several units. `fields` /
    `template`: a field map or Jinja row template making a record's text (trainer.data.records); `stream`: `hf:`
    inputs read in streaming mode (trainer.data.hf_source).
    """
    started = time.perf_counter()
    if not out:
        raise DataError("no output given: pass --out DIR_OR_GS_URL")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    storage.check_writable(out, "--out")  # before the slow part (a tokenizer to train), not after
    for spec in inputs:
        storage.check_reachable(spec, "--input")
    workers = max(1, workers or os.cpu_count() or 1)
    records_lib.check_format(tuple(fields), template, chat=False)
    items, source = sources.resolve(
        inputs,
        corpus,
        text_field,
        tfds_data_dir,
        max_files,
        split,
        fields=tuple(fields),
        template=template,
        stream=stream,
    )
    _check_decodable(items, seed)
    tok = _get_tokenizer(out, items, tokenizer, vocab_size, workers, seed, verbose)
    dtype = shards_lib.choose_dtype(tok.vocab_size, dtype)
    if bos and tok.bos_id is None:
        raise DataError("--bos was given but the tokenizer has no BOS token")
    tokenizer_file = claim_folder(out, tok)

    total_bytes = sum(item.size for item in items)
    units = sources.group(items, target_bytes=unit_bytes or min(128 << 20, max(256 << 10, total_bytes // 16)))
    settings = {
        "format": shards_lib.FORMAT_VERSION,
        "tokenizer": tok.sha256,
        "dtype": dtype,
        "bos": bos,
        "seed": seed,
        "val_fraction": val_fraction,
    }
    bos_id = tok.bos_id if bos else None
    tasks = [
        WorkUnit(i, unit, out, units_lib.unit_key(unit, settings), dtype, bos_id, tok.eos_id, seed, val_fraction)
        for i, unit in enumerate(units)
    ]
    records, todo = units_lib.finished_units(tasks, out, verbose)
    written = 0
    estimate = units_lib.estimate_tokens(tok, items, todo)
    for record in units_lib.run_units(todo, tok, workers, progress, estimate):
        records[record["unit"]] = record
        written += record["tokens"]

    manifest = _manifest(
        tok,
        tokenizer_file,
        dtype,
        bos,
        seed,
        val_fraction,
        source,
        command,
        records,
        tasks,
        out,
        inputs,
        corpus,
        vocab_size,
        tokenizer,
    )
    if manifest.totals()["all"]["documents"] == 0:
        raise DataError(f"no documents in the input ({source}): every file is empty")
    shards_lib.write_manifest(out, manifest)
    if verbose:
        _print_summary(manifest, out, time.perf_counter() - started, written)
    return manifest


# ---------------------------------------------------------------------------------------------- tokenizer


def _get_tokenizer(
    out: str, items: list[Item], path: str | None, vocab_size: int, workers: int, seed: int, verbose: bool
) -> tokenizer_lib.Tokenizer:
    if path:
        return tokenizer_lib.open_tokenizer(path)
    existing = existing_tokenizer(out)
    if existing is not None:
        if existing.vocab_size != vocab_size:
            raise DataError(
                f"{out} already holds shards of another tokenizer (vocab {existing.vocab_size:,}, not {vocab_size:,}): "
                "write to a fresh --out or delete that folder"
            )
        if verbose:
            print(f"reusing the tokenizer already in {out} (vocab {existing.vocab_size:,})")
        return existing
    if vocab_size < 300:
        raise DataError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 260 ids; use at least 300")
    texts = list(_sample_texts(items, TOKENIZER_SAMPLE_CHARS, seed))
    if not texts:
        raise DataError("no documents in the input: every file is empty")
    if verbose:
        print(f"training a SentencePiece BPE tokenizer (vocab {vocab_size:,}) on {sum(map(len, texts)):,} characters")
    return tokenizer_lib.train_sentencepiece(texts, vocab_size, num_threads=workers)


def _check_decodable(items: list[Item], seed: int, sample_chars: int = 1_000_000) -> None:
    """Refuse input that is mostly not UTF-8 text (binary files, another encoding) before training a tokenizer on
    it: more than MAX_REPLACED_SHARE of a seeded sample's characters are U+FFFD replacements."""
    order = list(items)
    random.Random(seed).shuffle(order)
    chars = replaced = 0
    worst = (0.0, "")
    for item in order:
        for doc in sources.read_documents(item):
            if not doc.text:
                continue
            chars += len(doc.text)
            replaced += doc.replaced
            worst = max(worst, (doc.replaced / len(doc.text), doc.key))
            if chars >= sample_chars:
                break
        if chars >= sample_chars:
            break
    if chars and replaced / chars > MAX_REPLACED_SHARE:
        raise DataError(
            f"the input is not UTF-8 text: {100 * replaced / chars:.0f}% of a {chars:,}-character sample are invalid "
            f"bytes replaced with U+FFFD (worst: {worst[1]}, {100 * worst[0]:.0f}%; refused above "
            f"{100 * MAX_REPLACED_SHARE:.0f}%); convert it to UTF-8 or leave binary files out of --input"
        )


def _sample_texts(items: list[Item], max_chars: int, seed: int) -> Iterator[str]:
    """Documents from items in a seeded random order until `max_chars`: the tokenizer's training sample."""
    order = list(items)
    random.Random(seed).shuffle(order)
    total = 0
    for item in order:
        for doc in sources.read_documents(item):
            if not doc.text:
                continue
            yield doc.text[: max_chars - total]
            total += len(doc.text)
            if total >= max_chars:
                return


# ---------------------------------------------------------------------------------------------- manifest


def _manifest(
    tok,
    tokenizer_file,
    dtype,
    bos,
    seed,
    val_fraction,
    source,
    command,
    records,
    tasks,
    out,
    inputs,
    corpus,
    vocab_size,
    tokenizer,
) -> Manifest:
    infos: list[ShardInfo] = []
    replaced: dict[str, int] = {}
    empty = 0
    for task in tasks:
        record = records[task.index]
        infos.extend(ShardInfo(**s) for s in record["shards"])
        replaced.update(record["replaced"])
        empty += record["empty"]
    if command is None:
        command = (
            f"prepare(inputs={list(inputs)!r}, out={out!r}, corpus={corpus!r}, vocab_size={vocab_size}, "
            f"tokenizer={tokenizer!r}, val_fraction={val_fraction}, bos={bos}, seed={seed})"
        )
    worst = sorted(replaced.items(), key=lambda kv: -kv[1])[:_MAX_REPORTED_INPUTS]
    return Manifest(
        tokenizer={
            "kind": tok.kind,
            "file": tokenizer_file,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "sha256": tok.sha256,
        },
        dtype=dtype,
        shards=tuple(sorted(infos, key=lambda s: (s.split != "train", s.file))),
        bos=bos,
        seed=seed,
        val_fraction=val_fraction,
        source=source,
        command=command,
        replacement_chars={"total": sum(replaced.values()), "documents": len(replaced), "by_input": dict(worst)},
        empty_documents_skipped=empty,
        location=out,
    )


def _print_summary(manifest: Manifest, out: str, seconds: float, written: int) -> None:
    totals = manifest.totals()
    train, val = totals["train"], totals["val"]
    print(
        f"prepared {totals['all']['documents']:,} documents, {totals['all']['tokens']:,} tokens "
        f"(train {train['documents']:,} docs / {train['tokens']:,} tokens, "
        f"val {val['documents']:,} / {val['tokens']:,}) "
        f"in {out}; {written:,} tokens written in {seconds:.1f} s ({written / max(seconds, 1e-9):,.0f} tokens/s)"
        + (f"; {skipped:,} empty documents skipped" if (skipped := manifest.empty_documents_skipped) else "")
    )
    bad = manifest.replacement_chars
    if bad.get("total"):
        print(
            f"warning: {bad['total']:,} invalid UTF-8 sequences replaced with U+FFFD in {bad['documents']:,} "
            f"document(s) (listed under replacement_chars in {out}/manifest.json)",
            file=sys.stderr,
        )
