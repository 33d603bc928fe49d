"""The config's sections: frozen, typed dataclasses, one per YAML section (configs/base.yml is their twin)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")
RematPolicy = Literal["none", "full", "save_matmuls"]  # what the backward pass recomputes (model.remat_policy)


@dataclass(frozen=True)
class RopeScalingConfig:
    """How RoPE stretches to a context longer than pretraining's (docs/context.md): none | linear | ntk | yarn | llama3.

    linear, yarn and llama3 are transformers' rope types of the same names; ntk is static NTK-aware scaling, a new
    base θ' = θ·factor^(d/(d−2)) (d: the head dimension).
    """

    type: Literal["none", "linear", "ntk", "yarn", "llama3"] = "none"
    factor: float = 1.0  # new context / original context
    original_max_seq_len: int | None = None  # pretraining's context (yarn, llama3); None: max_seq_len / factor
    beta_fast: float = 32.0  # yarn: rotations above which a frequency is kept (extrapolated)
    beta_slow: float = 1.0  # yarn: rotations below which a frequency is divided by factor (interpolated)
    attention_factor: float | None = None  # yarn: scale of cos/sin; None: 0.1·ln(factor) + 1
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
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the LLaMA decoder and how it is computed."""

    vocab_size: int = 4096
    embed_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # None: embed_dim // num_heads
    mlp_dim: int = 768
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 256
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    scan_layers: bool = True
    remat_policy: RematPolicy = "full"
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
    rules: dict[str, list[str] | None] = field(
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
        out: list[tuple[str, Any]] = []
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
    epochs: float | None = None  # instead of steps: passes over data.path's train tokens (steps derived from them)
    global_batch_size: int = 16
    seq_len: int = 256
    seed: int = 0
    microbatches: int = 1  # gradient accumulation inside the jitted step (evaluation goes over the same slices)
    z_loss: float = 0.0
    peak_tflops: float | None = None  # per device; None: look the device kind up (none on CPU)
    max_consecutive_nonfinite: int = 5  # stop after this many skipped updates in a row


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup and a decay schedule, global-norm clipping."""

    learning_rate: float = 3e-3
    min_learning_rate_ratio: float = 0.1  # final lr as a fraction of the peak (cosine / linear / wsd)
    warmup_steps: int = 20
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    decay_fraction: float = 0.2  # wsd: the share of train.steps at the end that decays
    decay_steps: int | None = None  # wsd: the decay's length in steps, instead of decay_fraction
    decay_shape: Literal["1-sqrt", "linear", "cosine"] = "1-sqrt"  # wsd: how the decay falls
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    clip_norm: float | None = 1.0


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

    path: str | None = None  # a prepared folder or gs:// URL holding manifest.json
    mixture: list[MixtureComponent] = field(default_factory=list)  # instead of `path`
    stages: list[Stage] = field(default_factory=list)  # instead of `path` / `mixture`
    packing: bool = False  # pack whole documents (first-fit) instead of concatenate-and-split
    streams: int | None = None  # row streams per global batch; None: gcd(64, global batch). Fixes the data order
    shuffle: bool = True
    worker_count: int = 0  # Grain worker processes per row stream (0: a prefetch thread each)
    prefetch: int = 2  # batches prepared ahead
    prepare_corpus: Literal["stdlib", "stdlib_qa"] | None = None  # prepare this corpus into `path` when empty
    prepare_vocab_size: int = 4096
    prepare_val_fraction: float = 0.05  # documents prepare_corpus holds out for validation
    synthetic: bool = False  # random tokens of the configured shape instead of shards (measure speed before data)
    chat_template: str | None = None  # chat data: chatml | alpaca | kodalite | a Jinja string (trainer.data.chat)
    end_of_turn: str | None = None  # the token ending a reply; None: the template's (a Jinja one's: EOS)


@dataclass(frozen=True)
class EvalConfig:
    """Periodic validation on the held-out split, and lm-eval tasks (the `eval` extra) during training."""

    every_steps: int = 50
    batches: int = 4
    tasks: list[str] = field(default_factory=list)  # lm-eval task specs (`name`, `name:shots`) scored in training
    tasks_every_steps: int = 1000  # and at the end
    tasks_data_dir: str | None = None  # one file per task (docs/eval.md)
    tasks_limit: int | None = None  # documents per task; None: all


@dataclass(frozen=True)
class CheckpointConfig:
    """Async Orbax checkpoints of state + data iterator + config."""

    every_steps: int = 100
    keep: int = 3  # the last N
    keep_every: int | None = None  # and every K-th step forever
    restore_from: str | None = None  # PATH[:STEP] of another run, when this run has none
    restore_params_only: bool = (
        True  # with restore_from: params only (fine-tuning) or the whole state and data position
    )
    async_save: bool = True


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging beside TensorBoard and JSONL (the `wandb` extra); off while `project` is None."""

    project: str | None = None
    entity: str | None = None  # None: the account's default entity
    name: str | None = None  # None: the run folder's name
    mode: Literal["online", "offline"] = "online"  # offline: write run files locally (`wandb sync` later)


@dataclass(frozen=True)
class LogConfig:
    """What the loop reports and how often."""

    every_steps: int = 10
    tensorboard: bool = True
    sample_tokens: int = 64  # greedy tokens printed at the end of the run (0: none)
    sample_prompt: str = "import os\n"  # the prompt of that sample
    profile_steps: list[int] | None = None  # [start, end]: a jax.profiler trace of these steps in run.dir/profile
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class RunConfig:
    """The run folder (local or gs://) that holds config, metrics and checkpoints."""

    dir: str = "runs/default"


@dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed settings; None means: from the environment (JAX_COORDINATOR_ADDRESS, ...) or auto-detect."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


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
