"""Checks of values that are each well-typed but wrong together (device-dependent checks live in sharding)."""

from __future__ import annotations

from trainer.config.sections import LORA_TARGETS, Config, ModelConfig
from trainer.errors import ConfigError


def validate(config: Config) -> None:
    """Check values that are each well-typed but inconsistent together; device-dependent checks live in sharding."""
    m, t, o = config.model, config.train, config.optimizer
    positive = {
        "model.vocab_size": m.vocab_size,
        "model.embed_dim": m.embed_dim,
        "model.num_layers": m.num_layers,
        "model.num_heads": m.num_heads,
        "model.num_kv_heads": m.num_kv_heads,
        "model.mlp_dim": m.mlp_dim,
        "model.max_seq_len": m.max_seq_len,
        "train.steps": t.steps,
        "train.global_batch_size": t.global_batch_size,
        "train.seq_len": t.seq_len,
        "train.microbatches": t.microbatches,
        "log.every_steps": config.log.every_steps,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.keep": config.checkpoint.keep,
        "eval.every_steps": config.eval.every_steps,
        "eval.tasks_every_steps": config.eval.tasks_every_steps,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if t.epochs is not None and (
        t.epochs <= 0 or not config.data.path or config.data.mixture or config.data.stages or config.data.synthetic
    ):
        raise ConfigError(
            f"train.epochs={t.epochs} counts positive passes over one prepared folder: set data.path "
            "(no mixture, stages or synthetic data), or give train.steps instead"
        )
    if config.eval.tasks and not config.eval.tasks_data_dir:
        raise ConfigError("eval.tasks needs eval.tasks_data_dir: a folder with one file per task (docs/eval.md)")
    if m.head_dim is None and m.embed_dim % m.num_heads:
        raise ConfigError(
            f"model.num_heads={m.num_heads} does not divide model.embed_dim={m.embed_dim}: "
            "change one of them or set model.head_dim explicitly"
        )
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(
            f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads} (grouped-query attention)"
        )
    if m.resolved_head_dim % 2:
        raise ConfigError(f"the head dimension must be even for RoPE, got {m.resolved_head_dim}")
    if m.lora.rank < 0 or not 0.0 <= m.lora.dropout < 1.0:
        raise ConfigError(
            f"model.lora.rank must be ≥ 0 and model.lora.dropout in [0, 1), got {m.lora.rank}, {m.lora.dropout}"
        )
    unknown = sorted(set(m.lora.targets) - set(LORA_TARGETS))
    if unknown or (m.lora.rank and not m.lora.targets):
        raise ConfigError(f"model.lora.targets {unknown or '[]'}: name some of {', '.join(LORA_TARGETS)}")
    if m.lora.rank and not config.checkpoint.restore_from:
        raise ConfigError(
            "model.lora adapts a trained model: set checkpoint.restore_from to the base run (or a "
            "folder made by convert_from_hf)"
        )
    if t.seq_len > m.max_seq_len:
        raise ConfigError(
            f"train.seq_len={t.seq_len} exceeds model.max_seq_len={m.max_seq_len}: lower one or raise the other"
        )
    if m.attention == "splash" and t.seq_len % 128:
        raise ConfigError(
            f"model.attention=splash needs train.seq_len a multiple of 128 (the kernel's block), got "
            f"{t.seq_len}: use {t.seq_len + 128 - t.seq_len % 128} or model.attention=dot_product"
        )
    validate_rope_scaling(m)
    if t.global_batch_size % t.microbatches:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by train.microbatches={t.microbatches}"
        )
    if o.warmup_steps < 0 or o.learning_rate <= 0:
        raise ConfigError("optimizer.learning_rate must be positive and optimizer.warmup_steps non-negative")
    if not 0.0 < o.decay_fraction <= 1.0 or (o.decay_steps is not None and o.decay_steps < 1):
        raise ConfigError(
            f"optimizer.decay_fraction must be in (0, 1] and optimizer.decay_steps at least 1, got "
            f"{o.decay_fraction}, {o.decay_steps}"
        )
    for name in ("data", "fsdp", "tensor"):
        size = getattr(config.mesh, name)
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{name} must be a positive size or -1 (fill the remaining devices), got {size}")
    if [config.mesh.data, config.mesh.fsdp, config.mesh.tensor].count(-1) > 1:
        raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    valid_axes = {"data", "fsdp", "tensor"}
    for logical, axes in config.mesh.rules.items():
        for axis in axes or []:
            if axis not in valid_axes:
                raise ConfigError(f"mesh.rules.{logical} names mesh axis {axis!r}; mesh axes are data, fsdp, tensor")
    sources = sum(bool(x) for x in (config.data.path, config.data.mixture, config.data.stages))
    if sources > 1:
        raise ConfigError("set only one of data.path, data.mixture, data.stages")
    if config.data.stages and config.data.stages[0].start_step != 0:
        raise ConfigError("data.stages[0].start_step must be 0: the first stage starts the run")
    starts = [s.start_step for s in config.data.stages]
    if starts != sorted(set(starts)):
        raise ConfigError(f"data.stages start steps must increase strictly, got {starts}")
    profile = config.log.profile_steps
    if profile is not None and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
        raise ConfigError(f"log.profile_steps must be [start, end] with 1 <= start <= end, got {profile}")
    for index, stage in enumerate(config.data.stages):
        if not stage.mixture:
            raise ConfigError(f"data.stages[{index}].mixture is empty: list at least one component")
    for mixture in [config.data.mixture] + [s.mixture for s in config.data.stages]:
        if any(c.weight <= 0 for c in mixture):
            raise ConfigError("every data mixture weight must be positive")


def validate_rope_scaling(m: ModelConfig) -> None:
    """One line for a `model.rope_scaling` that transformers, llama.cpp and our RoPE could not read the same way."""
    r, key = m.rope_scaling, "model.rope_scaling"
    if r.type == "none":
        if r.factor != 1.0:
            raise ConfigError(
                f"{key}.factor={r.factor:g} has no effect while {key}.type is none: "
                "set the type (linear, ntk, yarn or llama3) or leave factor at 1"
            )
        return
    if not r.factor >= 1.0:
        raise ConfigError(f"{key}.factor must be at least 1 (new context / original context), got {r.factor:g}")
    if r.type == "ntk" and m.resolved_head_dim <= 2:
        raise ConfigError(f"{key}.type=ntk needs a head dimension above 2, got {m.resolved_head_dim}")
    if r.type in ("yarn", "llama3"):
        original = r.original_max_seq_len
        if original is not None and not 0 < original <= m.max_seq_len:
            raise ConfigError(
                f"{key}.original_max_seq_len={original} must be positive and at most "
                f"model.max_seq_len={m.max_seq_len} (the pretraining context, not the new one)"
            )
        if original is None and round(m.max_seq_len / r.factor) < 1:
            raise ConfigError(
                f"{key}.factor={r.factor:g} leaves no original context below "
                f"model.max_seq_len={m.max_seq_len}: set {key}.original_max_seq_len"
            )
    if r.type == "yarn":
        if not 0 < r.beta_slow < r.beta_fast:
            raise ConfigError(
                f"{key}.beta_fast ({r.beta_fast:g}) must exceed beta_slow ({r.beta_slow:g}), both "
                "positive (rotations bounding the interpolation ramp; defaults 32 and 1)"
            )
        if r.attention_factor is not None and not r.attention_factor > 0:
            raise ConfigError(
                f"{key}.attention_factor must be positive (or null: 0.1·ln(factor) + 1), got {r.attention_factor:g}"
            )
    if r.type == "llama3" and not 0 < r.low_freq_factor < r.high_freq_factor:
        raise ConfigError(
            f"{key}.high_freq_factor ({r.high_freq_factor:g}) must exceed low_freq_factor "
            f"({r.low_freq_factor:g}), both positive (Llama 3.1 uses 4 and 1)"
        )
