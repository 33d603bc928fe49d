"""Analytic model FLOPs, parameter counts and MFU against the peak of the chip in the hardware table."""

from __future__ import annotations

from trainer import hardware
from trainer.config import ModelConfig


def param_count(m: ModelConfig) -> int:
    """Exact number of parameters of the model `trainer.model.Transformer` builds from `m`."""
    head_dim = m.resolved_head_dim
    attention = m.embed_dim * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = 3 * m.embed_dim * m.mlp_dim
    per_layer = attention + mlp + 2 * m.embed_dim
    head = 0 if m.tie_embeddings else m.vocab_size * m.embed_dim
    return m.num_layers * per_layer + m.vocab_size * m.embed_dim + head + m.embed_dim


def flops_per_token(m: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward), recomputation not counted.

    6 · N_matmul + 6 · n_layers · seq_len · n_heads · head_dim, where N_matmul counts every weight used in a matmul
    (attention and MLP projections and the output projection; the input embedding lookup is not a matmul), and the
    attention term is 3 × (QKᵀ + AV = 4 · seq_len · n_heads · head_dim per token and layer) halved for causality.
    """
    head_dim = m.resolved_head_dim
    attention = m.embed_dim * head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
    mlp = 3 * m.embed_dim * m.mlp_dim
    matmul_params = m.num_layers * (attention + mlp) + m.vocab_size * m.embed_dim
    return 6.0 * matmul_params + 6.0 * m.num_layers * seq_len * m.num_heads * head_dim


def peak_tflops(device_kind: str, override: float | None = None) -> float | None:
    """Dense bf16 peak TFLOP/s of one device: the override when given, else the hardware table's chip that jax's
    `device_kind` names (None for a CPU or an unknown chip: no MFU then)."""
    if override is not None:
        return override
    chip = hardware.chip_for_device_kind(device_kind)
    return None if chip is None else chip.peak_bf16_tflops


def mfu(tokens_per_second_per_device: float, flops_per_tok: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s per device over the device's peak (None without a peak)."""
    if not peak:
        return None
    return tokens_per_second_per_device * flops_per_tok / (peak * 1e12)
