"""GGUF K-quants (Q4_K_M, Q5_K_M, Q6_K) made by llama.cpp's own quantizer, and their read-back check.

The `gguf` package has no K-quant quantizer, and a second implementation of llama.cpp's mixes (which tensors get
Q6_K in a Q4_K_M file, the fallbacks for rows that are not a multiple of 256) would drift from llama.cpp's. So the
export writes an F16 GGUF and has llama.cpp quantise it (`llama_model_quantize` through llama-cpp-python, the `llama`
extra), exactly as its `llama-quantize` tool does.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np

from trainer.errors import ConversionError, ParityError
from trainer.export.parity import Comparison

# --gguf-type → llama.cpp's file type (LLAMA_FTYPE_MOSTLY_*)
K_QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
INSTALL_HINT = 'pip install -e ".[llama]"'

# ‖stored − ours‖ / ‖ours‖ a tensor of each GGML type may show in a file llama.cpp quantised. About twice the figures
# measured on Gaussian weights (docs/convert.md); a layout error (rows permuted or transposed) gives about 1.4.
RELATIVE_ERROR = {
    "F32": 0.0,
    "F16": 1e-3,
    "BF16": 8e-3,
    "Q8_0": 1e-2,
    "Q6_K": 4e-2,
    "Q5_1": 0.1,
    "Q5_0": 0.1,
    "Q5_K": 8e-2,
    "Q4_1": 0.15,
    "Q4_0": 0.15,
    "IQ4_NL": 0.15,
    "Q4_K": 0.15,
}
# How far the file's rounding may move our own logits (max |Δ| / max |logit|), as parity.DRIFT_TOLERANCE for the
# types our writer makes: Q4_K_M as Q4_0, Q6_K as Q8_0.
DRIFT_TOLERANCE = {"q4_k_m": 0.5, "q5_k_m": 0.2, "q6_k": 5e-2}


def check_installed(gguf_type: str) -> None:
    """A K-quant needs llama.cpp's quantizer: one line naming the extra when llama-cpp-python is not installed."""
    if gguf_type in K_QUANTS and importlib.util.find_spec("llama_cpp") is None:
        raise ConversionError(
            f"--gguf-type {gguf_type} is made by llama.cpp's own quantizer, which needs "
            f"llama-cpp-python: {INSTALL_HINT} (or choose f16, bf16, q8_0 or q4_0)"
        )


def quantize(source: str, out: str, gguf_type: str) -> None:
    """Quantise the F16 GGUF `source` into `out` as llama.cpp's `gguf_type` mix (all cores)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{K_QUANTS[gguf_type]}")
    params.nthread = os.cpu_count() or 1
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs every tensor otherwise
    status = llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params))
    if status != 0 or not os.path.exists(out):
        raise ConversionError(
            f"llama.cpp's quantizer failed to write {gguf_type} (status {status}); "
            "export f16 and run llama.cpp's llama-quantize to see why"
        )


def check_weights(
    source: Iterable[tuple[str, np.ndarray]], read_back: Callable[[str], np.ndarray], types: Callable[[str], str]
) -> float:
    """Every tensor of a file llama.cpp quantised within its GGML type's relative error of ours (ParityError naming
    the first one that is not); returns the worst error as a fraction of its type's limit."""
    worst = 0.0
    for name, want in source:
        want32 = np.asarray(want, np.float32)
        got = np.asarray(read_back(name), np.float32)
        if got.shape != want32.shape:
            raise ParityError(f"tensor {name} was written with shape {got.shape}, expected {want32.shape}")
        kind = types(name)
        error = float(np.linalg.norm(got - want32) / max(float(np.linalg.norm(want32)), 1e-30))
        limit = RELATIVE_ERROR.get(kind)
        if limit is None:
            raise ParityError(f"tensor {name} is stored as {kind}, a type this check does not know")
        if not error <= limit:  # also catches NaN
            raise ParityError(f"tensor {name} ({kind}) differs from ours by {error:.3g} of its norm (limit {limit:g})")
        worst = max(worst, error / limit if limit else 0.0)
    return worst


def check_drift(drift: Comparison, gguf_type: str) -> str:
    """How far the K-quant weights move our own logits, against the type's tolerance; the report's clause."""
    limit = DRIFT_TOLERANCE[gguf_type]
    if not drift.relative <= limit:
        raise ParityError(
            f"parity failed: {gguf_type} rounding moves the logits by {drift.relative:.3g} × the logit "
            f"scale {drift.scale:.3g} (tolerance {limit:g}); export a wider type"
        )
    return (
        f"rounding the weights to {gguf_type} changes our own logits by {drift.relative:.2g} × scale "
        f"(tolerance {limit:g})"
    )
