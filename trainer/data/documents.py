"""What prepare reads: an `Item` (a file or a range of a dataset's rows) and the `Document`s it yields, shared by the
file readers (trainer.data.sources) and the dataset readers (trainer.data.tfds_source, trainer.data.hf_source)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from trainer.data import DataError


@dataclasses.dataclass(frozen=True)
class Item:
    """One unit of reading: a file (text, JSONL or Parquet) or a range of rows of a TFDS / HF dataset split."""

    kind: str  # 'text' | 'jsonl' | 'parquet' | 'tfds' | 'hf' | 'hf_stream' (one data file of a streamed dataset)
    path: str  # file path / URL; tfds: the prepared dataset's folder; hf: what follows `hf:`
    size: int = 0  # bytes on disk (0: unknown), for grouping and the progress estimate
    field: str = "text"  # JSONL key / Parquet column / dataset feature
    split: str = ""  # tfds / hf split
    part: int = 0  # tfds / hf: which of `parts` work units the split's rows were cut into
    parts: int = 1
    data_dir: str = ""  # tfds data dir
    name: str = ""  # files: the path relative to the inputs' common folder; the documents' key (split, reports)
    start: int = 0  # tfds / hf: the first row (of the split) to read
    rows: int = 0  # tfds / hf: how many rows
    fingerprint: str = ""  # tfds / hf: identity of the dataset's content (resume redoes a unit when it changes)
    byte_start: int = 0  # an uncompressed JSONL file cut into parts: the byte range [byte_start, byte_end) of this
    byte_end: int = 0  # part (the lines that start in it, trainer.data.lines); byte_end 0: the whole file
    fields: tuple[str, ...] = ()  # JSONL / Parquet / hf records: the fields joined into one text (--fields)
    template: str = ""  # ... or a Jinja row template rendering a record into one text (--template)

    @property
    def key(self) -> str:
        """Stable name of the item: moving the corpus folder keeps every document's train/val assignment."""
        return self.name or self.path


@dataclasses.dataclass(frozen=True)
class Document:
    """A document's text, a key that identifies it across runs (for the train/val split), and its U+FFFD count."""

    key: str
    text: str
    replaced: int = 0


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """Decode with invalid bytes replaced by U+FFFD; also return how many replacements were made."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def value_document(key: str, value: object, item: Item) -> Iterator[Document]:
    """One row's value (text, UTF-8 bytes or None) as a document; DataError for anything else."""
    if value is None:
        value = ""
    if isinstance(value, bytes):
        text, replaced = decode_utf8(value)
    elif isinstance(value, str):
        text, replaced = value, 0
    else:
        raise DataError(f"{item.path}: field {item.field!r} holds {type(value).__name__}, not text")
    yield Document(key, text, replaced)
