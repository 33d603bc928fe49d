"""`python -m trainer.data.prepare --format chat`: conversations → tokenizer (+ chat tokens) + masked ArrayRecord
shards.

    python -m trainer.data.prepare --format chat --input dolly.jsonl --chat-template alpaca \\
        --tokenizer runs/base/tokenizer --out data/dolly-chat
    python -m trainer.data.prepare --format chat --corpus stdlib_qa --chat-template kodalite \\
        --tokenizer runs/tiny/tokenizer --out data/stdlib-qa

Each record is one conversation: its token ids and a loss mask (1 on assistant replies and their end-of-turn
marker; `trainer.data.chat`). The tokenizer is the given one (a base model's, to fine-tune it) with the template's
special tokens added when it lacks them (`--markers`: which markers are special), or a SentencePiece BPE trained on
the rendered conversations with those tokens as user-defined symbols. `chat_template.json` beside it names the
template, the end-of-turn id and the stop strings (a plain-text marker); the manifest says `kind: chat`.
Conversations go to the validation split by a seeded hash of where they came from.

Preparation runs on text's work-unit engine (trainer.data.units): units over the input files (compressed ones
streamed, one unit each) and byte ranges of large JSONL files, worker processes, a sidecar per finished unit so a
re-run skips it, memory bounded whatever the input size, the manifest written last. A file of flat OpenAssistant
rows is one unit (its trees need the whole file). A bad record fails in one line naming its file and line; the units
already finished stay, so the fixed input resumes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from trainer import storage
from trainer.data import DataError, chat, conversations, records, sources
from trainer.data import shards as shards_lib
from trainer.data import tokenizer as tokenizer_lib
from trainer.data import units as units_lib
from trainer.data.documents import Item
from trainer.data.folder import claim_folder
from trainer.data.shards import Manifest, ShardInfo
from trainer.data.units import WorkUnit

CORPORA = ("stdlib_qa",)
TOKENIZER_SAMPLE_CHARS = 16_000_000  # rendered conversations a new tokenizer is trained on
_CHECKED_FIRST = 64  # conversations encoded before anything is written


def prepare_chat(
    inputs: Sequence[str] = (),
    out: str = "",
    *,
    template: str = "chatml",
    end_of_turn: str | None = None,
    markers: str = "template",
    corpus: str | None = None,
    tokenizer: str | None = None,
    vocab_size: int = 4096,
    val_fraction: float = 0.01,
    seed: int = 0,
    bos: bool = False,
    limit: int | None = None,
    verbose: bool = True,
    command: str = "",
    workers: int | None = None,
    unit_bytes: int | None = None,
    fields: Sequence[str] = (),
    row_template: str = "",
    stream: bool = False,
    split: str = "train",
    progress: bool = False,
) -> Manifest:
    """Prepare conversations from JSONL / Parquet / hf: `inputs` (or `corpus='stdlib_qa'`) into `out`; returns the
    manifest.

    Raises DataError with one line on bad input: an unknown shape, a template that hides the assistant turns, a
    conversation whose mask is all zero, a special end-of-turn marker that is not one token. `markers`: see
    `chat.resolve_template`. `fields` / `row_template`: a field map or Jinja row template making each record's
    exchange (trainer.data.records); `workers`, `unit_bytes`, `stream`: as for text (trainer.data.text_prepare).
    """
    started = time.perf_counter()
    if not out:
        raise DataError("no output given: pass --out DIR_OR_GS_URL")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    storage.check_writable(out, "--out")
    spec = chat.resolve_template(template, end_of_turn, markers)
    records.check_format(tuple(fields), row_template, chat=True)
    items = _items(inputs, corpus, limit, tuple(fields), row_template, stream, split)
    workers = max(1, workers or os.cpu_count() or 1)
    tok = _tokenizer(tokenizer, out, spec, items, vocab_size, verbose)
    if bos and tok.bos_id is None:
        raise DataError("--bos was given but the tokenizer has no BOS token")
    dtype = shards_lib.choose_dtype(tok.vocab_size)
    config = chat.chat_config(spec, tok)  # checks the end-of-turn marker before any work
    _check_first(items, spec, tok, bos)
    tokenizer_file = claim_folder(out, tok)  # one rule for every kind of folder: one tokenizer per folder
    storage.write_json_atomic(storage.join(out, tokenizer_lib.CHAT_CONFIG_FILE), config)

    total_bytes = sum(item.size for item in items)
    target = unit_bytes or min(128 << 20, max(256 << 10, total_bytes // 16))
    units = [items] if limit is not None else sources.group(items, target, _whole_files(items, target))
    settings = {
        "format": shards_lib.FORMAT_VERSION,
        "kind": "chat",
        "tokenizer": tok.sha256,
        "template": dataclasses.asdict(spec),
        "dtype": dtype,
        "bos": bos,
        "seed": seed,
        "val_fraction": val_fraction,
        "limit": limit or 0,
    }
    bos_id = tok.bos_id if bos else None
    template_fields = dataclasses.asdict(spec)
    tasks = [
        WorkUnit(
            i,
            unit,
            out,
            units_lib.unit_key(unit, settings),
            dtype,
            bos_id,
            tok.eos_id,
            seed,
            val_fraction,
            chat=template_fields,
            limit=limit or 0,
        )
        for i, unit in enumerate(units)
    ]
    done, todo = units_lib.finished_units(tasks, out, verbose)
    for record in units_lib.run_units(todo, tok, workers, progress, 0):
        done[record["unit"]] = record

    infos = [ShardInfo(**shard) for task in tasks for shard in done[task.index]["shards"]]
    manifest = Manifest(
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
        shards=tuple(sorted(infos, key=lambda s: (s.split, s.file))),
        bos=bos,
        seed=seed,
        val_fraction=val_fraction,
        source=corpus or ", ".join(inputs),
        command=command,
        kind="chat",
        chat=config,
        location=out,
    )
    totals = manifest.totals()
    if totals["all"]["documents"] == 0:
        raise DataError("no conversations in the input")
    shards_lib.write_manifest(out, manifest)
    if verbose:
        masked = sum(done[t.index].get("masked", 0) for t in tasks)
        total = totals["all"]["tokens"]
        print(
            f"prepared {totals['all']['documents']:,} conversations (train {totals['train']['documents']:,}, "
            f"val {totals['val']['documents']:,}), "
            f"{total:,} tokens of which {masked:,} ({100 * masked / max(total, 1):.0f}%) are trained on, "
            f"template {spec.name}, end of turn {_stop_description(config)}, "
            f"in {out} ({time.perf_counter() - started:.1f} s)"
        )
    return manifest


def _stop_description(config: dict) -> str:
    """How replies end, for the summary line: a single id, or plain text found as a stop string."""
    if config["stop_strings"]:
        return f"{config['end_of_turn']!r} as plain text (a stop string; no token added)"
    return f"{config['end_of_turn']!r} = id {config['end_of_turn_id']}"


def _items(
    inputs: Sequence[str],
    corpus: str | None,
    limit: int | None,
    fields: tuple[str, ...],
    row_template: str,
    stream: bool,
    split: str,
) -> list[Item]:
    """The items to read: the built-in corpus as one item, or the inputs' files (any name read as JSONL) and hf:
    items."""
    if corpus is not None:
        if inputs:
            raise DataError("give either --input or --corpus, not both")
        if corpus not in CORPORA:
            raise DataError(f"--corpus {corpus!r} is not a chat corpus; use one of {', '.join(CORPORA)}")
        return [Item("stdlib_qa", corpus, name=corpus, rows=limit or 0)]
    if not inputs:
        raise DataError("nothing to prepare: give --input PATH_OR_GLOB (repeatable) or --corpus stdlib_qa")
    for spec in inputs:
        storage.check_reachable(spec, "--input")
    found, _ = sources.resolve(inputs, None, "", split=split, fields=fields, template=row_template, stream=stream)
    items = [dataclasses.replace(i, kind="jsonl") if i.kind == "text" else i for i in found]
    if any(i.kind == "tfds" for i in items):
        raise DataError("--format chat reads JSONL, Parquet and hf: inputs, not tfds:")
    return items


def _whole_files(items: list[Item], target: int) -> frozenset[str]:
    """Files that would be cut into byte ranges but hold flat OpenAssistant rows (first record): one unit each."""
    whole = set()
    for item in items:
        if item.size > target and sources.splittable(item) and not (item.fields or item.template):
            first = next(iter(sources.jsonl_rows(dataclasses.replace(item, byte_end=1), "is not JSON")), None)
            if first is not None and conversations.is_flat_oasst(first.value):
                whole.add(item.path)
    return frozenset(whole)


def _check_first(items: list[Item], spec: chat.ChatTemplate, tok: tokenizer_lib.Tokenizer, bos: bool) -> None:
    """Render and mask the first conversations before anything is written: an input of the wrong shape, or a template
    that hides the replies, is refused with an untouched --out."""
    for count, (row, messages) in enumerate(
        (row, m) for item in items if item.kind != "stdlib_qa" for row, m in conversations.read_item(item)
    ):
        chat.encode(spec, chat.normalize(messages, row.where()), tok, bos=bos, where=row.where())
        if count + 1 >= _CHECKED_FIRST:
            return


def _sample_conversations(items: list[Item], spec: chat.ChatTemplate, max_chars: int) -> Iterator[str]:
    """Rendered conversations from the items, in order, up to `max_chars`: a new tokenizer's training text."""
    total = 0
    for item in items:
        if item.kind == "stdlib_qa":
            found: Any = ((key, m) for key, m in conversations.stdlib_instructions(item.rows or None))
        else:
            found = ((row.key, m) for row, m in conversations.read_item(item))
        for key, messages in found:
            text = chat.render(spec, chat.normalize(messages, key))
            yield text
            total += len(text)
            if total >= max_chars:
                return


def _tokenizer(
    path: str | None, out: str, spec: chat.ChatTemplate, items: list[Item], vocab_size: int, verbose: bool
) -> tokenizer_lib.Tokenizer:
    """The given tokenizer (+ the template's missing special tokens), the one already in `out`, or a new BPE."""
    if path is None:
        for name in (tokenizer_lib.SENTENCEPIECE_FILE, tokenizer_lib.HF_FOLDER):
            if storage.exists(storage.join(out, name)):
                path = storage.join(out, name)
    if path is not None:
        tok = tokenizer_lib.open_tokenizer(path)
        missing = chat.missing_tokens(spec, tok)
        if missing:
            tok = tok.with_tokens(missing)
            if verbose:
                print(
                    f"added {', '.join(missing)} to the tokenizer as ids "
                    f"{tok.vocab_size - len(missing)}..{tok.vocab_size - 1} (a base model grows its embedding "
                    "to match: model.vocab_size)"
                )
        return tok
    if vocab_size < 300:
        raise DataError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 260 ids; use at least 300")
    texts = list(_sample_conversations(items, spec, TOKENIZER_SAMPLE_CHARS))
    if not texts:
        raise DataError("no conversations in the input")
    if verbose:
        print(
            f"training a SentencePiece BPE tokenizer (vocab {vocab_size:,}) on {sum(map(len, texts)):,} characters "
            f"with {', '.join(spec.special_tokens) or 'no'} special tokens"
        )
    return tokenizer_lib.train_sentencepiece(texts, vocab_size, special_tokens=spec.special_tokens)
