"""Our model as a scorer of token sequences: per-token log-probabilities (fp32) and whether each token is the
argmax, on the params' mesh, in a few fixed padded shapes.

Rows are right-padded to a length bucket (powers of two up to the context length) and batches to a fixed number of
rows, so a whole evaluation compiles at most one program per bucket: the model is causal, so padding after a row's
last token changes nothing before it. Scoring is always in float32 whatever the run computed in (bf16 flips close
multiple-choice calls).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trainer import sharding
from trainer.config import Config
from trainer.model.transformer import Transformer

SMALLEST_BUCKET = 32


def length_buckets(max_len: int) -> list[int]:
    """Padded lengths a row may get: 32, 64, … and `max_len` itself."""
    buckets, size = [], SMALLEST_BUCKET
    while size < max_len:
        buckets.append(size)
        size *= 2
    return buckets + [max_len]


def bucket_for(length: int, max_len: int) -> int:
    """The smallest bucket holding `length` tokens."""
    return next(b for b in length_buckets(max_len) if b >= length)


def scoring_config(config: Config) -> Config:
    """The run's config set up for scoring: fp32 compute, no remat (no backward pass), the same param layout."""
    model = dataclasses.replace(config.model, compute_dtype="float32", remat_policy="none")
    return dataclasses.replace(config, model=model)


class Scorer:
    """Jitted forward passes of one model on one mesh: `token_logprobs` (see the module doc)."""

    def __init__(self, config: Config, mesh: Mesh, params: Any, batch_size: int = 32):
        self.config = scoring_config(config)
        self.mesh = mesh
        self.params = params
        self.max_len = config.model.max_seq_len
        shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(config))
        self.batch_size = -(-max(batch_size, 1) // shards) * shards  # rows split evenly over the batch axes
        self._batch_sharding = sharding.batch_sharding(mesh, self.config)
        self._replicated = NamedSharding(mesh, PartitionSpec())
        model = Transformer(self.config.model)

        def token_logprobs(params: Any, tokens: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
            logits = model.apply({"params": params}, tokens).astype(jnp.float32)
            logprobs = jax.nn.log_softmax(logits, axis=-1)
            picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
            return picked, jnp.argmax(logits, axis=-1) == targets

        with sharding.activate(mesh, self.config):
            self._token_logprobs = jax.jit(token_logprobs, out_shardings=self._replicated)

    def _global(self, rows: np.ndarray) -> jax.Array:
        """A [batch, length] host array (the same on every process) as a global array split over the batch axes."""
        return jax.make_array_from_callback(rows.shape, self._batch_sharding, lambda index: rows[index])

    def _padded(self, rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
        out = np.zeros((self.batch_size, length), np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def token_logprobs(
        self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each row: log p(targets[t] | inputs[:t+1]) and whether targets[t] is the argmax, for every t.

        At most `batch_size` rows, each at most the context length; `targets[i]` is as long as `inputs[i]`.
        """
        if len(inputs) > self.batch_size:
            raise ValueError(f"{len(inputs)} rows exceed the batch of {self.batch_size}")
        length = bucket_for(max(len(r) for r in inputs), self.max_len)
        with sharding.activate(self.mesh, self.config):
            lp, greedy = self._token_logprobs(
                self.params, self._global(self._padded(inputs, length)), self._global(self._padded(targets, length))
            )
        lp, greedy = _local(lp), _local(greedy)
        return [(lp[i, : len(r)], greedy[i, : len(r)]) for i, r in enumerate(inputs)]


def _local(x: jax.Array) -> np.ndarray:
    """A replicated result as numpy on this process (works on many hosts, where the array is not all addressable)."""
    return np.asarray(x.addressable_data(0))
