"""A LoRA run as `checkpoint.restore_from`: the new run starts from its merged weights (its base + (α/r)·A·B), so a
second SFT (full or LoRA) or a context extension continues the tuned model; at step 0 its logits are the merged
export's (transformers on the `--merge-lora` folder)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import SMALL_MODEL as MODEL
from hf_models import random_params
from runs import keep_tokenizer, prepare_corpus

from trainer import checkpoint, sharding, storage
from trainer.config import CheckpointConfig, Config, DataConfig, LoraConfig, from_dict
from trainer.errors import ConfigError
from trainer.export import command as convert_to_hf
from trainer.model import lora
from trainer.model.transformer import Transformer
from trainer.run import finetune
from trainer.step import make_step_functions

LORA = LoraConfig(rank=4, alpha=8.0, targets=["query", "value", "out", "down"])
TOKENS = [[5, 17, 99, 3, 250, 42, 7, 300]]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A base run, and a LoRA run on it whose adapters (A and B) are non-zero: a tuned model."""
    root = tmp_path_factory.mktemp("lora-base")
    data = prepare_corpus(str(root / "data"))
    base = str(root / "base")
    checkpoint.save_params(base, Config(model=MODEL, data=DataConfig(path=data)), random_params(MODEL), step=0)
    tuned_model = dataclasses.replace(MODEL, lora=LORA)
    shapes = jax.eval_shape(Transformer(tuned_model).init, jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    rng = np.random.default_rng(3)
    adapters = jax.tree.map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
        lora.split(
            jax.tree.map(
                lambda x: x.unbox() if hasattr(x, "unbox") else x, shapes, is_leaf=lambda x: hasattr(x, "unbox")
            )
        )[1],
    )
    run = str(root / "lora")
    config = Config(model=tuned_model, data=DataConfig(path=data), checkpoint=CheckpointConfig(restore_from=base))
    checkpoint.save_params(run, config, adapters, step=4)
    keep_tokenizer(data, run)
    storage.write_json_atomic(os.path.join(run, "base.json"), {"restore_from": f"{base}:0", "lora": True})
    return root, base, run, data


def _merged_export_logits(run, out):
    import torch
    from transformers import AutoModelForCausalLM

    assert convert_to_hf.main(["--checkpoint", run, "--out", str(out), "--merge-lora", "--no-verify"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


def _new_run(root, run, data, name, **model):
    return from_dict(
        {
            "model": {**dataclasses.asdict(MODEL), "lora": {"rank": 0}, **model},
            "data": {"path": data},
            "mesh": {"data": 1, "fsdp": 2, "tensor": 1},
            "train": {"global_batch_size": 2, "seq_len": 64},
            "checkpoint": {"restore_from": run},
            "run": {"dir": str(root / name)},
        }
    )


def _logits(model, params):
    return np.asarray(Transformer(model).apply({"params": params}, jnp.asarray(TOKENS)))


def test_a_second_run_from_a_lora_run_starts_from_its_merged_weights(lora_run, tmp_path):
    root, base, run, data = lora_run
    exported = _merged_export_logits(run, tmp_path / "merged")
    mesh = sharding.make_mesh(_new_run(root, run, data, "x").mesh, jax.devices()[:2])

    # a full SFT (or a context extension) of the tuned model: its step-0 params are the merged weights
    full = _new_run(root, run, data, "sft2")
    fns = make_step_functions(full, mesh)
    params, step = finetune.start_params(full, fns.abstract_state.params, finetune.pin_base(full))
    assert step == 4
    np.testing.assert_allclose(_logits(full.model, jax.device_get(params)), exported, atol=1e-4, rtol=1e-4)

    # a second LoRA run on it: the merged weights are its frozen base, its fresh adapters (B = 0) add nothing
    second = _new_run(root, run, data, "lora2", lora=dataclasses.asdict(LORA))
    fns = make_step_functions(second, mesh)
    finetune.attach_base(second, fns, lambda _: None)
    state = fns.init(jax.random.key(0))
    start = lora.combine(jax.device_get(fns.lora_base.params), jax.device_get(state.params))
    np.testing.assert_allclose(_logits(second.model, start), exported, atol=1e-4, rtol=1e-4)
    base_only = _logits(MODEL, checkpoint.load_params(base)[1])
    assert not np.allclose(base_only, exported, atol=1e-3)  # the adapters did change the model

    # the second LoRA run's merged export: its adapters on the first run's merged weights (not on adapters alone)
    second_run = str(root / "lora2")
    checkpoint.save_params(second_run, second, jax.device_get(state.params), step=0)
    keep_tokenizer(data, second_run)
    storage.write_json_atomic(os.path.join(second_run, "base.json"), {"restore_from": f"{run}:4", "lora": True})
    np.testing.assert_allclose(_merged_export_logits(second_run, tmp_path / "merged2"), exported, atol=1e-4, rtol=1e-4)


def test_a_lora_runs_train_state_is_not_a_whole_state_to_resume(lora_run):
    root, _, run, data = lora_run
    config = dataclasses.replace(
        _new_run(root, run, data, "whole"), checkpoint=CheckpointConfig(restore_from=run, restore_params_only=False)
    )
    with pytest.raises(ConfigError, match="restore_params_only=true"):
        finetune.pin_base(config)
