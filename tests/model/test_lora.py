"""LoRA in the train step: only adapters are trained and held (gradients, optimizer state), the base is never touched,
any mesh gives the single device's losses, and merging W + (α/r)·A·B gives the unmerged model's logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batches import random_batch

from trainer import sharding
from trainer.config import from_dict
from trainer.model import lora
from trainer.model.transformer import Transformer
from trainer.step import make_step_functions

BASE = {
    "model": {
        "vocab_size": 256,
        "embed_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "mlp_dim": 128,
        "max_seq_len": 32,
        "compute_dtype": "float32",
        "tie_embeddings": False,
        "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["query", "value", "out", "down"]},
    },
    "train": {"global_batch_size": 8, "seq_len": 32, "steps": 10},
    "optimizer": {"learning_rate": 1e-2, "warmup_steps": 1, "weight_decay": 0.0},
}
BATCHES = [random_batch(i, 8, 32, 256, segments=2) for i in range(4)]


def _config(mesh, **model):
    raw = {k: dict(v) for k, v in BASE.items()}
    raw["model"].update(model)
    raw["mesh"] = mesh
    return from_dict(raw)


def _base_params(config):
    """A 'pretrained' base: the plain model's random init (no adapters), as numpy."""
    plain = dataclasses.replace(config.model, lora=dataclasses.replace(config.model.lora, rank=0))
    params = Transformer(plain).init(jax.random.key(7), jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.tree.map(
        np.asarray,
        jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params, is_leaf=lambda x: hasattr(x, "unbox")),
    )


def _train(config, devices):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:devices])
    fns = make_step_functions(config, mesh)
    base_np = _base_params(config)
    fns.set_base(jax.tree.map(lambda v, a: jax.device_put(v, a.sharding), base_np, fns.abstract_base))
    state = fns.init(jax.random.key(0))
    losses = []
    for batch in BATCHES:
        state, metrics = fns.train_step(state, jax.device_put(batch, fns.batch_sharding))
        losses.append(float(metrics["loss"]))
    return fns, state, losses, base_np


@pytest.fixture(scope="module")
def one_device():
    return _train(_config({"data": 1, "fsdp": 1, "tensor": 1}), 1)


def test_only_adapters_are_trained_and_the_base_is_untouched(one_device):
    fns, state, losses, base_np = one_device
    assert losses[-1] < losses[0]
    # the train state (what gradients, the optimizer and checkpoints see) holds adapters only
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert names and all(n.endswith(("['lora_a']", "['lora_b']")) for n in names)
    assert not any("key" in n or "gate" in n or "up'" in n for n in names)  # only the named targets
    adapters, base = lora.count(state.params), lora.count(base_np)
    # optimizer state: Adam's two moments of the adapters plus a few scalars (counts), nothing base-sized
    opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if hasattr(x, "size"))
    assert 2 * adapters <= opt <= 2 * adapters + 16, (opt, adapters)
    assert adapters < base / 10
    # the frozen base is bitwise what it was
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), fns.lora_base.params, base_np)
    assert any(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves(lora.split(state.params)[1]))


def test_fsdp8_gives_the_single_device_losses(one_device):
    _, _, single, _ = one_device
    _, state, losses, _ = _train(_config({"data": 1, "fsdp": 8, "tensor": 1}), 8)
    np.testing.assert_allclose(losses, single, rtol=1e-5)
    a = state.params["layers"]["attention"]["query"]["lora_a"]
    assert a.addressable_shards[0].data.shape[1] == a.shape[1] // 8  # sharded along embed like the base kernel


def test_merged_weights_give_the_unmerged_logits(one_device):
    fns, state, _, base_np = one_device
    config = fns.config
    full = lora.combine(base_np, jax.tree.map(np.asarray, state.params))
    merged = lora.merge(full, config.model.lora)
    assert lora.split(merged)[1] == {} and jax.tree.structure(merged) == jax.tree.structure(base_np)
    plain = dataclasses.replace(config.model, lora=dataclasses.replace(config.model.lora, rank=0))
    tokens = jnp.asarray(BATCHES[0]["inputs"][:2])
    unmerged = Transformer(config.model).apply({"params": full}, tokens)
    together = Transformer(plain).apply({"params": merged}, tokens)
    np.testing.assert_allclose(np.asarray(together), np.asarray(unmerged), atol=2e-5, rtol=1e-5)
    assert not np.allclose(
        np.asarray(Transformer(plain).apply({"params": base_np}, tokens)), np.asarray(unmerged), atol=1e-3
    )  # the adapters do change the model


def test_unscanned_layers_merge_in_layer_order():
    config = _config({"data": 1, "fsdp": 1, "tensor": 1}, scan_layers=False, num_layers=3)
    params = Transformer(config.model).init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(
        lambda x: np.asarray(x.unbox() if hasattr(x, "unbox") else x), params, is_leaf=lambda x: hasattr(x, "unbox")
    )
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.01 if jax.tree_util.keystr(p).endswith("['lora_b']") else x, params
    )
    merged = lora.merge(params, config.model.lora)
    plain = dataclasses.replace(config.model, lora=dataclasses.replace(config.model.lora, rank=0))
    tokens = jnp.arange(16, dtype=jnp.int32)[None]
    np.testing.assert_allclose(
        np.asarray(Transformer(plain).apply({"params": merged}, tokens)),
        np.asarray(Transformer(config.model).apply({"params": params}, tokens)),
        atol=2e-5,
    )
    peft = lora.peft_tensors(params, config.model.lora)
    assert len(peft) == 3 * 4 * 2 and "base_model.model.model.layers.2.self_attn.o_proj.lora_A.weight" in peft
    assert peft["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert peft["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (64, 4)
