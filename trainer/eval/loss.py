"""Validation loss and perplexity of a model on the held-out split of its data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax

from trainer.config import Config
from trainer.data import synthetic
from trainer.data.mixture import Stage
from trainer.data.pipeline import make_eval_iterator
from trainer.step import StepFunctions


def evaluate(
    config: Config, step_fns: StepFunctions, params: Any, stages: Sequence[Stage] | None = None
) -> dict[str, float]:
    """Validation loss and perplexity over `eval.batches` deterministic batches of the held-out split.

    `stages`: the data's, when the caller (the training job) has read them already."""
    shape = dict(
        seq_len=config.train.seq_len,
        global_batch_size=config.train.global_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_batches=config.eval.batches,
    )
    if config.data.synthetic:
        batches = synthetic.make_eval_iterator(vocab_size=config.model.vocab_size, seed=config.train.seed, **shape)
    else:
        batches = make_eval_iterator(config.data, stages=stages, **shape)
    nll, tokens = 0.0, 0.0
    for local in batches:
        out = jax.device_get(step_fns.eval_step(params, step_fns.global_batch(local)))
        nll += float(out["nll_sum"])
        tokens += float(out["tokens"])
    loss = nll / max(tokens, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
