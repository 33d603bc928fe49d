"""Starting a fine-tuning run from a base model: the pinned base reference, a vocabulary grown for chat tokens, the
frozen base of a LoRA run, and the check that chat data matches the configured template.

`checkpoint.restore_from: RUN[:STEP]` names the base (a run trained here or a folder made by convert_from_hf). On the
first start its exact step is pinned in `RUN_DIR/base.json`, so a resumed run, an export or `trainer.generate` find
the same base even after the base run trained on. A LoRA run's checkpoints hold only its adapters: the base params
are restored from that reference at every start. A LoRA run named as a base starts the new run from its merged
weights (its base + (α/r)·A·B): a second SFT or a context extension continues the tuned model directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from trainer import checkpoint, storage
from trainer.config import Config, ModelConfig
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.model import lora

BASE_FILE = "base.json"
_SHAPE_FIELDS = ("embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "tie_embeddings",
                 "scan_layers")


def base_tokenizer(config: Config) -> str | None:
    """The base run's tokenizer folder (what a chat corpus is tokenized with, to fine-tune that model), or None."""
    if not config.checkpoint.restore_from:
        return None
    run_dir, _ = checkpoint.parse_reference(config.checkpoint.restore_from)
    folder = storage.join(run_dir, "tokenizer")
    return folder if storage.exists(folder) else None


def pinned_base(run_dir: str, config: Config) -> str | None:
    """The base `RUN:STEP` this run started from (RUN_DIR/base.json), else checkpoint.restore_from as written."""
    path = storage.join(run_dir, BASE_FILE)
    if storage.exists(path):
        return storage.read_json(path)["restore_from"]
    return config.checkpoint.restore_from


def pin_base(config: Config) -> str:
    """Resolve checkpoint.restore_from to RUN:STEP and record it in RUN_DIR/base.json (once, by process 0)."""
    path = storage.join(config.run.dir, BASE_FILE)
    if storage.exists(path):
        return storage.read_json(path)["restore_from"]
    if not config.checkpoint.restore_params_only and _is_lora_run(config.checkpoint.restore_from):
        raise ConfigError(f"checkpoint.restore_from={config.checkpoint.restore_from} is a LoRA run: its train state "
                          "holds adapters only; start from its merged weights with checkpoint.restore_params_only=true")
    run_dir, step = checkpoint.parse_reference(config.checkpoint.restore_from)
    if step is None:
        step = checkpoint._find_step(run_dir, None)[1]
    reference = f"{run_dir}:{step}"
    if jax.process_index() == 0:
        storage.write_json_atomic(path, {"restore_from": reference, "lora": lora.enabled(config.model)})
    return reference


def _base_model(reference: str) -> ModelConfig:
    run_dir, _ = checkpoint.parse_reference(reference)
    return checkpoint.read_run_config(run_dir).model


def _check_shapes(base: ModelConfig, model: ModelConfig, reference: str) -> None:
    for name in _SHAPE_FIELDS:
        if getattr(base, name) != getattr(model, name):
            raise ConfigError(f"model.{name}={getattr(model, name)} differs from the base model {reference} "
                              f"({getattr(base, name)}): fine-tuning keeps the base's architecture")
    if model.vocab_size < base.vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is below the base's {base.vocab_size}")


def _is_lora_run(reference: str) -> bool:
    run_dir, _ = checkpoint.parse_reference(reference)
    return lora.enabled(checkpoint.read_run_config(run_dir).model)


def restore_base_params(reference: str, abstract_params: Any) -> tuple[Any, int]:
    """The plain params of the run `reference` names, in `abstract_params`' shardings: its own, or, for a LoRA run
    (whose checkpoints hold adapters only), its merged weights (its base + (α/r)·A·B)."""
    if not _is_lora_run(reference):
        return checkpoint.restore_params_from(reference, abstract_params)
    _, params, step = load_merged(reference)
    return jax.tree.map(_to_device, params, abstract_params), step


def start_params(config: Config, abstract_params: Any, reference: str) -> tuple[Any, int]:
    """A full fine-tuning run's first params: the base's (a LoRA base's merged weights), with the embedding (and
    untied head) grown to model.vocab_size when the data's tokenizer added tokens (chat markers); new rows start at
    the mean of the existing ones, so a new token begins as an average token rather than noise or zero."""
    base = _base_model(reference)
    _check_shapes(base, config.model, reference)
    if base.vocab_size == config.model.vocab_size:
        return restore_base_params(reference, abstract_params)
    _, params, step = load_merged(reference)
    params = grow_vocab(params, config.model.vocab_size)
    return jax.tree.map(_to_device, params, abstract_params), step


def grow_vocab(params: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """Numpy params with `embed/embedding` [V, E] (and `lm_head/kernel` [E, V]) grown to `vocab_size` rows/columns,
    each new one the mean of the old ones."""
    params = dict(params)
    table = np.asarray(params["embed"]["embedding"])
    extra = vocab_size - table.shape[0]
    params["embed"] = {"embedding": np.concatenate([table, np.repeat(table.mean(0, keepdims=True), extra, 0)])}
    if "lm_head" in params:
        head = np.asarray(params["lm_head"]["kernel"])
        params["lm_head"] = {"kernel": np.concatenate([head, np.repeat(head.mean(1, keepdims=True), extra, 1)], 1)}
    return params


def _to_device(value: np.ndarray, target: Any) -> jax.Array:
    value = np.asarray(value, dtype=target.dtype)
    return jax.make_array_from_callback(value.shape, target.sharding, lambda index: value[index])


def attach_base(config: Config, step_fns: Any, say: Any) -> None:
    """LoRA: restore the frozen base params (the pinned reference) into the step functions' base shardings."""
    if not lora.enabled(config.model):
        return
    reference = pin_base(config)
    base = _base_model(reference)
    _check_shapes(base, config.model, reference)
    if base.vocab_size != config.model.vocab_size:
        raise ConfigError(f"model.vocab_size={config.model.vocab_size} differs from the base's {base.vocab_size}: "
                          "LoRA trains no embedding rows, so new (chat) tokens can't be learned; use a tokenizer "
                          "that already holds them (train it with them) or full fine-tuning (model.lora.rank=0)")
    try:
        params, step = restore_base_params(reference, step_fns.abstract_base)
    except CheckpointError as e:
        raise CheckpointError(f"the base model of this LoRA run can't be read: {e}") from None
    step_fns.set_base(params)
    say(f"LoRA rank {config.model.lora.rank} α {config.model.lora.alpha:g} on {', '.join(config.model.lora.targets)}: "
        f"{lora.count(step_fns.abstract_state.params):,} trainable of "
        f"{lora.count(step_fns.abstract_base):,} frozen params from {reference} (step {step})")


def load_merged(reference: str, dtype: str | None = None) -> tuple[Config, dict[str, Any], int]:
    """A run's config and numpy params for exporters; a LoRA run's adapters are merged into its base
    (W + (α/r)·A·B) and its config loses `model.lora`, so the result is a plain model."""
    config, params, step = checkpoint.load_params(reference, dtype=dtype)
    if not lora.enabled(config.model):
        return config, params, step
    return _without_lora(config), lora.merge(with_base(reference, config, params, dtype), config.model.lora), step


def with_base(reference: str, config: Config, adapters: dict[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """A LoRA run's numpy adapters joined with its base's numpy params (the full tree, adapters unmerged)."""
    run_dir, _ = checkpoint.parse_reference(reference)
    base_ref = pinned_base(run_dir, config)
    if not base_ref:
        raise CheckpointError(f"{run_dir} is a LoRA run without a base reference (base.json, checkpoint.restore_from)")
    _, base, _ = load_merged(base_ref, dtype=dtype)  # a base that is itself a LoRA run: its merged weights
    return lora.combine(base, adapters)


def _without_lora(config: Config) -> Config:
    model = dataclasses.replace(config.model, lora=dataclasses.replace(config.model.lora, rank=0))
    return dataclasses.replace(config, model=model)


def restore_for_inference(reference: str, config: Config, abstract_params: Any) -> tuple[Any, int]:
    """Params of a run into `abstract_params`' shardings (the full tree: for LoRA, base + adapters)."""
    if not lora.enabled(config.model):
        return checkpoint.restore_params_from(reference, abstract_params)
    base_abstract, adapter_abstract = lora.split(abstract_params)
    adapters, step = checkpoint.restore_params_from(reference, adapter_abstract)
    run_dir, _ = checkpoint.parse_reference(reference)
    base, _ = restore_base_params(pinned_base(run_dir, config), base_abstract)
    return lora.combine(base, adapters), step


def check_chat_data(config: Config) -> None:
    """data.chat_template must name the template the prepared conversations were rendered with (a mismatch would
    train one format and chat in another); chat data without data.chat_template is fine (the folder says which)."""
    from trainer.data import chat, mixture

    wanted = config.data.chat_template
    if wanted is None or config.data.synthetic:
        return
    for phase in mixture.plan(config.data):
        for component in phase.components:
            m = component.manifest
            if m.kind != "chat":
                raise DataError(f"data.chat_template={wanted[:40]!r} but {component.path} holds plain text, not "
                                "conversations: prepare it with `python -m trainer.data.prepare --format chat`")
            spec = chat.resolve_template(wanted, config.data.end_of_turn)
            if spec.jinja != m.chat.get("chat_template") or (
                    config.data.end_of_turn and config.data.end_of_turn != m.chat.get("end_of_turn")):
                raise DataError(f"{component.path} was prepared with chat template {m.chat.get('template')!r} "
                                f"(end of turn {m.chat.get('end_of_turn')!r}), not data.chat_template="
                                f"{wanted[:40]!r}: prepare it again or change the config")
