"""The optimizer: optax AdamW with decoupled weight decay (off for norms and, by option, embeddings),
warmup then cosine / linear / constant / warmup-stable-decay (WSD), global-norm clipping, and skipping of non-finite
updates. docs/schedules.md says when to choose which."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from trainer.config import OptimizerConfig

# Updates are skipped while gradients are non-finite; the loop stops the run after
# `train.max_consecutive_nonfinite` in a row, so optax's own give-up threshold is set out of reach.
_NEVER_GIVE_UP = 2**30


def make_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup from 0 to the peak, then the configured decay to min ratio × peak."""
    if opt.schedule == "wsd":
        return wsd_schedule(opt, total_steps)
    peak = opt.learning_rate
    final = peak * opt.min_learning_rate_ratio
    warmup = min(opt.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.min_learning_rate_ratio)
    elif opt.schedule == "linear":
        decay = optax.linear_schedule(peak, final, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def wsd_decay_start(opt: OptimizerConfig, total_steps: int) -> int:
    """The first step of a WSD schedule's decay: `decay_steps` (or `decay_fraction` × the run) before its end, never
    inside the warmup. Steps before it are warmup or stable, whose rates never depend on `total_steps`: a run
    whose checkpoints are all before it can be extended, or branched into a cooldown, without changing a rate."""
    length = opt.decay_steps if opt.decay_steps is not None else round(opt.decay_fraction * total_steps)
    warmup = min(opt.warmup_steps, total_steps)
    return max(total_steps - max(length, 1), warmup)


def wsd_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Warmup (0 → peak, linear), a stable phase at the peak, then a decay to `min_learning_rate_ratio` × peak over
    the run's last steps, shaped `linear` (1 − t), `cosine` ((1 + cos πt) / 2) or `1-sqrt` (1 − √t), t going 0 → 1
    across the decay."""
    peak = opt.learning_rate
    final = peak * opt.min_learning_rate_ratio
    warmup = min(opt.warmup_steps, total_steps)
    start = wsd_decay_start(opt, total_steps)
    length = max(total_steps - start, 1)
    shape = opt.decay_shape

    def schedule(step: Any) -> Any:
        step = jnp.asarray(step, jnp.float32)
        t = jnp.clip((step - start) / length, 0.0, 1.0)
        if shape == "linear":
            kept = 1.0 - t
        elif shape == "cosine":
            kept = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        else:
            kept = 1.0 - jnp.sqrt(t)
        rate = jnp.where(step < start, peak, final + (peak - final) * kept)
        if warmup > 0:
            rate = jnp.where(step < warmup, peak * step / warmup, rate)
        return rate

    return schedule


def _path_names(path: tuple[Any, ...]) -> set[str]:
    return {str(getattr(entry, "key", getattr(entry, "name", ""))) for entry in path}


def weight_decay_mask(opt: OptimizerConfig) -> Any:
    """A mask: True for parameters that decay (matrices), False for norm scales and, unless asked, embeddings."""

    def mask(params: Any) -> Any:
        def decays(path: tuple[Any, ...], _: Any) -> bool:
            names = _path_names(path)
            if "scale" in names:
                return False
            if "embedding" in names:
                return opt.decay_embeddings
            return True

        return jax.tree_util.tree_map_with_path(decays, params)

    return mask


def make_optimizer(opt: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The full gradient transformation and its schedule (the schedule is also logged as the learning rate)."""
    schedule = make_schedule(opt, total_steps)
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(
        optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=weight_decay_mask(opt)
        )
    )
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=_NEVER_GIVE_UP), schedule
