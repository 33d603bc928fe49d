"""Rotary position embedding (RoPE) and its context-extension scalings: none, linear, ntk, yarn, llama3.

Every scaling is a change of the inverse frequencies (and, for yarn, a scale on cos/sin), so one table computed from
the config serves training, evaluation and sampling alike. linear, yarn and llama3 follow transformers' definitions
(`transformers.modeling_rope_utils`: `_compute_linear_scaling_rope_parameters`, `_compute_yarn_parameters` with
`truncate=True`, `_compute_llama3_parameters`), so an exported `config.json` means to transformers what it means here;
ntk is static NTK-aware scaling, a new base θ' = θ·s^(d/(d−2)), which every reader understands as a plain `rope_theta`.
See docs/context.md for when to use which.

The rotation itself turns the two halves of each head (Hugging Face's layout), so q/k weights export unpermuted.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from trainer.config import ModelConfig, RopeScalingConfig


def original_max_seq_len(model: ModelConfig) -> int:
    """The pretraining context a yarn / llama3 scaling is defined against: given, or max_seq_len / factor."""
    r = model.rope_scaling
    if r.original_max_seq_len is not None:
        return r.original_max_seq_len
    return max(1, round(model.max_seq_len / r.factor))


def ntk_theta(theta: float, factor: float, head_dim: int) -> float:
    """Static NTK-aware base: θ·s^(d/(d−2)), which keeps the fastest frequency and slows the slowest one by s."""
    return theta * factor ** (head_dim / (head_dim - 2))


def effective_theta(model: ModelConfig) -> float:
    """The RoPE base the model computes with: `rope_theta`, or the NTK base when `rope_scaling.type` is ntk."""
    r = model.rope_scaling
    if r.type == "ntk":
        return ntk_theta(model.rope_theta, r.factor, model.resolved_head_dim)
    return float(model.rope_theta)


def _base_inverse_frequencies(theta: float, head_dim: int) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def _yarn(inv_freq: np.ndarray, model: ModelConfig) -> np.ndarray:
    """transformers' yarn ramp: keep frequencies turning > beta_fast times in the original context, divide those
    turning < beta_slow times by factor, blend linearly between (dimension bounds floored / ceiled: truncate=True)."""
    r, dim, base = model.rope_scaling, model.resolved_head_dim, model.rope_theta
    original = original_max_seq_len(model)

    def dimension(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dimension(r.beta_fast)), 0)
    high: float = min(math.ceil(dimension(r.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolated = 1.0 - ramp  # 1: keep the frequency, 0: divide it by factor
    return inv_freq / r.factor * (1.0 - extrapolated) + inv_freq * extrapolated


def _llama3(inv_freq: np.ndarray, model: ModelConfig) -> np.ndarray:
    """Llama 3.1's scaling: long wavelengths divided by factor, short ones kept, a smooth blend between."""
    r = model.rope_scaling
    original = original_max_seq_len(model)
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > original / r.low_freq_factor, inv_freq / r.factor, inv_freq)
    smooth = (original / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
    blended = (1 - smooth) * scaled / r.factor + smooth * scaled
    medium = (wavelen >= original / r.high_freq_factor) & (wavelen <= original / r.low_freq_factor)
    return np.where(medium, blended, scaled)


def inverse_frequencies(model: ModelConfig, dtype: type = np.float32) -> np.ndarray:
    """The [head_dim / 2] inverse frequencies of `model`'s RoPE, scaling included (computed in float64, then cast)."""
    # cached on the fields RoPE depends on (a whole ModelConfig need not be hashable)
    key = (float(model.rope_theta), model.resolved_head_dim, model.max_seq_len, model.rope_scaling)
    return _inverse_frequencies64(*key).astype(dtype)


@functools.lru_cache(maxsize=64)
def _inverse_frequencies64(theta: float, head_dim: int, max_seq_len: int, scaling: RopeScalingConfig) -> np.ndarray:
    model = ModelConfig(rope_theta=theta, head_dim=head_dim, max_seq_len=max_seq_len, rope_scaling=scaling)
    inv_freq = _base_inverse_frequencies(effective_theta(model), head_dim)
    if scaling.type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.type == "yarn":
        inv_freq = _yarn(inv_freq, model)
    elif scaling.type == "llama3":
        inv_freq = _llama3(inv_freq, model)
    inv_freq.setflags(write=False)
    return inv_freq


def attention_factor(model: ModelConfig) -> float:
    """The factor cos and sin are multiplied by (yarn's temperature; 1 otherwise): q·k scales by its square."""
    r = model.rope_scaling
    if r.type != "yarn":
        return 1.0
    if r.attention_factor is not None:
        return float(r.attention_factor)
    return 0.1 * math.log(r.factor) + 1.0 if r.factor > 1 else 1.0


def apply_rope(x: jax.Array, positions: jax.Array, model: ModelConfig) -> jax.Array:
    """Rotary position embedding on [batch, length, heads, head_dim] with `model`'s frequencies, in fp32."""
    inv_freq = jnp.asarray(inverse_frequencies(model))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    scale = attention_factor(model)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)
