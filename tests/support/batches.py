"""Synthetic batches with the pipeline's contract, for tests that need no data files."""

import numpy as np


def random_batch(seed: int, batch: int, seq_len: int, vocab: int, segments: int = 1) -> dict[str, np.ndarray]:
    """Random tokens; with `segments` > 1 each row holds that many equal-length documents (packed)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32)
    piece = -(-seq_len // segments)
    segment_ids = (np.arange(seq_len) // piece + 1).astype(np.int32)
    positions = (np.arange(seq_len) % piece).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((batch, seq_len), np.float32),
        "segment_ids": np.tile(segment_ids, (batch, 1)),
        "positions": np.tile(positions, (batch, 1)),
    }
