"""`python -m trainer.data.prepare`: text → tokenizer + ArrayRecord shards + manifest.json, locally or on gs://.

    python -m trainer.data.prepare --corpus stdlib --out data/stdlib --vocab-size 4096
    python -m trainer.data.prepare --input 'corpus/*.jsonl' --text-field text --out gs://bucket/data/web
    python -m trainer.data.prepare --input docs/ --tokenizer hf_tokenizer_folder/ --bos --out data/docs
    python -m trainer.data.prepare --verify data/docs      (every shard's record count and sha256 vs the manifest)

Inputs are read in parallel (one work unit = a group of input files), documents get EOS (and BOS with --bos), a
seeded hash of each document's key sends it to the validation split, and every unit writes a sidecar after its shards
so a re-run skips what is complete and verified. The manifest is written last, atomically.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time
from typing import Any, Iterator, Optional, Sequence

from trainer import storage
from trainer.config import DataConfig
from trainer.data import DataError, sources
from trainer.data import shards as shards_lib
from trainer.data import tokenizer as tokenizer_lib
from trainer.data import units as units_lib
from trainer.data.shards import Manifest, ShardInfo
from trainer.data.units import WorkUnit
from trainer.errors import ExitCode, cli

TOKENIZER_SAMPLE_CHARS = 16_000_000  # enough for a 4k-32k BPE; the stdlib corpus (12 M chars) fits whole
MAX_REPLACED_SHARE = 0.2  # random bytes decode to ~44% U+FFFD; text in a legacy 8-bit encoding to a few %
_MAX_REPORTED_INPUTS = 100  # replacement counts listed per input in the manifest


def prepare(
    inputs: Sequence[str] = (),
    out: str = "",
    vocab_size: int = 4096,
    *,
    corpus: Optional[str] = None,
    tokenizer: Optional[str] = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
    bos: bool = False,
    workers: Optional[int] = None,
    seed: int = 0,
    dtype: Optional[str] = None,
    max_files: Optional[int] = None,
    tfds_data_dir: Optional[str] = None,
    split: str = "train",
    unit_bytes: Optional[int] = None,
    progress: bool = True,
    verbose: bool = True,
    command: Optional[str] = None,
) -> Manifest:
    """Tokenize `inputs` (or the built-in `corpus='stdlib'`) into `out` and return its manifest.

    The trainer calls this to prepare the stdlib corpus on a first run; the CLI is a thin wrapper. Raises DataError
    (one actionable line) on bad input; a half-done run leaves no manifest and resumes when called again.
    `unit_bytes` is the input size of one work unit (one train + one val shard); by default 1/16 of the input,
    between 256 KiB and 128 MiB.
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
    items, source = sources.resolve(inputs, corpus, text_field, tfds_data_dir, max_files, split)
    _check_decodable(items, seed)
    tok = _get_tokenizer(out, items, tokenizer, vocab_size, workers, seed, verbose)
    dtype = shards_lib.choose_dtype(tok.vocab_size, dtype)
    if bos and tok.bos_id is None:
        raise DataError("--bos was given but the tokenizer has no BOS token")
    tokenizer_file = _claim_folder(out, tok)

    total_bytes = sum(item.size for item in items)
    units = sources.group(items, target_bytes=unit_bytes or min(128 << 20, max(256 << 10, total_bytes // 16)))
    settings = {"format": shards_lib.FORMAT_VERSION, "tokenizer": tok.sha256, "dtype": dtype, "bos": bos,
                "seed": seed, "val_fraction": val_fraction}
    bos_id = tok.bos_id if bos else None
    tasks = [WorkUnit(i, unit, out, units_lib.unit_key(unit, settings), dtype, bos_id, tok.eos_id, seed, val_fraction)
             for i, unit in enumerate(units)]
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        record = shards_lib.read_verified_sidecar(out, task.index, task.key)
        if record is None:
            todo.append(task)
        else:
            records[task.index] = record
    if verbose and records:
        print(f"resuming: {len(records)} of {len(tasks)} work units already complete and verified in {out}")
    written = 0
    estimate = units_lib.estimate_tokens(tok, items, todo)
    for record in units_lib.run_units(todo, tok, workers, progress, estimate):
        records[record["unit"]] = record
        written += record["tokens"]

    manifest = _manifest(tok, tokenizer_file, dtype, bos, seed, val_fraction, source, command, records, tasks, out,
                         inputs, corpus, vocab_size, tokenizer)
    if manifest.totals()["all"]["documents"] == 0:
        raise DataError(f"no documents in the input ({source}): every file is empty")
    shards_lib.write_manifest(out, manifest)
    if verbose:
        _print_summary(manifest, out, time.perf_counter() - started, written)
    return manifest


def ensure_prepared(data: DataConfig, progress: bool = True, tokenizer: Optional[str] = None) -> Optional[Manifest]:
    """Prepare `data.prepare_corpus` into `data.path` when that folder holds no manifest yet (first run of a recipe).

    Returns the new manifest, or None when nothing had to be done. On several hosts, call it on one process (or on
    each host for local paths) before building iterators. A chat corpus (`stdlib_qa`) is rendered through
    `data.chat_template` and tokenized with `tokenizer` (the base model's, to fine-tune it).
    """
    if not data.prepare_corpus or not data.path:
        return None
    if storage.exists(storage.join(data.path, shards_lib.MANIFEST_FILE)):
        try:
            shards_lib.read_manifest(data.path)
            return None
        except DataError as e:  # a damaged manifest: prepare again; finished parts are verified and kept
            print(f"warning: {e.args[0].split(';')[0]}; preparing {data.path} again", file=sys.stderr)
    if data.prepare_corpus == "stdlib_qa":
        from trainer.data.chat_prepare import prepare_chat

        return prepare_chat(corpus=data.prepare_corpus, out=data.path, template=data.chat_template or "chatml",
                            end_of_turn=data.end_of_turn, tokenizer=tokenizer, vocab_size=data.prepare_vocab_size,
                            val_fraction=data.prepare_val_fraction,
                            command=f"auto-prepare corpus={data.prepare_corpus} template={data.chat_template}")
    return prepare(corpus=data.prepare_corpus, out=data.path, vocab_size=data.prepare_vocab_size,
                   val_fraction=data.prepare_val_fraction, progress=progress,
                   command=f"auto-prepare corpus={data.prepare_corpus} vocab_size={data.prepare_vocab_size} "
                           f"val_fraction={data.prepare_val_fraction}")


# ---------------------------------------------------------------------------------------------- tokenizer


def _get_tokenizer(out: str, items: list[sources.Item], path: Optional[str], vocab_size: int, workers: int,
                   seed: int, verbose: bool) -> tokenizer_lib.Tokenizer:
    if path:
        return tokenizer_lib.open_tokenizer(path)
    existing = _existing_tokenizer(out)
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


def _check_decodable(items: list[sources.Item], seed: int, sample_chars: int = 1_000_000) -> None:
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
            f"{100 * MAX_REPLACED_SHARE:.0f}%); convert it to UTF-8 or leave binary files out of --input")


def _existing_tokenizer(out: str) -> Optional[tokenizer_lib.Tokenizer]:
    for name in (tokenizer_lib.SENTENCEPIECE_FILE, tokenizer_lib.HF_FOLDER):
        if storage.exists(storage.join(out, name)):
            return tokenizer_lib.open_tokenizer(storage.join(out, name))
    return None


def _sample_texts(items: list[sources.Item], max_chars: int, seed: int) -> Iterator[str]:
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


def _claim_folder(out: str, tok: tokenizer_lib.Tokenizer) -> str:
    """Refuse a folder that holds another tokenizer's shards; store this tokenizer there. Returns its manifest entry."""
    manifest_path = storage.join(out, shards_lib.MANIFEST_FILE)
    theirs: Optional[str] = None
    if storage.exists(manifest_path):
        try:
            theirs = storage.read_json(manifest_path).get("tokenizer", {}).get("sha256")
        except (ValueError, AttributeError):  # a damaged manifest: judge by the tokenizer file; it gets rewritten
            pass
    if theirs is None:
        existing = _existing_tokenizer(out)
        if existing is not None:
            theirs = existing.sha256
        elif any(name.endswith(shards_lib.SHARD_SUFFIX) for name in storage.listdir(out)):
            raise DataError(f"{out} holds shards of an unknown tokenizer (no manifest.json, no tokenizer): "
                            "use a fresh --out")
    if theirs is not None and theirs != tok.sha256:
        raise DataError(
            f"{out} already holds shards of another tokenizer (sha256 {theirs[:12]}…, "
            f"this one {tok.sha256[:12]}…): "
            "write to a fresh --out or delete that folder"
        )
    storage.makedirs(out)
    return tok.save(out)


# ---------------------------------------------------------------------------------------------- manifest


def _manifest(tok, tokenizer_file, dtype, bos, seed, val_fraction, source, command, records, tasks, out, inputs,
              corpus, vocab_size, tokenizer) -> Manifest:
    infos: list[ShardInfo] = []
    replaced: dict[str, int] = {}
    empty = 0
    for task in tasks:
        record = records[task.index]
        infos.extend(ShardInfo(**s) for s in record["shards"])
        replaced.update(record["replaced"])
        empty += record["empty"]
    if command is None:
        command = (f"prepare(inputs={list(inputs)!r}, out={out!r}, corpus={corpus!r}, vocab_size={vocab_size}, "
                   f"tokenizer={tokenizer!r}, val_fraction={val_fraction}, bos={bos}, seed={seed})")
    worst = sorted(replaced.items(), key=lambda kv: -kv[1])[:_MAX_REPORTED_INPUTS]
    return Manifest(
        tokenizer={"kind": tok.kind, "file": tokenizer_file, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
                   "eos_id": tok.eos_id, "pad_id": tok.pad_id, "sha256": tok.sha256},
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
        print(f"warning: {bad['total']:,} invalid UTF-8 sequences replaced with U+FFFD in {bad['documents']:,} "
              f"document(s) (listed under replacement_chars in {out}/manifest.json)", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.data.prepare",
        description="Tokenize text into ArrayRecord shards + manifest.json (local folder or gs:// URL).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", action="extend", metavar="PATH_OR_GLOB",
                     help="text files/folders/globs (one document per file), .jsonl, .parquet, "
                          "tfds:NAME[/CONFIG][:VERSION], hf:PATH_OR_NAME[:CONFIG]; repeatable")
    src.add_argument("--corpus", choices=["stdlib", "stdlib_qa"],
                     help="the built-in corpus: this Python's standard library sources (stdlib), or with --format "
                          "chat Q&A about its functions made from their docstrings and signatures (stdlib_qa)")
    src.add_argument("--verify", metavar="DIR",
                     help="check a prepared folder instead: every shard's record count and sha256 against its "
                          "manifest (exit 1 and the damaged shards listed when any differ)")
    p.add_argument("--out", help="output folder or gs://bucket/path (required unless --verify)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--vocab-size", type=int, default=4096,
                     help="train a SentencePiece BPE of this size (default 4096)")
    tok.add_argument("--tokenizer", help="use this SentencePiece .model file or Hugging Face tokenizer folder")
    p.add_argument("--val-fraction", type=float, default=0.01, help="documents held out for validation (default 0.01)")
    p.add_argument("--text-field", default="text", help="JSONL key / Parquet column / dataset feature (default text)")
    p.add_argument("--bos", action="store_true", help="start each document with BOS (EOS always ends it)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--dtype", choices=["uint16", "uint32"], help="token dtype (default: uint16 when the vocab fits)")
    p.add_argument("--max-files", type=int, help="read only the first N input files (quick trials)")
    p.add_argument("--tfds-data-dir", help="TFDS data dir (local or gs://) for tfds: inputs "
                                           "(default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--split", default="train",
                   help="split of tfds: and hf: inputs, e.g. train, validation, 'train[:10%%]' (default train)")
    p.add_argument("--format", choices=["text", "chat"], default="text",
                   help="text: documents for pretraining (default); chat: JSONL conversations (messages, Alpaca/Dolly, "
                        "OpenAssistant trees) rendered through --chat-template, with a loss mask on assistant replies "
                        "(docs/finetune.md)")
    p.add_argument("--chat-template", default="chatml",
                   help="with --format chat: chatml, kodalite (KodaLite's card: plain-text markers), smallcoder "
                        "('User: ...\\nAssistant:', replies end with EOS), alpaca, or a Jinja string (default chatml)")
    p.add_argument("--end-of-turn", default=None,
                   help="with --format chat: the text that ends a reply (default: the template's; a Jinja "
                        "template's: the tokenizer's EOS). One id when the vocabulary has it (e.g. '<|endoftext|>' "
                        "in GPT-2's: nothing added); several tokens: kept as plain text and stopped at as a stop "
                        "string, unless --markers special")
    p.add_argument("--markers", choices=["template", "special", "text"], default="template",
                   help="with --format chat: markers the tokenizer splits stay as the template has them (template, "
                        "default: chatml's are added as special tokens, kodalite's and --end-of-turn's stay plain "
                        "text), are all added as new special ids (special: the model's embedding grows by a row "
                        "each, set model.vocab_size), or are all kept as plain text (text)")
    p.add_argument("--limit", type=int, default=None, help="with --format chat: only the first N conversations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: returns 0, or 2 after one `error: ...` line on stderr for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verify:
        from trainer.data.integrity import verify_folder

        return verify_folder(args.verify, progress=not args.no_progress)
    if not args.out:
        parser.error("the following arguments are required: --out")
    command = shlex.join(["python", "-m", "trainer.data.prepare", *argv])
    if args.format == "chat":
        from trainer.data.chat_prepare import prepare_chat

        prepare_chat(args.input or (), args.out, template=args.chat_template, end_of_turn=args.end_of_turn,
                     markers=args.markers, corpus=args.corpus, tokenizer=args.tokenizer,
                     vocab_size=args.vocab_size, val_fraction=args.val_fraction, seed=args.seed, bos=args.bos,
                     limit=args.limit, command=command)
        return ExitCode.OK
    if args.corpus == "stdlib_qa":
        parser.error("--corpus stdlib_qa is a chat corpus: add --format chat")
    try:
        prepare(
            inputs=args.input or (), out=args.out, vocab_size=args.vocab_size, corpus=args.corpus,
            tokenizer=args.tokenizer, val_fraction=args.val_fraction, text_field=args.text_field, bos=args.bos,
            workers=args.workers, seed=args.seed, dtype=args.dtype, max_files=args.max_files,
            tfds_data_dir=args.tfds_data_dir, split=args.split, progress=not args.no_progress,
            command=command,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
