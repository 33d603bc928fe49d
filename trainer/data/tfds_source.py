"""`--input tfds:NAME[/CONFIG][:VERSION]`: a TensorFlow Datasets dataset already prepared in a data dir, local or gs://.

Nothing is downloaded and the dataset's builder code is not needed: the dataset is opened from its folder
(`tfds.builder_from_directory`). ArrayRecord and Parquet datasets are read through `as_data_source` (random access,
no TensorFlow); TFRecord datasets through `as_dataset`, which needs TensorFlow (`pip install -e ".[tfrecord]"`).
Both read a split's rows in the same order (file by file), so a document's key, and with it its train/val
assignment, does not depend on the format the dataset was prepared in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterator
from typing import Any

from trainer import storage
from trainer.data import DataError
from trainer.data.documents import Document, Item, value_document
from trainer.errors import first_line

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_TFRECORD_HINT = (
    'pip install -e ".[tfrecord]" (TensorFlow), or prepare the dataset with file_format=array_record '
    "to read it without TensorFlow"
)


def import_tfds() -> Any:
    """`tensorflow_datasets`, or a DataError naming the extra to install."""
    # gs:// metadata (dataset_info.json, shard lists) goes through gcsfs like every other gs:// access of this project
    # (the same credentials; the GCS emulator works). With TensorFlow installed, etils would switch to TensorFlow's
    # GCS client, whose endpoint is fixed. TFRecord payloads are still read by TensorFlow itself.
    os.environ.setdefault("EPATH_USE_TF", "false")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError('--input tfds:... needs TensorFlow Datasets: pip install -e ".[tfds]"') from None
    return tfds


def default_data_dir() -> str:
    """Where TFDS keeps prepared datasets unless told otherwise: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def dataset_folder(spec: str, data_dir: str) -> tuple[str, str]:
    """The prepared folder DATA_DIR/NAME[/CONFIG]/VERSION of `NAME[/CONFIG][:VERSION]` and the name without version.

    Without a version, the highest one prepared there (a folder holding dataset_info.json) is taken.
    """
    name, _, version = spec.partition(":")
    if version and not _VERSION.match(version):
        raise DataError(
            f"tfds:{spec}: the part after ':' is a version such as 1.0.0, not {version!r} "
            "(choose the split with --split)"
        )
    if not re.match(r"^[\w-]+(/[\w.-]+)?$", name):
        raise DataError(f"tfds:{spec}: expected tfds:NAME[/CONFIG][:VERSION], e.g. tfds:c4/en:3.1.0")
    folder = storage.join(data_dir, *name.split("/"))
    if not storage.isdir(folder):
        raise DataError(
            f"TFDS dataset {name} is not prepared in {data_dir} (no folder {folder}); give the data dir "
            "that holds it with --tfds-data-dir, or prepare it first (tfds build)"
        )
    if version:
        chosen = storage.join(folder, version)
        if not storage.exists(storage.join(chosen, "dataset_info.json")):
            found = ", ".join(_prepared_versions(folder)) or "none"
            raise DataError(f"TFDS dataset {name} has no prepared version {version} in {data_dir} (found: {found})")
        return chosen, name
    versions = _prepared_versions(folder)
    if not versions:
        subfolders = sorted(n for n in storage.listdir(folder) if _prepared_versions(storage.join(folder, n)))
        if subfolders and "/" not in name:
            raise DataError(
                f"TFDS dataset {name} has configs ({', '.join(subfolders)}): name one, e.g. tfds:{name}/{subfolders[0]}"
            )
        raise DataError(
            f"TFDS dataset {name} in {data_dir} has no complete prepared version (no "
            "VERSION/dataset_info.json): prepare it first (tfds build)"
        )
    return storage.join(folder, versions[-1]), name


def _prepared_versions(folder: str) -> list[str]:
    """Version subfolders of `folder` with a dataset_info.json, lowest first."""
    if not storage.isdir(folder):
        return []
    versions = [v for v in storage.listdir(folder) if _VERSION.match(v)]
    versions = [v for v in versions if storage.exists(storage.join(folder, v, "dataset_info.json"))]
    return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def open_builder(folder: str) -> Any:
    """The read-only builder of a prepared dataset folder (no builder code, no download)."""
    tfds = import_tfds()
    try:
        return tfds.builder_from_directory(folder)
    except Exception as e:  # tfds raises many types for a damaged or foreign folder
        raise DataError(f"cannot open the TFDS dataset in {folder}: {first_line(e)}") from None


def uses_data_source(info: Any) -> bool:
    """Whether a random-access format (ArrayRecord, Parquet) is available: then no TensorFlow is needed."""
    tfds = import_tfds()
    random_access = set(tfds.core.FileFormat.with_random_access())
    return bool(set(info.available_file_formats()) & random_access)


def items(spec: str, field: str, split: str, data_dir: str | None) -> list[Item]:
    """One Item per split range named by `split` (`train`, `train[:10%]`, `train+validation`); checked up front."""
    tfds = import_tfds()
    data_dir = data_dir or default_data_dir()
    folder, name = dataset_folder(spec, data_dir)
    info = open_builder(folder).info
    if field not in info.features:
        raise DataError(
            f"TFDS dataset {name} has no feature {field!r} (features: {', '.join(sorted(info.features))}; "
            "choose one with --text-field)"
        )
    if not uses_data_source(info) and importlib.util.find_spec("tensorflow") is None:
        raise DataError(
            f"TFDS dataset {name} is stored as {info.file_format.value}, which only TensorFlow reads: " + _TFRECORD_HINT
        )
    try:
        ranges = tfds.core.ReadInstruction.from_spec(split).to_absolute(info.splits)
    except (ValueError, KeyError, AssertionError) as e:
        raise DataError(
            f"TFDS dataset {name}: bad --split {split!r} ({first_line(e)}; splits: {', '.join(info.splits)})"
        ) from None
    fingerprint = hashlib.sha256(info.as_json.encode()).hexdigest()[:16]
    result = []
    for r in ranges:
        split_info = info.splits[r.splitname]
        rows = range(split_info.num_examples)[slice(r.from_, r.to)]
        size = split_info.num_bytes * len(rows) // max(1, split_info.num_examples)
        result.append(
            Item(
                "tfds",
                folder,
                size,
                field,
                r.splitname,
                data_dir=data_dir,
                name=f"tfds:{name}",
                start=rows.start,
                rows=len(rows),
                fingerprint=fingerprint,
            )
        )
    return result


def read(item: Item) -> Iterator[Document]:
    """Rows start .. start+rows of the item's split, in file order, as documents keyed by their row number."""
    builder = open_builder(item.path)
    stop = item.start + item.rows
    if uses_data_source(builder.info):
        source = builder.as_data_source(split=item.split)
        for row in range(item.start, stop):
            yield from value_document(f"{item.name}:{item.split}:{row}", source[row][item.field], item)
        return
    tfds = import_tfds()
    _import_tensorflow()
    dataset = builder.as_dataset(
        split=f"{item.split}[{item.start}:{stop}]",
        shuffle_files=False,
        # one file at a time: the order of the data source, so keys do not depend on the format
        read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False),
    )
    field = item.field
    for row, value in enumerate(dataset.map(lambda example: example[field]).as_numpy_iterator(), start=item.start):
        yield from value_document(f"{item.name}:{item.split}:{row}", value, item)


def _import_tensorflow() -> Any:
    # TensorFlow only reads records here: its start-up notices (oneDNN, log levels) would bury the summary.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError:
        raise DataError(
            "this TFDS dataset is stored as TFRecord, which only TensorFlow reads: " + _TFRECORD_HINT
        ) from None
    return tf
