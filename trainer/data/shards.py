"""ArrayRecord shards of token ids and the `manifest.json` that describes a prepared folder.

Each record is one document: its token ids as raw little-endian uint16 (vocab ≤ 65,536) or uint32. Records are written
with group_size 1 so Grain can read any document directly (global shuffle). A shard is written to a local temp file,
hashed, then moved or uploaded in one piece; a small sidecar JSON per work unit (written after its shards) records
what finished, so an interrupted `prepare` resumes where it stopped. The manifest is written last.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer import storage
from trainer.data import DataError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_SUFFIX = ".array_record"
_WRITER_OPTIONS = "group_size:1"
_DTYPES = {"uint16": 2**16, "uint32": 2**32}


def prepare_hint(path: str) -> str:
    """The command that makes `path` a prepared folder, for error messages."""
    return f"python -m trainer.data.prepare --input 'PATH_OR_GLOB' --out {path}  (or --corpus stdlib)"


def choose_dtype(vocab_size: int, forced: str | None = None) -> str:
    """uint16 when every id fits, else uint32; a forced dtype must hold every id (ids run 0 .. vocab_size-1)."""
    if forced is not None:
        if forced not in _DTYPES:
            raise DataError(f"--dtype must be uint16 or uint32, got {forced!r}")
        if vocab_size > _DTYPES[forced]:
            raise DataError(
                f"a vocabulary of {vocab_size:,} ids does not fit {forced} (at most {_DTYPES[forced]:,}); use uint32"
            )
        return forced
    for name, limit in _DTYPES.items():
        if vocab_size <= limit:
            return name
    raise DataError(f"a vocabulary of {vocab_size:,} ids does not fit uint32 (at most {2**32:,} ids)")


def encode_record(ids: Sequence[int], dtype: str) -> bytes:
    """One document's ids as the raw little-endian bytes of a record."""
    return np.asarray(ids, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def decode_record(record: bytes, dtype: str) -> np.ndarray:
    """A record's ids as int32 (the model's id type)."""
    return np.frombuffer(record, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.int32)


def encode_chat_record(ids: Sequence[int], mask: Sequence[int], dtype: str) -> bytes:
    """A conversation's record (datasets of kind "chat"): the ids as in `encode_record`, then one byte per token,
    1 where the token is a target the loss counts (assistant replies and their end-of-turn token)."""
    if len(ids) != len(mask):
        raise ValueError(f"{len(ids)} ids but {len(mask)} mask values")
    return encode_record(ids, dtype) + np.asarray(mask, dtype=np.uint8).tobytes()


def decode_chat_record(record: bytes, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A chat record's ids (int32) and loss mask (int32, 0/1)."""
    width = np.dtype(dtype).itemsize
    n = len(record) // (width + 1)
    ids = np.frombuffer(record[: n * width], dtype=np.dtype(dtype).newbyteorder("<")).astype(np.int32)
    return ids, np.frombuffer(record[n * width :], dtype=np.uint8).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One ArrayRecord file of a split and what it holds."""

    file: str
    split: str  # 'train' | 'val'
    documents: int
    tokens: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A prepared folder: tokenizer, dtype, shards with their hashes, totals and where the data came from."""

    tokenizer: dict[str, Any]  # kind, file, vocab_size, bos_id, eos_id, pad_id, sha256
    dtype: str
    shards: tuple[ShardInfo, ...]
    bos: bool = False
    seed: int = 0
    val_fraction: float = 0.0
    source: str = ""
    command: str = ""
    replacement_chars: dict[str, Any] = dataclasses.field(default_factory=dict)  # total, documents, by_input
    empty_documents_skipped: int = 0
    format_version: int = FORMAT_VERSION
    kind: str = "text"  # "text": documents of ids; "chat": conversations, ids + loss mask (trainer.data.chat)
    chat: dict[str, Any] = dataclasses.field(default_factory=dict)  # kind chat: template, end-of-turn token and id
    location: str = ""  # the folder it was read from; not stored

    def shards_of(self, split: str) -> list[ShardInfo]:
        """The shards of one split, in order."""
        return [s for s in self.shards if s.split == split]

    def shard_paths(self, split: str) -> list[str]:
        """Full paths (local or gs://) of one split's shards."""
        return [storage.join(self.location, s.file) for s in self.shards_of(split)]

    def totals(self) -> dict[str, dict[str, int]]:
        """Documents and tokens per split and overall."""
        out = {split: {"documents": 0, "tokens": 0} for split in ("train", "val", "all")}
        for s in self.shards:
            for key in (s.split, "all"):
                out[key]["documents"] += s.documents
                out[key]["tokens"] += s.tokens
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to manifest.json."""
        out = dataclasses.asdict(self)
        out.pop("location")
        out["totals"] = self.totals()
        return {"format_version": out.pop("format_version"), **out}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], location: str = "") -> Manifest:
        """Parse a manifest.json document (ignoring derived keys such as totals)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields}
        kwargs["shards"] = tuple(ShardInfo(**s) for s in raw.get("shards", []))
        return cls(**kwargs, location=location)


def read_manifest(path: str) -> Manifest:
    """The manifest of a prepared folder; a clear DataError naming the prepare command when there is none."""
    if not path:
        raise DataError("no data path given: set data.path (a folder made by `python -m trainer.data.prepare`)")
    manifest_path = storage.join(path, MANIFEST_FILE)
    if not storage.exists(manifest_path):
        what = "does not exist" if not storage.exists(path) else "holds no manifest.json (not prepared, or unfinished)"
        raise DataError(f"data path {path} {what}; prepare it with: {prepare_hint(path)}")
    damaged = (
        f"; re-run the prepare command that made it with the same --out (finished parts are verified and "
        f"kept, the manifest is rewritten): {prepare_hint(path)}"
    )
    try:
        raw = storage.read_json(manifest_path)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: a truncated or overwritten file
        raise DataError(f"{manifest_path} is damaged (not valid JSON: {e})" + damaged) from None
    if not isinstance(raw, dict):
        raise DataError(f"{manifest_path} is damaged (not a JSON object)" + damaged)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path} has format version {version}; this trainer reads {FORMAT_VERSION}: prepare it again"
        )
    try:
        return Manifest.from_dict(raw, location=path)
    except (TypeError, ValueError, AttributeError) as e:  # keys missing or of the wrong type
        raise DataError(f"{manifest_path} is damaged (unexpected content: {e})" + damaged) from None


def write_manifest(folder: str, manifest: Manifest) -> None:
    """Write manifest.json atomically; it is the last file of a preparation, so its presence means 'complete'."""
    storage.write_json_atomic(storage.join(folder, MANIFEST_FILE), manifest.to_dict())


class ShardWriter:
    """Writes one shard: records go to a local temp file, `close()` hashes it and moves/uploads it into place."""

    def __init__(self, folder: str, file: str, split: str, dtype: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.folder, self.file, self.split, self.dtype = folder, file, split, dtype
        tmp_dir = tempfile.gettempdir() if storage.is_remote(folder) else folder
        storage.makedirs(tmp_dir)
        self._tmp = os.path.join(tmp_dir, f".tmp-{uuid.uuid4().hex[:8]}-{file}")
        self._writer = ArrayRecordWriter(self._tmp, _WRITER_OPTIONS)
        self.documents = 0
        self.tokens = 0

    def write(self, ids: Sequence[int], mask: Sequence[int] | None = None) -> None:
        """Append one document (with `mask`: one conversation of a chat dataset)."""
        self._writer.write(
            encode_record(ids, self.dtype) if mask is None else encode_chat_record(ids, mask, self.dtype)
        )
        self.documents += 1
        self.tokens += len(ids)

    def close(self) -> ShardInfo | None:
        """Finish the shard and put it in place; None (and no file) when it holds no documents."""
        self._writer.close()
        if self.documents == 0:
            os.remove(self._tmp)
            return None
        digest = storage.sha256(self._tmp)
        storage.put_file(self._tmp, storage.join(self.folder, self.file))
        return ShardInfo(self.file, self.split, self.documents, self.tokens, digest)

    def abort(self) -> None:
        """Drop the partial shard (after an error)."""
        try:
            self._writer.close()
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)


def sidecar_path(folder: str, unit: int) -> str:
    """Where a work unit's completion record lives."""
    return storage.join(folder, f"part-{unit:05d}.json")


def read_verified_sidecar(folder: str, unit: int, key: str) -> dict[str, Any] | None:
    """A finished unit's record when its key matches and every shard it lists has the recorded sha256; else None."""
    path = sidecar_path(folder, unit)
    if not storage.exists(path):
        return None
    try:
        record = storage.read_json(path)
    except ValueError:
        return None
    if record.get("key") != key:
        return None
    for shard in record.get("shards", []):
        shard_path = storage.join(folder, shard["file"])
        if not storage.exists(shard_path) or storage.sha256(shard_path) != shard["sha256"]:
            return None
    return record
