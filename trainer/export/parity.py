"""Does an exported model compute what ours computes? Logits from our JAX model vs transformers (torch), both fp32.

The converters check three things after writing (see docs/convert.md, "What parity means"):
  1. weights: every tensor read back from the written files equals ours within the export dtype's rounding
     (bitwise for float32);
  2. logits: transformers, loading the written folder in fp32, gives the logits our JAX model gives with the weights
     read back from those files: max |Δ| ≤ 1e-4 × max |logit| (the same numbers, computed by two programs);
  3. drift: how far the export dtype's rounding moves the logits from those of the original weights, against a
     tolerance suited to the dtype (0 up to fp32 arithmetic for a float32 export).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from trainer.config import ModelConfig
from trainer.errors import ParityError
from trainer.model.transformer import Transformer

TOLERANCE = 1e-4  # |Δlogit| / max|logit| between two fp32 programs running the same weights
DRIFT_TOLERANCE = {
    "float32": 1e-4,
    "float16": 1e-2,
    "bfloat16": 5e-2,
    "f16": 1e-2,
    "bf16": 5e-2,
    "q8_0": 5e-2,
    "q4_0": 0.5,
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """max |a − b| over all logits, and the logit scale max |a| it is measured against."""

    max_abs_diff: float
    scale: float

    @property
    def relative(self) -> float:
        """max |Δ| as a fraction of the logit scale (the figure tolerances apply to)."""
        return self.max_abs_diff / max(self.scale, 1e-30)


def sample_tokens(vocab_size: int, batch: int = 3, length: int = 64, seed: int = 0) -> np.ndarray:
    """Deterministic token ids [batch, length] to run through both models."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length)).astype(np.int32)


def fp32_model(model: ModelConfig, params: dict[str, Any]) -> ModelConfig:
    """`model` set up for a reference forward pass: fp32 everywhere, no remat, plain attention, the params' layout."""
    return dataclasses.replace(
        model,
        compute_dtype="float32",
        param_dtype="float32",
        remat_policy="none",
        attention="dot_product",
        scan_layers="layers" in params,
    )


def jax_logits(model: ModelConfig, params: dict[str, Any], tokens: np.ndarray) -> np.ndarray:
    """Our `trainer.model.Transformer` in fp32 on `tokens` [batch, length] → logits [batch, length, vocab]."""
    as_fp32 = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    module = Transformer(fp32_model(model, params))
    return np.asarray(jax.jit(module.apply)({"params": as_fp32}, np.asarray(tokens, np.int32)), np.float32)


def load_hf_model(folder: str, gguf_file: str | None = None, config: Any = None) -> Any:
    """transformers' `AutoModelForCausalLM` from a written folder (or a GGUF inside it), fp32, eval mode, offline;
    `config` (a `LlamaConfig`) instead of the one the folder or GGUF describes."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # the check's own line is what the user reads
    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": True}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if config is not None:
        kwargs["config"] = config
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


def hf_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    """Logits of a transformers causal LM on `tokens` [batch, length] (fp32 numpy)."""
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.float().numpy()


def compare(reference: np.ndarray, other: np.ndarray) -> Comparison:
    """The parity figure of two logit arrays of equal shape."""
    if reference.shape != other.shape:
        raise ParityError(f"logit shapes differ: {reference.shape} vs {other.shape}")
    return Comparison(float(np.max(np.abs(reference.astype(np.float64) - other))), float(np.max(np.abs(reference))))


def rounding_bound(x: np.ndarray, kind: str) -> np.ndarray:
    """Largest |x − stored(x)| the export type `kind` may introduce, elementwise (round-to-nearest, half an ulp)."""
    a = np.abs(x.astype(np.float32))
    if kind == "float32":
        return np.zeros_like(a)
    if kind in ("bfloat16", "bf16"):
        return a * 2.0**-8 + 1e-38
    if kind in ("float16", "f16"):
        return a * 2.0**-11 + 2.0**-25  # the second term: half the smallest float16 subnormal
    if kind == "q8_0":
        # blocks of 32 along a row share d = max|x|/127 stored as float16: error ≤ d/2 + 127·|d − f16(d)| < 0.57·d
        rows = a.reshape(-1, a.shape[-1] // 32, 32)
        d = rows.max(axis=-1, keepdims=True) / 127.0
        return np.broadcast_to(0.57 * d + 1e-30, rows.shape).reshape(a.shape)
    if kind == "q4_0":
        # d = max|x|/8 in float16; the largest magnitude of one sign is clipped to 7·d: error ≤ d + 8·|d − f16(d)|
        rows = a.reshape(-1, a.shape[-1] // 32, 32)
        d = rows.max(axis=-1, keepdims=True) / 8.0
        return np.broadcast_to(1.01 * d + 1e-30, rows.shape).reshape(a.shape)
    raise ValueError(f"unknown export type {kind}")


def check_weights(
    source: Iterable[tuple[str, np.ndarray]], read_back: Callable[[str], np.ndarray], kinds: Callable[[str], str]
) -> float:
    """Compare every source tensor with the one read back from the written files; returns the worst error ratio.

    Raises ParityError naming the first tensor whose error exceeds its export type's rounding bound.
    """
    worst = 0.0
    for name, want in source:
        got = np.asarray(read_back(name), np.float32)
        want32 = np.asarray(want, np.float32)
        if got.shape != want32.shape:
            raise ParityError(f"tensor {name} was written with shape {got.shape}, expected {want32.shape}")
        kind = kinds(name)
        error = np.abs(got - want32)
        bound = rounding_bound(want32, kind)
        if kind == "float32":
            if not np.array_equal(got, want32):
                raise ParityError(f"tensor {name} differs after the float32 round trip (max |Δ| {error.max():.3g})")
            continue
        ratio = float(np.max(error / bound))
        if not ratio <= 1.0:  # also catches NaN
            raise ParityError(
                f"tensor {name} differs from ours by more than {kind} rounding allows "
                f"(max |Δ| {error.max():.3g}, {ratio:.2f}× the bound)"
            )
        worst = max(worst, ratio)
    return worst


def check_logits(exported: Comparison, drift: Comparison | None = None, kind: str = "float32") -> str:
    """Raise ParityError when a figure is beyond its tolerance; else return the one-line report.

    `exported`: the exported model vs ours on the same weights; `drift`: ours on the exported (rounded) weights vs
    ours on the original ones (None when the weights are the originals).
    """
    if not exported.relative <= TOLERANCE:
        raise ParityError(
            f"parity failed: the exported model's logits differ from ours by {exported.relative:.3g} × "
            f"the logit scale {exported.scale:.3g} (tolerance {TOLERANCE:g})"
        )
    report = (
        f"parity ok: max |Δlogit| {exported.max_abs_diff:.3g} = {exported.relative:.2g} × logit scale "
        f"{exported.scale:.3g} (tolerance {TOLERANCE:g})"
    )
    if drift is None or kind == "float32":  # float32 weights are ours bit for bit: nothing to report
        return report
    limit = DRIFT_TOLERANCE[kind]
    if not drift.relative <= limit:
        raise ParityError(
            f"parity failed: {kind} rounding moves the logits by {drift.relative:.3g} × the logit scale "
            f"{drift.scale:.3g} (tolerance {limit:g}); export a wider dtype"
        )
    return (
        f"{report}; rounding the weights to {kind} changes our own logits by {drift.relative:.2g} × scale "
        f"(tolerance {limit:g})"
    )
