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
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from trainer import storage
from trainer.data import DataError, chat, conversations
from trainer.data import shards as shards_lib
from trainer.data import tokenizer as tokenizer_lib
from trainer.data.folder import claim_folder
from trainer.data.shards import Manifest, ShardWriter
from trainer.data.units import is_validation

CORPORA = ("stdlib_qa",)
_PER_SHARD = 50_000  # conversations per shard


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
) -> Manifest:
    """Prepare conversations from JSONL `inputs` (or `corpus='stdlib_qa'`) into `out`; returns the manifest.

    Raises DataError with one line on bad input: an unknown shape, a template that hides the assistant turns, a
    conversation whose mask is all zero, a special end-of-turn marker that is not one token. `markers`: see
    `chat.resolve_template`.
    """
    started = time.perf_counter()
    if not out:
        raise DataError("no output given: pass --out DIR_OR_GS_URL")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    storage.check_writable(out, "--out")
    spec = chat.resolve_template(template, end_of_turn, markers)
    convs = list(_conversations(inputs, corpus, limit))
    if not convs:
        raise DataError("no conversations in the input")
    tok = _tokenizer(tokenizer, out, spec, convs, vocab_size, verbose)
    if bos and tok.bos_id is None:
        raise DataError("--bos was given but the tokenizer has no BOS token")
    dtype = shards_lib.choose_dtype(tok.vocab_size)
    # Every conversation is rendered and masked before anything is written: a bad one costs nothing on disk.
    encoded = [
        (key, *chat.encode(spec, chat.normalize(messages, key), tok, bos=bos, where=key)) for key, messages in convs
    ]
    tokenizer_file = claim_folder(out, tok)  # one rule for every kind of folder: one tokenizer per folder
    config = chat.chat_config(spec, tok)
    storage.write_json_atomic(storage.join(out, tokenizer_lib.CHAT_CONFIG_FILE), config)

    writers: dict[str, ShardWriter] = {}
    infos = []
    counts = {"train": 0, "val": 0}
    masked = total = 0
    try:
        for key, ids, mask in encoded:
            split = "val" if is_validation(key, seed, val_fraction) else "train"
            if split not in writers:
                writers[split] = ShardWriter(
                    out, f"{split}-{counts[split] // _PER_SHARD:05d}-chat{shards_lib.SHARD_SUFFIX}", split, dtype
                )
            writers[split].write(ids, mask)
            counts[split] += 1
            masked, total = masked + sum(mask), total + len(ids)
            if counts[split] % _PER_SHARD == 0:
                infos.append(writers.pop(split).close())
        infos += [w.close() for w in writers.values()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
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
        shards=tuple(sorted((i for i in infos if i is not None), key=lambda s: (s.split, s.file))),
        bos=bos,
        seed=seed,
        val_fraction=val_fraction,
        source=corpus or ", ".join(inputs),
        command=command,
        kind="chat",
        chat=config,
        location=out,
    )
    shards_lib.write_manifest(out, manifest)
    if verbose:
        print(
            f"prepared {len(convs):,} conversations (train {counts['train']:,}, val {counts['val']:,}), "
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


def _conversations(inputs: Sequence[str], corpus: str | None, limit: int | None) -> Iterable:
    if corpus is not None:
        if corpus not in CORPORA:
            raise DataError(f"--corpus {corpus!r} is not a chat corpus; use one of {', '.join(CORPORA)}")
        yield from conversations.stdlib_instructions(limit)
        return
    paths = []
    for spec in inputs:
        storage.check_reachable(spec, "--input")
        found = _glob(spec) if any(c in spec for c in "*?[") else [spec]
        if not found or not all(storage.exists(p) for p in found):
            raise DataError(f"--input {spec} matches no file")
        paths += found
    for count, conversation in enumerate(conversations.read_jsonl(paths)):
        if limit is not None and count >= limit:
            return
        yield conversation


def _glob(pattern: str) -> list[str]:
    fs, path = storage.filesystem(pattern)
    scheme = pattern.split("://", 1)[0] + "://" if storage.is_remote(pattern) else ""
    return sorted(scheme + p if scheme and not p.startswith(scheme) else p for p in fs.glob(path))


def _tokenizer(
    path: str | None, out: str, spec: chat.ChatTemplate, convs: list, vocab_size: int, verbose: bool
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
    texts = [chat.render(spec, chat.normalize(m, key)) for key, m in convs]
    if verbose:
        print(
            f"training a SentencePiece BPE tokenizer (vocab {vocab_size:,}) on {sum(map(len, texts)):,} characters "
            f"with {', '.join(spec.special_tokens) or 'no'} special tokens"
        )
    return tokenizer_lib.train_sentencepiece(texts, vocab_size, special_tokens=spec.special_tokens)
