"""Greedy sampling by full re-forward over a fixed-length buffer: one compilation, no cache (enough to show a run
learned something; KV-cache sampling is a later feature)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from trainer import sharding
from trainer.config import Config
from trainer.model.transformer import Transformer


def greedy(config: Config, mesh: Any, params: Any, prompt: list[int], num_tokens: int) -> list[int]:
    """The prompt followed by `num_tokens` greedy tokens (stops early at the buffer end, `train.seq_len`)."""
    length = config.train.seq_len
    if not prompt or len(prompt) >= length:
        raise ValueError(f"the prompt must hold 1 to {length - 1} tokens")
    model = Transformer(config.model)
    replicated = NamedSharding(mesh, PartitionSpec())

    @jax.jit
    def next_token(params: Any, tokens: jax.Array, index: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, tokens)
        return jnp.argmax(logits[0, index - 1]).astype(jnp.int32)

    buffer = np.zeros((1, length), np.int32)
    buffer[0, : len(prompt)] = prompt
    out = list(prompt)
    with sharding.activate(mesh, config):
        for index in range(len(prompt), min(length, len(prompt) + num_tokens)):
            tokens = jax.make_array_from_process_local_data(replicated, buffer)
            token = int(jax.device_get(next_token(params, tokens, jnp.int32(index))))
            buffer[0, index] = token
            out.append(token)
    return out
