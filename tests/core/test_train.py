"""The sharded train step: the same losses on every mesh, accumulation == one big batch, and it learns."""

import dataclasses

import jax
import numpy as np
import pytest
from batches import random_batch

from trainer import sharding
from trainer.config import from_dict
from trainer.step import make_step_functions

BASE = {
    "model": {
        "vocab_size": 512,
        "embed_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "mlp_dim": 128,
        "max_seq_len": 32,
        "compute_dtype": "float32",
        "tie_embeddings": False,
    },
    "train": {"global_batch_size": 16, "seq_len": 32, "steps": 20},
    "optimizer": {"learning_rate": 1e-2, "warmup_steps": 2},
}


def _config(**sections):
    raw = {k: dict(v) for k, v in BASE.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return from_dict(raw)


def _losses(config, batches, devices):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:devices])
    trainer = make_step_functions(config, mesh)
    state = trainer.init(jax.random.key(config.train.seed))
    losses = []
    for batch in batches:
        state, metrics = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
        losses.append(float(metrics["loss"]))
    return losses, state


BATCHES = [random_batch(i, 16, 32, 512, segments=2) for i in range(5)]


@pytest.fixture(scope="module")
def single_device_losses():
    return _losses(_config(mesh={"data": 1, "fsdp": 1, "tensor": 1}), BATCHES, 1)[0]


@pytest.mark.parametrize(
    "mesh",
    [{"data": 8, "fsdp": 1}, {"data": 1, "fsdp": 8}, {"data": 2, "fsdp": 4}, {"data": 2, "fsdp": 2, "tensor": 2}],
    ids=["data8", "fsdp8", "data2_fsdp4", "data2_fsdp2_tensor2"],
)
def test_every_mesh_gives_the_single_device_losses(mesh, single_device_losses):
    losses, state = _losses(_config(mesh={"tensor": 1, **mesh}), BATCHES, 8)
    np.testing.assert_allclose(losses, single_device_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    kernel = state.params["layers"]["mlp"]["up"]["kernel"]
    expected = sharding.shard_shape(
        kernel.shape,
        kernel.sharding.spec,
        {"data": mesh["data"], "fsdp": mesh["fsdp"], "tensor": mesh.get("tensor", 1)},
    )
    assert kernel.addressable_shards[0].data.shape == expected  # really sharded, not replicated


def test_gradient_accumulation_equals_one_big_batch():
    mesh = {"data": 2, "fsdp": 4}
    one, state_one = _losses(_config(mesh=mesh), BATCHES[:3], 8)
    four, state_four = _losses(_config(mesh=mesh, train={"microbatches": 2}), BATCHES[:3], 8)
    np.testing.assert_allclose(four, one, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), state_four.params, state_one.params
    )


def test_eval_over_microbatches_equals_one_big_batch():
    """Evaluation goes over the same slices as training (so it never needs more memory): same sums."""
    evals = []
    for micro in (1, 4):
        config = _config(mesh={"data": 2, "fsdp": 4}, train={"microbatches": micro})
        step_fns = make_step_functions(config, sharding.make_mesh(config.mesh, jax.devices()[:8]))
        params = step_fns.init(jax.random.key(0)).params
        evals.append(jax.device_get(step_fns.eval_step(params, jax.device_put(BATCHES[4], step_fns.batch_sharding))))
    assert evals[0]["tokens"] == evals[1]["tokens"] == BATCHES[4]["loss_mask"].sum()
    np.testing.assert_allclose(evals[1]["nll_sum"], evals[0]["nll_sum"], rtol=1e-5)


def test_gradient_accumulation_four_microbatches_on_one_device():
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    one, _ = _losses(_config(mesh=mesh), BATCHES[:2], 1)
    four, _ = _losses(_config(mesh=mesh, train={"microbatches": 4}), BATCHES[:2], 1)
    np.testing.assert_allclose(four, one, rtol=1e-5)


def test_tiny_model_overfits_one_batch():
    config = _config(
        mesh={"data": 1, "fsdp": 1, "tensor": 1},
        optimizer={"learning_rate": 1e-2, "warmup_steps": 5, "schedule": "constant", "weight_decay": 0.0},
        train={"global_batch_size": 4, "steps": 80},
    )
    batch = random_batch(7, 4, 32, 512)
    losses, _ = _losses(config, [batch] * 80, 1)
    assert losses[-1] < losses[0] / 10, losses[::10]


def test_loss_mask_excludes_positions():
    """Masked positions don't count: poisoning their targets leaves the loss unchanged."""
    config = _config(mesh={"data": 1, "fsdp": 1, "tensor": 1})
    batch = random_batch(3, 16, 32, 512)
    batch["loss_mask"][:, 16:] = 0.0
    other = {k: v.copy() for k, v in batch.items()}
    other["targets"][:, 16:] = 0
    a, _ = _losses(config, [batch], 1)
    b, _ = _losses(config, [other], 1)
    assert a == b
    z, _ = _losses(dataclasses.replace(config, train=dataclasses.replace(config.train, z_loss=1e-2)), [batch], 1)
    assert z == a  # the reported loss is the cross-entropy alone; z-loss only shapes the gradient
