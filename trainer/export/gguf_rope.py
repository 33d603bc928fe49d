"""`model.rope_scaling` in a GGUF file as llama.cpp reads it, and the check that it reads back as our RoPE.

What llama.cpp's `llama` architecture can carry (the keys its own convert_hf_to_gguf writes):
    none, ntk  `llama.rope.freq_base` (ntk: the NTK base θ', which is all static NTK-aware scaling is)
    linear     `llama.rope.scaling.type = linear`, `.factor`
    yarn       `llama.rope.scaling.type = yarn`, `.factor`, `.original_context_length`, `.yarn_beta_fast/slow`;
               llama.cpp derives the cos/sin factor 0.1·ln(factor) + 1 itself, and its versions disagree on how an
               explicit one is read, so an explicit `attention_factor` other than that is refused
    llama3     the `rope_freqs.weight` tensor: per frequency, the divisor llama.cpp applies (type none)
llama.cpp has no run-time ("dynamic") scaling at all; we have none either.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from trainer.config import ModelConfig, RopeScalingConfig
from trainer.errors import ConversionError, ParityError
from trainer.model import rope

ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's tensor of per-frequency divisors (Llama 3.1's scaling)
FREQ_RTOL = 1e-5  # llama.cpp computes the frequencies in float32; ours are float64 cast to float32


def check_supported(model: ModelConfig) -> None:
    """Refuse, in one line and before anything is written, a scaling GGUF cannot carry exactly."""
    r = model.rope_scaling
    if (
        r.type == "yarn"
        and r.attention_factor is not None
        and not math.isclose(r.attention_factor, _default_yarn_attention(r.factor), rel_tol=1e-6)
    ):
        raise ConversionError(
            f"GGUF cannot carry yarn's attention_factor={r.attention_factor:g}: llama.cpp derives "
            f"0.1·ln(factor) + 1 = {_default_yarn_attention(r.factor):.6g} itself (and its versions read an override "
            "differently); unset model.rope_scaling.attention_factor or export --format hf"
        )


def _default_yarn_attention(factor: float) -> float:
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_freqs(model: ModelConfig) -> np.ndarray | None:
    """llama3's `rope_freqs.weight` [head_dim / 2] (unscaled / scaled inverse frequency), None for other types."""
    if model.rope_scaling.type != "llama3":
        return None
    plain = rope.inverse_frequencies(dataclasses.replace(model, rope_scaling=RopeScalingConfig()), np.float64)
    return (plain / rope.inverse_frequencies(model, np.float64)).astype(np.float32)


def add_rope(writer: Any, model: ModelConfig) -> None:
    """RoPE's metadata keys for `model` (call once, with the other hyperparameters)."""
    import gguf

    check_supported(model)
    r = model.rope_scaling
    writer.add_rope_dimension_count(model.resolved_head_dim)
    writer.add_rope_freq_base(rope.effective_theta(model))
    if r.type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(r.factor))
    elif r.type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(r.factor))
        writer.add_rope_scaling_orig_ctx_len(rope.original_max_seq_len(model))
        writer.add_rope_scaling_yarn_beta_fast(float(r.beta_fast))
        writer.add_rope_scaling_yarn_beta_slow(float(r.beta_slow))


def llama_cpp_frequencies(fields: dict[str, Any], freqs: np.ndarray | None, head_dim: int) -> tuple[np.ndarray, float]:
    """The inverse frequencies and cos/sin factor llama.cpp computes from a `llama` GGUF's keys (`fields`: key → value,
    without the `llama.` prefix) and its `rope_freqs` tensor: `ggml_rope_yarn_corr_dims` and `rope_yarn` of ggml,
    with llama_context's defaults (a missing type means linear; factor 1; original context = the context length)."""
    base = float(fields.get("rope.freq_base", 10000.0))
    kind = fields.get("rope.scaling.type", "linear")
    factor = float(fields.get("rope.scaling.factor", 0.0)) or 1.0
    freq_scale = 1.0 if kind == "none" else 1.0 / factor
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if freqs is not None:
        theta = theta / freqs.astype(np.float64)
    if kind != "yarn":
        return theta * freq_scale, 1.0
    original = int(fields.get("rope.scaling.original_context_length", fields["context_length"]))
    beta_fast = float(fields.get("rope.scaling.yarn_beta_fast", 32.0))
    beta_slow = float(fields.get("rope.scaling.yarn_beta_slow", 1.0))

    def corr_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(0.0, math.floor(corr_dim(beta_fast)))
    high = min(head_dim - 1.0, math.ceil(corr_dim(beta_slow)))
    y = (np.arange(head_dim // 2, dtype=np.float64) - low) / max(0.001, high - low)
    ramp_mix = 1.0 - np.clip(y, 0.0, 1.0)  # ext_factor 1 for yarn
    mixed = theta * freq_scale * (1 - ramp_mix) + theta * ramp_mix
    attn_factor = float(fields.get("rope.scaling.attn_factor", 1.0))
    return mixed, attn_factor * (1.0 + 0.1 * math.log(1.0 / freq_scale))


def read_fields(reader: Any, arch: str = "llama") -> dict[str, Any]:
    """The architecture's keys of a `gguf.GGUFReader` as plain values, without the `llama.` prefix."""
    prefix = arch + "."
    return {name[len(prefix) :]: field.contents() for name, field in reader.fields.items() if name.startswith(prefix)}


def check_rope(path: str, model: ModelConfig) -> None:
    """Read the GGUF's RoPE as llama.cpp does and compare with ours: context length, every inverse frequency
    (relative 1e-5) and the cos/sin factor. Raises ParityError naming what differs."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = read_fields(reader)
    freqs = next((np.asarray(t.data, np.float32) for t in reader.tensors if t.name == ROPE_FREQS), None)
    if fields.get("context_length") != model.max_seq_len:
        raise ParityError(
            f"the GGUF's llama.context_length is {fields.get('context_length')}, "
            f"not model.max_seq_len={model.max_seq_len}"
        )
    theirs, scale = llama_cpp_frequencies(fields, freqs, model.resolved_head_dim)
    ours = rope.inverse_frequencies(model, np.float64)
    worst = float(np.max(np.abs(theirs - ours) / ours))
    if not worst <= FREQ_RTOL:
        raise ParityError(
            f"llama.cpp would rotate with other RoPE frequencies than ours (worst relative "
            f"difference {worst:.3g}; rope_scaling.type={model.rope_scaling.type})"
        )
    if not math.isclose(scale, rope.attention_factor(model), rel_tol=1e-6):
        raise ParityError(f"llama.cpp would scale cos/sin by {scale:.6g}, ours by {rope.attention_factor(model):.6g}")
