"""Starting a fine-tuning run from a base model: the pinned base reference, a vocabulary grown for chat tokens, the
frozen base of a LoRA run, and the check that chat data matches the configured template.

`checkpoint.restore_from: RUN[:STEP]` names the base (a run trained here or a folder made by convert_from_hf). On the
first start its exact step is pinned in `RUN_DIR/base.json`, so a resumed run, an export or `trainer.generate` find
the same base even after the base run trained on. A LoRA run's checkpoints hold only its adapters: the base params
are restored from that reference at every start. A LoRA run named as a base starts the new run from its merged
weights (its base + (α/r)·A·B): a second SFT or a context extension continues the tuned model directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from trainer import checkpoint, run_folder, storage
from trainer.config import Config, ModelConfig
from trainer.data import chat, mixture
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.model import lora

_SHAPE_FIELDS = (
    "embed_dim",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "tie_embeddings",
    "scan_layers",
)


def base_tokenizer(config: Config) -> str | None:
    """The base run's tokenizer folder (what a chat corpus is tokenized with, to fine-tune that model), or None."""
    if not config.checkpoint.restore_from:
        return None
    run_dir, _ = checkpoint.parse_reference(config.checkpoint.restore_from)
    folder = storage.join(run_dir, run_folder.TOKENIZER_DIR)
    return folder if storage.exists(folder) else None


def pin_base(config: Config) -> str:
    """Resolve checkpoint.restore_from to RUN:STEP and record it in RUN_DIR/base.json (once, by process 0)."""
    path = storage.join(config.run.dir, run_folder.BASE_FILE)
    if storage.exists(path):
        return storage.read_json(path)["restore_from"]
    base = run_folder.open_run(config.checkpoint.restore_from)
    if not config.checkpoint.restore_params_only and base.lora:
        raise ConfigError(
            f"checkpoint.restore_from={config.checkpoint.restore_from} is a LoRA run: its train state "
            "holds adapters only; start from its merged weights with checkpoint.restore_params_only=true"
        )
    if jax.process_index() == 0:
        storage.write_json_atomic(path, {"restore_from": base.reference, "lora": lora.enabled(config.model)})
    return base.reference


def _check_shapes(base: ModelConfig, model: ModelConfig, reference: str) -> None:
    for name in _SHAPE_FIELDS:
        if getattr(base, name) != getattr(model, name):
            raise ConfigError(
                f"model.{name}={getattr(model, name)} differs from the base model {reference} "
                f"({getattr(base, name)}): fine-tuning keeps the base's architecture"
            )
    if model.vocab_size < base.vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is below the base's {base.vocab_size}")


def start_params(config: Config, abstract_params: Any, reference: str) -> tuple[Any, int]:
    """A full fine-tuning run's first params: the base's (a LoRA base's merged weights), with the embedding (and
    untied head) grown to model.vocab_size when the data's tokenizer added tokens (chat markers); new rows start at
    the mean of the existing ones, so a new token begins as an average token rather than noise or zero."""
    base = run_folder.open_run(reference)
    _check_shapes(base.config.model, config.model, reference)
    if base.config.model.vocab_size == config.model.vocab_size:
        return base.params_into(abstract_params, merged=True), base.step
    params = grow_vocab(base.host_params()[1], config.model.vocab_size)
    return run_folder.to_shardings(params, abstract_params), base.step


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


def attach_base(config: Config, step_fns: Any, say: Any) -> None:
    """LoRA: restore the frozen base params (the pinned reference) into the step functions' base shardings."""
    if not lora.enabled(config.model):
        return
    reference = pin_base(config)
    base = run_folder.open_run(reference)
    _check_shapes(base.config.model, config.model, reference)
    if base.config.model.vocab_size != config.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} differs from the base's "
            f"{base.config.model.vocab_size}: LoRA trains no embedding rows, so new (chat) tokens can't "
            "be learned; use a tokenizer that already holds them (train it with them) or full "
            "fine-tuning (model.lora.rank=0)"
        )
    try:
        params = base.params_into(step_fns.abstract_base, merged=True)
    except CheckpointError as e:
        raise CheckpointError(f"the base model of this LoRA run can't be read: {e}") from None
    step_fns.set_base(params)
    say(
        f"LoRA rank {config.model.lora.rank} α {config.model.lora.alpha:g} on {', '.join(config.model.lora.targets)}: "
        f"{lora.count(step_fns.abstract_state.params):,} trainable of "
        f"{lora.count(step_fns.abstract_base):,} frozen params from {reference} (step {base.step})"
    )


def check_chat_data(config: Config, stages: Sequence[mixture.Stage]) -> None:
    """data.chat_template must name the template the prepared conversations were rendered with (a mismatch would
    train one format and chat in another); chat data without data.chat_template is fine (the folder says which)."""
    wanted = config.data.chat_template
    if wanted is None or config.data.synthetic:
        return
    for stage in stages:
        for component in stage.components:
            m = component.manifest
            if m.kind != "chat":
                raise DataError(
                    f"data.chat_template={wanted[:40]!r} but {component.path} holds plain text, not "
                    "conversations: prepare it with `python -m trainer.data.prepare --format chat`"
                )
            spec = chat.resolve_template(wanted, config.data.end_of_turn)
            if spec.jinja != m.chat.get("chat_template") or (
                config.data.end_of_turn and config.data.end_of_turn != m.chat.get("end_of_turn")
            ):
                raise DataError(
                    f"{component.path} was prepared with chat template {m.chat.get('template')!r} "
                    f"(end of turn {m.chat.get('end_of_turn')!r}), not data.chat_template="
                    f"{wanted[:40]!r}: prepare it again or change the config"
                )
