"""`python -m trainer.data.prepare`: text or conversations → tokenizer + ArrayRecord shards + manifest.json.

    python -m trainer.data.prepare --corpus stdlib --out data/stdlib --vocab-size 4096
    python -m trainer.data.prepare --input 'corpus/*.jsonl' --text-field text --out gs://bucket/data/web
    python -m trainer.data.prepare --input docs/ --tokenizer hf_tokenizer_folder/ --bos --out data/docs
    python -m trainer.data.prepare --input chats.jsonl --format chat --chat-template chatml --out data/chat
    python -m trainer.data.prepare --verify data/docs      (every shard's record count and sha256 vs the manifest)

The command and `ensure_prepared` (a recipe's corpus prepared on its first run) choose the preparer: text
(trainer.data.text_prepare, whose `prepare` is imported from here too), chat (trainer.data.chat_prepare), or the
shard check (trainer.data.integrity). Output folders local or gs://.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from trainer import cli_args, storage
from trainer.config import DataConfig
from trainer.data import DataError
from trainer.data import shards as shards_lib
from trainer.data.chat_prepare import prepare_chat
from trainer.data.integrity import verify_folder
from trainer.data.shards import Manifest
from trainer.data.text_prepare import prepare
from trainer.errors import ExitCode, cli


def ensure_prepared(data: DataConfig, progress: bool = True, tokenizer: str | None = None) -> Manifest | None:
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
        return prepare_chat(
            corpus=data.prepare_corpus,
            out=data.path,
            template=data.chat_template or "chatml",
            end_of_turn=data.end_of_turn,
            tokenizer=tokenizer,
            vocab_size=data.prepare_vocab_size,
            val_fraction=data.prepare_val_fraction,
            command=f"auto-prepare corpus={data.prepare_corpus} template={data.chat_template}",
        )
    return prepare(
        corpus=data.prepare_corpus,
        out=data.path,
        vocab_size=data.prepare_vocab_size,
        val_fraction=data.prepare_val_fraction,
        progress=progress,
        command=f"auto-prepare corpus={data.prepare_corpus} vocab_size={data.prepare_vocab_size} "
        f"val_fraction={data.prepare_val_fraction}",
    )


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = cli_args.ArgumentParser(
        prog="python -m trainer.data.prepare",
        description="Tokenize text into ArrayRecord shards + manifest.json (local folder or gs:// URL).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--input",
        nargs="+",
        action="extend",
        metavar="PATH_OR_GLOB",
        help="text files/folders/globs (one document per file), .jsonl, .parquet, "
        "tfds:NAME[/CONFIG][:VERSION], hf:PATH_OR_NAME[:CONFIG]; repeatable",
    )
    src.add_argument(
        "--corpus",
        choices=["stdlib", "stdlib_qa"],
        help="the built-in corpus: this Python's standard library sources (stdlib), or with --format "
        "chat Q&A about its functions made from their docstrings and signatures (stdlib_qa)",
    )
    src.add_argument(
        "--verify",
        metavar="DIR",
        help="check a prepared folder instead: every shard's record count and sha256 against its "
        "manifest (exit 1 and the damaged shards listed when any differ)",
    )
    p.add_argument("--out", help="output folder or gs://bucket/path (required unless --verify)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument(
        "--vocab-size", type=int, default=4096, help="train a SentencePiece BPE of this size (default 4096)"
    )
    tok.add_argument("--tokenizer", help="use this SentencePiece .model file or Hugging Face tokenizer folder")
    p.add_argument("--val-fraction", type=float, default=0.01, help="documents held out for validation (default 0.01)")
    p.add_argument("--text-field", default="text", help="JSONL key / Parquet column / dataset feature (default text)")
    p.add_argument("--bos", action="store_true", help="start each document with BOS (EOS always ends it)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    p.add_argument("--dtype", choices=["uint16", "uint32"], help="token dtype (default: uint16 when the vocab fits)")
    p.add_argument("--max-files", type=int, help="read only the first N input files (quick trials)")
    p.add_argument(
        "--tfds-data-dir",
        help="TFDS data dir (local or gs://) for tfds: inputs (default $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--split",
        default="train",
        help="split of tfds: and hf: inputs, e.g. train, validation, 'train[:10%%]' (default train)",
    )
    p.add_argument(
        "--format",
        choices=["text", "chat"],
        default="text",
        help="text: documents for pretraining (default); chat: JSONL conversations (messages, Alpaca/Dolly, "
        "OpenAssistant trees) rendered through --chat-template, with a loss mask on assistant replies "
        "(docs/finetune.md)",
    )
    p.add_argument(
        "--chat-template",
        default="chatml",
        help="with --format chat: chatml, kodalite (KodaLite's card: plain-text markers), smallcoder "
        "('User: ...\\nAssistant:', replies end with EOS), alpaca, or a Jinja string (default chatml)",
    )
    p.add_argument(
        "--end-of-turn",
        default=None,
        help="with --format chat: the text that ends a reply (default: the template's; a Jinja "
        "template's: the tokenizer's EOS). One id when the vocabulary has it (e.g. '<|endoftext|>' "
        "in GPT-2's: nothing added); several tokens: kept as plain text and stopped at as a stop "
        "string, unless --markers special",
    )
    p.add_argument(
        "--markers",
        choices=["template", "special", "text"],
        default="template",
        help="with --format chat: markers the tokenizer splits stay as the template has them (template, "
        "default: chatml's are added as special tokens, kodalite's and --end-of-turn's stay plain "
        "text), are all added as new special ids (special: the model's embedding grows by a row "
        "each, set model.vocab_size), or are all kept as plain text (text)",
    )
    p.add_argument("--limit", type=int, default=None, help="with --format chat: only the first N conversations")
    p.add_argument(
        "--fields",
        type=lambda v: tuple(f.strip() for f in v.split(",") if f.strip()),
        default=(),
        metavar="A,B,C",
        help="records with several fields: text joins them with a blank line; chat makes the last the reply and "
        "the others the user's turn (e.g. instruction,input,output)",
    )
    p.add_argument(
        "--template",
        default="",
        metavar="JINJA",
        help="a Jinja row template over the record's fields: the document (text) or the user's turn (chat, "
        "with the reply's field in --fields)",
    )
    p.add_argument("--stream", action="store_true", help="read hf: inputs in streaming mode, one unit per data file")
    p.add_argument(
        "--unit-bytes",
        type=int,
        default=None,
        help="input bytes per work unit (default 1/16 of the input, 256 KiB to 128 MiB); a larger uncompressed "
        "JSONL file is cut into several",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: returns 0, or 2 after one `error: ...` line on stderr for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verify:
        return verify_folder(args.verify, progress=not args.no_progress)
    if not args.out:
        parser.error("the following arguments are required: --out")
    command = shlex.join(["python", "-m", "trainer.data.prepare", *argv])
    if args.format == "chat":
        return _chat(args, command)
    return _text(parser, args, command)


def _chat(args: argparse.Namespace, command: str) -> int:
    try:
        prepare_chat(
            args.input or (),
            args.out,
            template=args.chat_template,
            end_of_turn=args.end_of_turn,
            markers=args.markers,
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            val_fraction=args.val_fraction,
            seed=args.seed,
            bos=args.bos,
            limit=args.limit,
            command=command,
            workers=args.workers,
            unit_bytes=args.unit_bytes,
            fields=args.fields,
            row_template=args.template,
            stream=args.stream,
            split=args.split,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def _text(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> int:
    if args.corpus == "stdlib_qa":
        parser.error("--corpus stdlib_qa is a chat corpus: add --format chat")
    try:
        prepare(
            inputs=args.input or (),
            out=args.out,
            vocab_size=args.vocab_size,
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            val_fraction=args.val_fraction,
            text_field=args.text_field,
            bos=args.bos,
            workers=args.workers,
            seed=args.seed,
            dtype=args.dtype,
            max_files=args.max_files,
            tfds_data_dir=args.tfds_data_dir,
            split=args.split,
            progress=not args.no_progress,
            command=command,
            unit_bytes=args.unit_bytes,
            fields=args.fields,
            template=args.template,
            stream=args.stream,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
