"""Input readers: turn `--input` arguments (files, globs, tfds:, hf:) or `--corpus stdlib` into documents.

`resolve` lists the readable items up front (so a missing or unreadable file fails before any work starts) and
`read_documents` streams one item's documents in a worker process (`read_rows`: its records, for chat mode). Files
may be compressed (trainer.data.compressed: read as a stream, one unit each); an uncompressed JSONL file larger than
a work unit is cut into byte ranges at line boundaries (trainer.data.lines), so one big file keeps every worker busy.
Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD; the number of replacements travels with each document
so the summary and manifest can report it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence

from trainer import storage
from trainer.data import DataError, compressed, hf_source, lines, records, tfds_source
from trainer.data.documents import Document, Item, decode_utf8
from trainer.data.records import Row
from trainer.errors import first_line

STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_JSONL_EXT = (".jsonl", ".ndjson")  # each also compressed (compressed.SUFFIXES)
_PARQUET_EXT = (".parquet",)


# ---------------------------------------------------------------------------------------------- resolving


def stdlib_files(max_files: int | None = None) -> tuple[str, list[str]]:
    """This Python's standard library .py files (no test folders or site-packages), sorted: the built-in corpus."""
    root = sysconfig.get_paths()["stdlib"]
    files: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_SKIP_DIRS and not d.startswith("."))
        files.extend(os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))
    return root, files[:max_files] if max_files else files


def _kind_of(path: str) -> str:
    lower = compressed.without_compression(path.lower())
    if lower.endswith(_JSONL_EXT):
        return "jsonl"
    if lower.endswith(_PARQUET_EXT):
        return "parquet"
    return "text"


def _expand(pattern: str) -> list[str]:
    """Files named by a path, folder (recursively) or glob; local or a URL."""
    if storage.is_remote(pattern):
        fs, _ = storage.filesystem(pattern)
        protocol = pattern.split("://", 1)[0]
        if any(c in pattern for c in "*?["):
            return sorted(f"{protocol}://{p}" for p in fs.glob(pattern) if not fs.isdir(p))
        if storage.isdir(pattern):
            return sorted(f"{protocol}://{p}" for p in fs.find(pattern))
        return [pattern] if storage.exists(pattern) else []
    matches = glob.glob(pattern, recursive=True) if any(c in pattern for c in "*?[") else [pattern]
    files: list[str] = []
    for match in sorted(matches):
        if os.path.isdir(match):
            for folder, dirs, names in os.walk(match):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(os.path.join(folder, n) for n in sorted(names) if not n.startswith("."))
        elif os.path.lexists(match):
            files.append(match)
    return files


def _file_item(path: str, field: str) -> Item:
    if storage.is_remote(path):
        fs, p = storage.filesystem(path)
        return Item(_kind_of(path), path, int(fs.size(p) or 0), field)
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        reason = "not a readable file" if os.path.exists(path) else "it does not exist (a broken link?)"
        raise DataError(f"cannot read input file {path}: {reason}")
    return Item(_kind_of(path), path, os.path.getsize(path), field)


def _dataset_items(spec: str, field: str, tfds_data_dir: str | None, split: str, stream: bool) -> list[Item]:
    kind, _, rest = spec.partition(":")
    if not rest:
        example = "tfds:NAME[/CONFIG][:VERSION]" if kind == "tfds" else "hf:PATH_OR_NAME"
        raise DataError(f"--input {spec}: name the dataset, e.g. {example}")
    if kind == "tfds":
        return tfds_source.items(rest, field, split, tfds_data_dir)
    if stream:
        return hf_source.stream_items(rest, field, split)
    return hf_source.items(rest, field, split)


def resolve(
    inputs: Sequence[str],
    corpus: str | None = None,
    text_field: str = "text",
    tfds_data_dir: str | None = None,
    max_files: int | None = None,
    split: str = "train",
    *,
    fields: tuple[str, ...] = (),
    template: str = "",
    stream: bool = False,
) -> tuple[list[Item], str]:
    """All items to read and a one-line description of the source; fails (DataError) on no match or unreadable files.

    `fields` / `template`: how a structured record makes its text (trainer.data.records) instead of `text_field`;
    `stream`: `hf:` datasets read in streaming mode, one item per data file, nothing downloaded first.
    """
    if corpus is not None:
        if inputs:
            raise DataError("give either --input or --corpus, not both")
        if corpus != "stdlib":
            raise DataError(f"unknown corpus {corpus!r}; the built-in corpus is 'stdlib'")
        root, files = stdlib_files(max_files)
        if not files:
            raise DataError(f"no .py files found under the standard library folder {root}")
        items = [Item("text", f, os.path.getsize(f), name=os.path.relpath(f, root)) for f in files]
        return items, f"stdlib: {len(files)} .py files of {root} (test folders and site-packages skipped)"
    if not inputs:
        raise DataError("nothing to prepare: give --input PATH_OR_GLOB (repeatable) or --corpus stdlib")
    items: list[Item] = []
    for spec in inputs:
        if spec.startswith(("tfds:", "hf:")):
            field = "" if spec.startswith("hf:") and (fields or template or not text_field) else text_field
            items.extend(_dataset_items(spec, field, tfds_data_dir, split, stream))
            continue
        files = _expand(spec)
        if not files:
            raise DataError(f"no input files match {spec}")
        items.extend(_file_item(f, text_field) for f in files)
    if max_files:
        items = items[:max_files]
    if any(i.kind == "parquet" for i in items):
        _import_pyarrow()
    items = _with_relative_names(items)
    if fields or template:
        items = [dataclasses.replace(i, fields=tuple(fields), template=template) for i in items]
    if stream and not any(i.kind == "hf_stream" for i in items):
        raise DataError("--stream reads hf: inputs in streaming mode; this --input has none")
    return items, "inputs: " + ", ".join(inputs) + f" ({len(items)} items)"


def _with_relative_names(items: list[Item]) -> list[Item]:
    files = [i for i in items if i.kind in ("text", "jsonl", "parquet")]
    if not files:
        return items
    try:
        root = os.path.commonpath([os.path.dirname(_plain(i.path)) for i in files])
    except ValueError:  # local and remote inputs mixed: keep full paths
        return items
    return [
        dataclasses.replace(i, name=compressed.without_compression(os.path.relpath(_plain(i.path), root)))
        if i in files
        else i
        for i in items
    ]


def _plain(path: str) -> str:
    return path.split("://", 1)[1] if storage.is_remote(path) else os.path.abspath(path)


def splittable(item: Item) -> bool:
    """Whether a file can be cut into byte ranges: uncompressed JSONL (a compressed stream has no random access)."""
    return item.kind == "jsonl" and not compressed.compression_of(item.path)


def group(items: Sequence[Item], target_bytes: int, whole: frozenset[str] = frozenset()) -> list[list[Item]]:
    """Consecutive items packed into work units of about `target_bytes`; a dataset split is cut into row ranges, an
    uncompressed JSONL file larger than `target_bytes` into byte ranges (unless its path is in `whole`), a streamed
    dataset is one unit per data file. The units depend on the inputs and `target_bytes` only, never on workers."""
    units: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if item.kind in ("tfds", "hf"):
            units.extend([part] for part in _row_parts(item, target_bytes))
            continue
        if item.kind == "hf_stream" or (item.size > target_bytes and splittable(item) and item.path not in whole):
            if current:
                units.append(current)
                current, size = [], 0
            units.extend([part] for part in _byte_parts(item, target_bytes))
            continue
        if current and size + item.size > target_bytes:
            units.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        units.append(current)
    return units


def _byte_parts(item: Item, target_bytes: int) -> list[Item]:
    if item.kind == "hf_stream":
        return [item]
    ranges = lines.split_points(item.size, target_bytes)
    return [
        dataclasses.replace(item, part=i, parts=len(ranges), byte_start=a, byte_end=b, size=b - a)
        for i, (a, b) in enumerate(ranges)
    ]


def _row_parts(item: Item, target_bytes: int) -> list[Item]:
    """A dataset item cut into even row ranges of about `target_bytes` each (at least one row per part)."""
    parts = max(1, min(item.rows, -(-item.size // max(1, target_bytes))))
    bounds = [item.start + item.rows * i // parts for i in range(parts + 1)]
    return [
        dataclasses.replace(
            item,
            part=i,
            parts=parts,
            start=bounds[i],
            rows=bounds[i + 1] - bounds[i],
            size=item.size * (bounds[i + 1] - bounds[i]) // max(1, item.rows),
        )
        for i in range(parts)
    ]


# ---------------------------------------------------------------------------------------------- reading


def read_documents(item: Item) -> Iterator[Document]:
    """The documents of one item in a stable order (keys are stable across runs); empty ones too, for counting."""
    try:
        if item.kind == "text":
            yield from _read_text(item)
        elif item.kind == "tfds":
            yield from tfds_source.read(item)
        elif item.kind == "hf" and not (item.fields or item.template):
            yield from hf_source.read(item)
        elif item.kind in ("jsonl", "parquet", "hf", "hf_stream"):
            yield from _record_documents(item)
        else:
            raise DataError(f"unknown input kind {item.kind!r}")
    except OSError as e:
        raise DataError(f"cannot read input file {item.path}: {e.strerror or e}") from None


def read_rows(item: Item) -> Iterator[Row]:
    """The records of a JSONL file (or of its byte range), a Parquet file or a dataset item, in a stable order."""
    try:
        if item.kind == "jsonl":
            yield from jsonl_rows(item)
        elif item.kind == "parquet":
            yield from _read_parquet(item)
        elif item.kind in ("hf", "hf_stream"):
            yield from hf_source.read_rows(item)
        else:
            raise DataError(f"{item.path}: {item.kind} input holds no records (JSONL, Parquet or hf: expected)")
    except OSError as e:
        raise DataError(f"cannot read input file {item.path}: {e.strerror or e}") from None


def _record_documents(item: Item) -> Iterator[Document]:
    shaped = bool(item.fields or item.template)
    for row in read_rows(item):
        if shaped:
            text = records.record_text(row, item.fields, item.template)
        elif not isinstance(row.value, dict) or item.field not in row.value:
            raise DataError(f"{row.where()} has no field {item.field!r} (choose one with --text-field)")
        else:
            text = row.value[item.field]
            if text is None:
                text = ""
            elif isinstance(text, bytes):
                text, replaced = decode_utf8(text)
                yield Document(row.key, text, replaced)
                continue
            elif not isinstance(text, str):
                raise DataError(f"{row.where()}: field {item.field!r} is {type(text).__name__}, not text")
        yield Document(row.key, text, row.replaced)


def _read_text(item: Item) -> Iterator[Document]:
    text, replaced = decode_utf8(compressed.read_all(item.path))
    yield Document(item.key, text, replaced)


def jsonl_rows(item: Item, not_json: str = "is not valid JSON") -> Iterator[Row]:
    """The JSON records of a JSONL item's lines (its byte range when it is a part), keyed `name@byte_offset`: the
    same key whether the file is whole, cut into parts or compressed. `not_json`: the error's wording."""
    counted = item.byte_start == 0  # line numbers are known without counting from the first byte of the file
    number = 0
    for offset, raw_line in lines.read_lines(item.path, item.byte_start, item.byte_end):
        number += 1
        if not raw_line.strip():
            continue
        line, replaced = decode_utf8(raw_line)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            where = Row("", None, item.path, offset, number if counted else 0).where()
            raise DataError(f"{where} {not_json}: {e.msg}") from None
        yield Row(f"{item.key}@{offset}", record, item.path, offset, number if counted else 0, replaced)


def _read_parquet(item: Item) -> Iterator[Row]:
    import pyarrow

    try:
        yield from _parquet_rows(item)
    except pyarrow.ArrowException as e:  # not Parquet, truncated, or a damaged page
        raise DataError(
            f"{item.path} is not a readable Parquet file ({first_line(e, 200)}); replace it or leave it out of --input"
        ) from None


def _parquet_rows(item: Item) -> Iterator[Row]:
    import pyarrow.parquet as pq

    with storage.open_file(item.path, "rb") as f:
        parquet = pq.ParquetFile(f)
        if item.field and not (item.fields or item.template) and item.field not in parquet.schema_arrow.names:
            raise DataError(
                f"{item.path} has no column {item.field!r} (columns: {', '.join(parquet.schema_arrow.names)}; "
                "choose one with --text-field)"
            )
        row = 0
        if item.fields or item.template or not item.field:  # whole records (chat shapes: every column)
            names = (
                None
                if item.template or not item.fields
                else [n for n in item.fields if n in parquet.schema_arrow.names]
            )
            for batch in parquet.iter_batches(columns=names, batch_size=4096):
                for record in batch.to_pylist():
                    row += 1
                    yield Row(f"{item.key}:{row}", record, item.path, -1, row)
            return
        for batch in parquet.iter_batches(columns=[item.field], batch_size=4096):
            for value in batch.column(0).to_pylist():
                row += 1
                yield Row(f"{item.key}:{row}", {item.field: value}, item.path, -1, row)


def _import_pyarrow():
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError('Parquet input needs pyarrow: pip install -e ".[parquet]"') from None
