"""A prepared folder's one rule, for text and chat alike: one tokenizer per folder. `claim_folder` refuses a folder
that holds another tokenizer's shards and stores this one there, before any shard is written."""

from __future__ import annotations

from trainer import storage
from trainer.data import DataError
from trainer.data import shards as shards_lib
from trainer.data import tokenizer as tokenizer_lib


def claim_folder(out: str, tok: tokenizer_lib.Tokenizer) -> str:
    """Refuse a folder that holds another tokenizer's shards; store this tokenizer there. Returns its manifest entry."""
    manifest_path = storage.join(out, shards_lib.MANIFEST_FILE)
    theirs: str | None = None
    if storage.exists(manifest_path):
        try:
            theirs = storage.read_json(manifest_path).get("tokenizer", {}).get("sha256")
        except (ValueError, AttributeError):  # a damaged manifest: judge by the tokenizer file; it gets rewritten
            pass
    if theirs is None:
        existing = existing_tokenizer(out)
        if existing is not None:
            theirs = existing.sha256
        elif any(name.endswith(shards_lib.SHARD_SUFFIX) for name in storage.listdir(out)):
            raise DataError(
                f"{out} holds shards of an unknown tokenizer (no manifest.json, no tokenizer): use a fresh --out"
            )
    if theirs is not None and theirs != tok.sha256:
        raise DataError(
            f"{out} already holds shards of another tokenizer (sha256 {theirs[:12]}…, "
            f"this one {tok.sha256[:12]}…): "
            "write to a fresh --out or delete that folder"
        )
    storage.makedirs(out)
    return tok.save(out)


def existing_tokenizer(out: str) -> tokenizer_lib.Tokenizer | None:
    """The tokenizer a half-prepared folder already holds (written before its manifest), or None."""
    for name in (tokenizer_lib.SENTENCEPIECE_FILE, tokenizer_lib.HF_FOLDER):
        if storage.exists(storage.join(out, name)):
            return tokenizer_lib.open_tokenizer(storage.join(out, name))
    return None
