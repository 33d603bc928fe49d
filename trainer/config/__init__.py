"""Typed, frozen configuration: YAML files (with `base:` includes) plus `section.key=value` overrides.

`sections` holds the dataclasses, `loading` reads YAML into them, `checks` validates values that conflict.

A config is plain data. Loading it has no side effects: no devices are touched, nothing is initialised.
Every mistake a person can make in a config raises `ConfigError` with one line saying what to change;
the command-line entry points turn that into exit code 2.
"""

from trainer.config.checks import validate, validate_rope_scaling  # noqa: F401
from trainer.config.loading import RENAMED_KEYS, from_dict, load_config  # noqa: F401
from trainer.config.sections import (  # noqa: F401
    LORA_TARGETS,
    CheckpointConfig,
    Config,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    MeshConfig,
    MixtureComponent,
    ModelConfig,
    OptimizerConfig,
    RematPolicy,
    RopeScalingConfig,
    RunConfig,
    Stage,
    TrainConfig,
    WandbConfig,
)
from trainer.errors import ConfigError  # noqa: F401
