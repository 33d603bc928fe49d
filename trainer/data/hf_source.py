"""`--input hf:PATH_OR_NAME`: a Hugging Face `datasets` dataset.

PATH may be a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (read with `load_from_disk`), or
local JSON / JSON Lines / Parquet files (a file, a glob or a folder of them; read with `load_dataset`, which converts
them to Arrow in the datasets cache once). Anything else is a dataset on the Hugging Face Hub, `owner/name[:CONFIG]`,
which `load_dataset` downloads into its cache first: that needs Hub access. Rows are read by index from the
memory-mapped Arrow files, so every work unit opens the dataset itself and reads only its own range.

With `--stream` the dataset is opened in the `datasets` library's streaming mode instead: nothing is converted or
downloaded first, each underlying data file (a shard of the stream) is one work unit that reads its rows as they
come, so tokenizing starts at once and the disk holds only the shards written. Rows are keyed as in the downloaded
form when the dataset is one data file; with several, by data file and row (the train/val split then differs from
the downloaded one's). Streaming needs the same `datasets` extra.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterator
from typing import Any

from trainer.data import DataError
from trainer.data.documents import Document, Item, value_document
from trainer.data.records import Row
from trainer.errors import first_line

_SAVED = ("state.json", "dataset_dict.json")  # what Dataset / DatasetDict.save_to_disk write
_BUILDERS = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json", ".parquet": "parquet"}
_BATCH = 1024  # rows per read


def import_datasets() -> Any:
    """`datasets`, or a DataError naming the extra to install."""
    try:
        import datasets
    except ImportError:
        raise DataError('--input hf:... needs Hugging Face datasets: pip install -e ".[datasets]"') from None
    return datasets


def _is_local(path: str) -> bool:
    return os.path.exists(path) or any(c in path for c in "*?[")


def _data_files(path: str) -> tuple[str, list[str]]:
    """The `load_dataset` builder ('json' / 'parquet') and the files of a local file, glob or folder."""
    if os.path.isdir(path):
        files = sorted(os.path.join(folder, n) for folder, _, names in os.walk(path) for n in names)
    else:
        files = sorted(glob.glob(path, recursive=True)) if any(c in path for c in "*?[") else [path]
    files = [f for f in files if os.path.isfile(f) and not os.path.basename(f).startswith(".")]
    builders = {_BUILDERS.get(_extension(f)) for f in files}
    if not files:
        raise DataError(f"hf:{path}: no files match")
    if None in builders or len(builders) != 1:
        raise DataError(
            f"hf:{path}: expected a save_to_disk folder or only JSON / JSON Lines / Parquet files "
            f"(found {', '.join(sorted({_extension(f) or os.path.basename(f) for f in files}))}); "
            "plain text files go straight to --input PATH"
        )
    return builders.pop(), files


def _extension(path: str) -> str:
    name = os.path.basename(path).lower()
    return next((ext for ext in sorted(_BUILDERS, key=len, reverse=True) if name.endswith(ext)), "")


def open_dataset(spec: str, split: str) -> Any:
    """The `datasets.Dataset` that `hf:spec` names, restricted to `split`; DataError (one line) when it can't be had."""
    datasets = import_datasets()
    try:
        if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, n)) for n in _SAVED):
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"hf:{spec} has no split {split!r} (splits: {', '.join(ds)}; choose with --split)")
                ds = ds[split]
            elif split != "train":
                raise DataError(f"hf:{spec} is a single Dataset without splits: leave out --split {split}")
            return ds
        if _is_local(spec):
            builder, files = _data_files(spec)
            return datasets.load_dataset(builder, data_files=files, split=split)
        name, _, config = spec.partition(":")
        return datasets.load_dataset(name, config or None, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types for a missing dataset, split or file
        raise DataError(f"cannot open Hugging Face dataset {spec} (split {split}): {first_line(e)}") from None


@functools.lru_cache(maxsize=4)
def _stream(spec: str, split: str) -> Any:
    """The `datasets.IterableDataset` of `hf:spec` (streaming mode), restricted to `split`: opened once per process
    (resolving data files takes a second or more), iterated as often as needed."""
    datasets = import_datasets()
    try:
        if _is_local(spec):
            if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, n)) for n in _SAVED):
                raise DataError(f"hf:{spec} is a save_to_disk folder, already on disk: prepare it without --stream")
            builder, files = _data_files(spec)
            return datasets.load_dataset(builder, data_files=files, split=split, streaming=True)
        name, _, config = spec.partition(":")
        return datasets.load_dataset(name, config or None, split=split, streaming=True)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot stream Hugging Face dataset {spec} (split {split}): {first_line(e)}") from None


def stream_items(spec: str, field: str, split: str) -> list[Item]:
    """One Item per data file (shard) of the streamed dataset: each becomes one work unit."""
    ds = _stream(spec, split)
    shards = max(1, int(ds.n_shards))
    size = 0
    if _is_local(spec):
        size = sum(os.path.getsize(f) for f in _data_files(spec)[1]) // shards
    name = "hf:" + (os.path.basename(os.path.normpath(spec)) if _is_local(spec) else spec)
    return [Item("hf_stream", spec, size, field, split, i, shards, name=name) for i in range(shards)]


def read_rows(item: Item) -> Iterator[Row]:
    """The rows of an hf item as records (all columns, or the ones its field map names), keyed as `read` keys
    them; a streamed item reads its data file as it comes."""
    if item.kind == "hf_stream":
        ds = _stream(item.path, item.split)
        if ds.n_shards > 1:
            ds = ds.shard(num_shards=ds.n_shards, index=item.part)
        prefix = f"{item.name}:{item.split}:" + (f"{item.part}:" if item.parts > 1 else "")
        for row, record in enumerate(ds):
            yield Row(f"{prefix}{row}", record, f"hf:{item.path}", -1, row + 1)
        return
    ds = open_dataset(item.path, item.split)
    if item.fields and not item.template:
        ds = ds.select_columns([f for f in item.fields if f in ds.column_names])
    elif not item.template and item.field:
        ds = ds.select_columns([item.field])
    part = ds.select(range(item.start, item.start + item.rows))
    row = item.start
    for batch in part.iter(batch_size=_BATCH):
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            yield Row(f"{item.name}:{item.split}:{row}", dict(zip(names, values)), f"hf:{item.path}", -1, row + 1)
            row += 1


def items(spec: str, field: str, split: str) -> list[Item]:
    """One Item for the whole split (work units split it by rows later); the text column checked up front."""
    ds = open_dataset(spec, split)
    if not field:  # records read whole (a field map, a row template, chat shapes): any columns
        pass
    elif field not in ds.column_names:
        raise DataError(
            f"Hugging Face dataset {spec} has no column {field!r} (columns: {', '.join(ds.column_names)}; "
            "choose one with --text-field)"
        )
    dtype = getattr(ds.features[field], "dtype", None) if field else "string"
    if dtype not in ("string", "large_string", "binary", "large_binary"):
        raise DataError(f"Hugging Face dataset {spec}: column {field!r} holds {ds.features[field]}, not text")
    size = ds.data.nbytes * len(ds) // max(1, ds.data.num_rows)  # Arrow bytes of the rows, for unit sizes
    # The key prefix of local datasets leaves out the folders above them: moving the data keeps the train/val split.
    name = "hf:" + (os.path.basename(os.path.normpath(spec)) if _is_local(spec) else spec)
    # datasets' own fingerprint of the content (save_to_disk state, or data files with their modification times)
    return [Item("hf", spec, size, field, split, name=name, start=0, rows=len(ds), fingerprint=ds._fingerprint)]


def read(item: Item) -> Iterator[Document]:
    """Rows start .. start+rows of the item's split as documents keyed by their row number."""
    ds = open_dataset(item.path, item.split).select_columns([item.field])
    part = ds.select(range(item.start, item.start + item.rows))
    row = item.start
    for batch in part.iter(batch_size=_BATCH):
        for value in batch[item.field]:
            yield from value_document(f"{item.name}:{item.split}:{row}", value, item)
            row += 1
