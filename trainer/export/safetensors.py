"""Safetensors files written tensor by tensor and read back by name: the HF export's weight files.

safetensors' own writers take every tensor of a file at once (a second copy of the weights in memory); this writes the
same format (u64 header length, JSON header, data in offset order) streaming, and the library reads it back.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from trainer.errors import ConversionError, MappingError

SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def converted(array: np.ndarray, dtype: str) -> np.ndarray:
    """One tensor as a contiguous array of the export dtype (a copy only where the layout or dtype changes)."""
    import ml_dtypes

    target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    if dtype == "float16":
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        if peak > np.finfo(np.float16).max:
            raise ConversionError(
                f"a weight of magnitude {peak:.3g} exceeds the float16 range: export --dtype bfloat16 or float32"
            )
    return np.ascontiguousarray(array, dtype=target)


def plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, max_bytes: int) -> list[list[str]]:
    """Consecutive tensor names grouped into files of at most `max_bytes` (a bigger single tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_safetensors(
    path: str, shapes: dict[str, tuple[int, ...]], tensors: Iterable[tuple[str, np.ndarray]], dtype: str
) -> int:
    """Write one .safetensors file tensor by tensor; returns its byte count.

    safetensors' own writers take every tensor of a file at once (a second copy of the weights in memory); this
    writes the same format (u64 header length, JSON header, data in offset order) streaming, and the
    library reads it back in the parity check.
    """
    itemsize = 4 if dtype == "float32" else 2
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPE[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, array), expected in zip(tensors, shapes):
            assert name == expected, (name, expected)  # the iterator and the plan must agree: a bug if not
            converted(array, dtype).tofile(f)
    return offset


class SafetensorsFolder:
    """Read access by tensor name to the safetensors files of a written folder (what the parity check reads back)."""

    def __init__(self, folder: str):
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ConversionError(
                    f"{index} is damaged ({type(e).__name__}: {e}): re-download or re-save the model folder"
                ) from None
        else:
            with _open(os.path.join(folder, "model.safetensors")) as handle:
                weight_map = {name: "model.safetensors" for name in handle.keys()}
        self._weight_map = weight_map
        self._files = {name: _open(os.path.join(folder, name)) for name in sorted(set(weight_map.values()))}

    def names(self) -> list[str]:
        """Every tensor name in the folder."""
        return list(self._weight_map)

    def dtype(self) -> str:
        """The dtype of the first tensor, as a numpy/ml_dtypes name ('float32', 'bfloat16', 'float16')."""
        return str(self[next(iter(self._weight_map))].dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._weight_map:
            raise MappingError(f"tensor {name} is missing from the safetensors files")
        file = self._weight_map[name]
        try:
            return self._files[file].get_tensor(name)
        except Exception as e:  # safetensors raises its own SafetensorError for a damaged file
            raise ConversionError(
                f"tensor {name} of {file} can't be read ({e}): re-download or re-save the model folder"
            ) from None


def _open(path: str) -> Any:
    """`safe_open` whose failure (missing, truncated or not safetensors) is one line naming the file."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing: the folder's weights (or their index) are incomplete")
    try:
        return safe_open(path, framework="numpy")
    except SafetensorError as e:
        raise ConversionError(
            f"{path} is damaged or truncated ({e}): re-download or re-save the model folder"
        ) from None
