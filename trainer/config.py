"""Typed, frozen configuration: YAML files (with `base:` includes) plus `section.key=value` overrides.

A config is plain data. Loading it has no side effects: no devices are touched, nothing is initialised.
Every mistake a person can make in a config raises `ConfigError` with one line saying what to change;
the command-line entry points turn that into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from trainer.errors import ConfigError

# ---------------------------------------------------------------------------------------------- sections

LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")


@dataclass(frozen=True)
class RopeScalingConfig:
    """How RoPE stretches to a context longer than pretraining's (docs/context.md): none | linear | ntk | yarn | llama3.

    linear, yarn and llama3 are transformers' rope types of the same names; ntk is static NTK-aware scaling, a new
    base θ' = θ·factor^(d/(d−2)) (d: the head dimension).
    """

    type: Literal["none", "linear", "ntk", "yarn", "llama3"] = "none"
    factor: float = 1.0  # new context / original context
    original_max_seq_len: Optional[int] = None  # pretraining's context (yarn, llama3); None: max_seq_len / factor
    beta_fast: float = 32.0  # yarn: rotations above which a frequency is kept (extrapolated)
    beta_slow: float = 1.0  # yarn: rotations below which a frequency is divided by factor (interpolated)
    attention_factor: Optional[float] = None  # yarn: scale of cos/sin; None: 0.1·ln(factor) + 1
    low_freq_factor: float = 1.0  # llama3: wavelengths above original/low_freq_factor are divided by factor
    high_freq_factor: float = 4.0  # llama3: wavelengths below original/high_freq_factor are kept


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (trainer.model.lora): W + (alpha/rank)·A·B on the named projections, base weights frozen.

    rank 0 is off. Targets by name: query, key, value, out (attention), gate, up, down (MLP).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["query", "key", "value", "out", "gate", "up", "down"])


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the LLaMA decoder and how it is computed."""

    vocab_size: int = 4096
    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: Optional[int] = None  # None: embed_dim // num_heads
    mlp_dim: int = 768
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 256
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    scan_layers: bool = True
    remat_policy: Literal["none", "full", "save_matmuls"] = "full"
    attention: Literal["dot_product", "cudnn", "splash"] = "dot_product"
    init_std: float = 0.02
    lora: LoraConfig = field(default_factory=LoraConfig)

    @property
    def resolved_head_dim(self) -> int:
        """The per-head width: `head_dim` when given, else `embed_dim // num_heads`."""
        return self.head_dim if self.head_dim is not None else self.embed_dim // self.num_heads


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes and the logical-axis → mesh-axis rules that shard parameters and activations."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    dcn_data: int = 1  # across slices (multi-slice TPU) or hosts joined by the data-centre network
    dcn_fsdp: int = 1
    rules: dict[str, Optional[list[str]]] = field(
        default_factory=lambda: {
            "batch": ["data", "fsdp"],
            "length": None,
            "embed": ["fsdp"],
            "heads": ["tensor"],
            "kv_heads": ["tensor"],
            "head_dim": None,
            "mlp": ["tensor"],
            "vocab": ["tensor"],
            "layers": None,
            "norm": None,
        }
    )

    def logical_rules(self) -> tuple[tuple[str, Any], ...]:
        """The rules in Flax's `logical_axis_rules` form: ((logical, mesh_axis | tuple | None), ...)."""
        out = []
        for logical, axes in self.rules.items():
            if not axes:
                out.append((logical, None))
            elif len(axes) == 1:
                out.append((logical, axes[0]))
            else:
                out.append((logical, tuple(axes)))
        return tuple(out)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation run: how long, how big a batch, which seed."""

    steps: int = 200
    global_batch_size: int = 16
    seq_len: int = 256
    seed: int = 0
    microbatches: int = 1  # gradient accumulation inside the jitted step
    z_loss: float = 0.0
    peak_tflops: Optional[float] = None  # per device; None: look the device kind up (none on CPU)
    max_consecutive_nonfinite: int = 5  # stop after this many skipped updates in a row


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and a decay schedule, global-norm clipping."""

    learning_rate: float = 3e-3
    min_learning_rate_ratio: float = 0.1  # final lr as a fraction of the peak (cosine / linear)
    warmup_steps: int = 20
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    clip_norm: Optional[float] = 1.0


@dataclass(frozen=True)
class MixtureComponent:
    """One dataset of a mixture and its sampling weight."""

    path: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class Stage:
    """A data mixture that takes over from `start_step` on (curricula such as SmallCoder's four stages)."""

    start_step: int = 0
    mixture: list[MixtureComponent] = field(default_factory=list)


@dataclass(frozen=True)
class DataConfig:
    """Where the tokenized shards are and how they become batches."""

    path: Optional[str] = None  # a prepared folder or gs:// URL holding manifest.json
    mixture: list[MixtureComponent] = field(default_factory=list)  # instead of `path`
    stages: list[Stage] = field(default_factory=list)  # instead of `path` / `mixture`
    packing: bool = False  # pack whole documents (first-fit) instead of concatenate-and-split
    streams: Optional[int] = None  # row streams per global batch; None: gcd(64, global batch). Fixes the data order
    shuffle: bool = True
    worker_count: int = 0  # Grain worker processes per row stream (0: a prefetch thread each)
    prefetch: int = 2  # batches prepared ahead
    prepare_corpus: Optional[Literal["stdlib", "stdlib_qa"]] = None  # prepare this corpus into `path` when empty
    prepare_vocab_size: int = 4096
    prepare_val_fraction: float = 0.05  # documents prepare_corpus holds out for validation
    synthetic: bool = False  # random tokens of the configured shape instead of shards (measure speed before data)
    chat_template: Optional[str] = None  # chat data: chatml | alpaca | kodalite | a Jinja string (trainer.data.chat)
    end_of_turn: Optional[str] = None  # the token ending a reply; None: the template's (a Jinja one's: EOS)


@dataclass(frozen=True)
class EvalConfig:
    """Periodic validation on the held-out split, and lm-eval tasks (the `eval` extra) during training."""

    every_steps: int = 50
    batches: int = 4
    tasks: list[str] = field(default_factory=list)  # lm-eval task names scored during training
    tasks_every_steps: int = 1000  # and at the end
    tasks_data_dir: Optional[str] = None  # one file per task (docs/eval.md)
    tasks_limit: Optional[int] = None  # documents per task; None: all


@dataclass(frozen=True)
class CheckpointConfig:
    """Async Orbax checkpoints of state + data iterator + config."""

    every_steps: int = 100
    keep: int = 3  # the last N
    keep_every: Optional[int] = None  # and every K-th step forever
    restore_from: Optional[str] = None  # PATH[:STEP] of another run, when this run has none
    restore_params_only: bool = True  # with restore_from: params only (fine-tuning) or the whole state
    async_save: bool = True


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging beside TensorBoard and JSONL (the `wandb` extra); off while `project` is None."""

    project: Optional[str] = None
    entity: Optional[str] = None  # None: the account's default entity
    name: Optional[str] = None  # None: the run folder's name
    mode: Literal["online", "offline"] = "online"  # offline: write run files locally (`wandb sync` later)


@dataclass(frozen=True)
class LogConfig:
    """What the loop reports and how often."""

    every_steps: int = 10
    tensorboard: bool = True
    sample_tokens: int = 64  # greedy tokens printed at the end of the run (0: none)
    sample_prompt: str = "import os\n"  # the prompt of that sample
    profile_steps: Optional[list[int]] = None  # [start, end]: a jax.profiler trace of these steps in run.dir/profile
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class RunConfig:
    """The run folder (local or gs://) that holds config, metrics and checkpoints."""

    dir: str = "runs/default"


@dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed settings; None means: from the environment (JAX_COORDINATOR_ADDRESS, ...) or auto-detect."""

    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


@dataclass(frozen=True)
class Config:
    """The whole job. Sections mirror the YAML; see configs/base.yml for every key with a comment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-able), e.g. to store the resolved config in the run folder."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (following `base:` includes), apply `section.key=value` overrides, type-check and validate."""
    raw = _read_yaml_with_bases(path, seen=())
    for item in overrides:
        _apply_override(raw, item)
    config = from_dict(raw)
    validate(config)
    return config


# Keys renamed since a release; a config (or a run folder's config.yaml) that still uses the old name loads with a
# one-line note, so existing runs resume.
RENAMED_KEYS = {("data", "shards"): "streams"}


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a typed `Config` from nested dicts, failing on unknown keys (naming the nearest) and wrong types."""
    for (section, old), new in RENAMED_KEYS.items():
        values = raw.get(section)
        if isinstance(values, dict) and old in values:
            if values.get(new) is not None and values[new] != values[old]:
                raise ConfigError(f"{section}.{old} is the old name of {section}.{new}; set only {section}.{new}")
            values = dict(values)
            old_value = values.pop(old)
            if values.get(new) is None:
                values[new] = old_value
            raw = {**raw, section: values}
            print(f"note: config key {section}.{old} is now {section}.{new}; read as {section}.{new}",
                  file=sys.stderr)
    return _build(Config, raw, prefix="")


def _read_yaml_with_bases(path: str, seen: tuple[str, ...]) -> dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml_with_bases(os.path.join(os.path.dirname(path), base), seen + (path,))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and key != "rules":
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
    dotted, text = item.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {item!r} must name section.key (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {key} is not a section")
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    name = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), sorted(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_describe(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_describe(value)}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this module, not in a config


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


# ---------------------------------------------------------------------------------------------- validation


def validate(config: Config) -> None:
    """Check values that are each well-typed but inconsistent together; device-dependent checks live in sharding."""
    m, t, o = config.model, config.train, config.optimizer
    positive = {
        "model.vocab_size": m.vocab_size, "model.embed_dim": m.embed_dim, "model.num_layers": m.num_layers,
        "model.num_heads": m.num_heads, "model.num_kv_heads": m.num_kv_heads, "model.mlp_dim": m.mlp_dim,
        "model.max_seq_len": m.max_seq_len, "train.steps": t.steps, "train.global_batch_size": t.global_batch_size,
        "train.seq_len": t.seq_len, "train.microbatches": t.microbatches,
        "log.every_steps": config.log.every_steps, "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.keep": config.checkpoint.keep, "eval.every_steps": config.eval.every_steps,
        "eval.tasks_every_steps": config.eval.tasks_every_steps,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
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
        raise ConfigError(f"model.lora.rank must be ≥ 0 and model.lora.dropout in [0, 1), got {m.lora.rank}, "
                          f"{m.lora.dropout}")
    unknown = sorted(set(m.lora.targets) - set(LORA_TARGETS))
    if unknown or (m.lora.rank and not m.lora.targets):
        raise ConfigError(f"model.lora.targets {unknown or '[]'}: name some of {', '.join(LORA_TARGETS)}")
    if m.lora.rank and not config.checkpoint.restore_from:
        raise ConfigError("model.lora adapts a trained model: set checkpoint.restore_from to the base run (or a "
                          "folder made by convert_from_hf)")
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={m.max_seq_len}: lower one or raise the other")
    validate_rope_scaling(m)
    if t.global_batch_size % t.microbatches:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by train.microbatches={t.microbatches}"
        )
    if o.warmup_steps < 0 or o.learning_rate <= 0:
        raise ConfigError("optimizer.learning_rate must be positive and optimizer.warmup_steps non-negative")
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
    for mixture in [config.data.mixture] + [s.mixture for s in config.data.stages]:
        if any(c.weight <= 0 for c in mixture):
            raise ConfigError("every data mixture weight must be positive")


def validate_rope_scaling(m: ModelConfig) -> None:
    """One line for a `model.rope_scaling` that transformers, llama.cpp and our RoPE could not read the same way."""
    r, key = m.rope_scaling, "model.rope_scaling"
    if r.type == "none":
        if r.factor != 1.0:
            raise ConfigError(f"{key}.factor={r.factor:g} has no effect while {key}.type is none: "
                              "set the type (linear, ntk, yarn or llama3) or leave factor at 1")
        return
    if not r.factor >= 1.0:
        raise ConfigError(f"{key}.factor must be at least 1 (new context / original context), got {r.factor:g}")
    if r.type == "ntk" and m.resolved_head_dim <= 2:
        raise ConfigError(f"{key}.type=ntk needs a head dimension above 2, got {m.resolved_head_dim}")
    if r.type in ("yarn", "llama3"):
        original = r.original_max_seq_len
        if original is not None and not 0 < original <= m.max_seq_len:
            raise ConfigError(f"{key}.original_max_seq_len={original} must be positive and at most "
                              f"model.max_seq_len={m.max_seq_len} (the pretraining context, not the new one)")
        if original is None and round(m.max_seq_len / r.factor) < 1:
            raise ConfigError(f"{key}.factor={r.factor:g} leaves no original context below "
                              f"model.max_seq_len={m.max_seq_len}: set {key}.original_max_seq_len")
    if r.type == "yarn":
        if not 0 < r.beta_slow < r.beta_fast:
            raise ConfigError(f"{key}.beta_fast ({r.beta_fast:g}) must exceed beta_slow ({r.beta_slow:g}), both "
                              "positive (rotations bounding the interpolation ramp; defaults 32 and 1)")
        if r.attention_factor is not None and not r.attention_factor > 0:
            raise ConfigError(f"{key}.attention_factor must be positive (or null: 0.1·ln(factor) + 1), "
                              f"got {r.attention_factor:g}")
    if r.type == "llama3" and not 0 < r.low_freq_factor < r.high_freq_factor:
        raise ConfigError(f"{key}.high_freq_factor ({r.high_freq_factor:g}) must exceed low_freq_factor "
                          f"({r.low_freq_factor:g}), both positive (Llama 3.1 uses 4 and 1)")
