"""The Linen LLaMA: scan == unrolled, remat policies don't change gradients, segments isolate documents,
and the seed configs have exactly their published parameter counts (planned abstractly)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batches import random_batch
from flax import linen as nn

from trainer.config import ModelConfig, load_config
from trainer.main import main
from trainer.model import flops
from trainer.model.layout import stack_layers, unstack_layers
from trainer.model.transformer import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ModelConfig(
    vocab_size=256,
    embed_dim=64,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=128,
    max_seq_len=32,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)


def _init(config, tokens):
    return nn.unbox(Transformer(config).init(jax.random.key(1), tokens))["params"]


def test_scan_and_unrolled_layers_give_equal_outputs():
    batch = random_batch(0, 2, 16, SMALL.vocab_size)
    unrolled_cfg = dataclasses.replace(SMALL, scan_layers=False)
    params = _init(unrolled_cfg, batch["inputs"])
    stacked = stack_layers(params, SMALL.num_layers)
    out_unrolled = Transformer(unrolled_cfg).apply({"params": params}, batch["inputs"])
    out_scanned = Transformer(SMALL).apply({"params": stacked}, batch["inputs"])
    np.testing.assert_allclose(out_scanned, out_unrolled, rtol=1e-5, atol=1e-5)
    back = unstack_layers(stacked)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, params))


@pytest.mark.parametrize("scan", [True, False])
def test_remat_policies_give_equal_gradients(scan):
    batch = random_batch(0, 2, 16, SMALL.vocab_size)
    base = dataclasses.replace(SMALL, scan_layers=scan)
    params = _init(base, batch["inputs"])

    def grads(policy):
        model = Transformer(dataclasses.replace(base, remat_policy=policy))

        def loss(p):
            logits = model.apply({"params": p}, batch["inputs"])
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        return jax.grad(loss)(params)

    reference = grads("none")
    for policy in ("full", "save_matmuls"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads(policy), reference)


def test_segments_isolate_packed_documents():
    """With two packed documents per row, the second document's logits equal those of running it alone."""
    cfg = SMALL
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 16)).astype(np.int32)
    params = _init(cfg, tokens)
    model = Transformer(cfg)
    segment_ids = np.array([[1] * 6 + [2] * 10], np.int32)
    positions = np.array([list(range(6)) + list(range(10))], np.int32)
    packed = model.apply({"params": params}, tokens, positions, segment_ids)
    alone = model.apply({"params": params}, tokens[:, 6:])
    np.testing.assert_allclose(packed[:, 6:], alone, rtol=1e-5, atol=1e-5)
    unpacked = model.apply({"params": params}, tokens)
    assert not np.allclose(unpacked[:, 6:], alone, atol=1e-3)


def test_tied_embeddings_have_no_head():
    params = _init(dataclasses.replace(SMALL, tie_embeddings=True), np.zeros((1, 8), np.int32))
    assert "lm_head" not in params
    assert sum(x.size for x in jax.tree.leaves(params)) == flops.param_count(
        dataclasses.replace(SMALL, tie_embeddings=True)
    )


EXPECTED = {"1b.yml": 1_050_002_688, "1.3b.yml": 1_269_209_088, "303m.yml": 302_027_520}


@pytest.mark.parametrize("name, count", sorted(EXPECTED.items()))
def test_seed_configs_have_published_parameter_counts(name, count, capsys):
    assert main([os.path.join(REPO, "configs", name), "--dry-run", "--devices", "64"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["params"] == count
    assert record["mesh"] == {"data": 1, "fsdp": 64, "tensor": 1}
    assert record["flops_per_token"] == flops.flops_per_token(
        load_config(os.path.join(REPO, "configs", name)).model, 1024
    )


def test_460m_lands_within_two_percent_and_tiny_is_small(capsys):
    assert main([os.path.join(REPO, "configs", "460m.yml"), "--dry-run"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(record["params"] - 461.7e6) / 461.7e6 < 0.02
    tiny = load_config(os.path.join(REPO, "configs", "tiny.yml")).model
    assert 1e6 < flops.param_count(tiny) < 10e6 and tiny.vocab_size == 4096 and tiny.max_seq_len == 256


def test_dry_run_cli_prints_summary_and_json():
    result = subprocess.run(
        [sys.executable, "-m", "trainer.main", "configs/303m.yml", "--dry-run", "mesh.tensor=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["params"] == 302_027_520 and record["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    text = "\n".join(lines)
    assert "layers/mlp/up/kernel" in text and "'fsdp', 'tensor'" in text and "GiB" in text


def test_flops_formula_counts_matmuls_and_causal_attention():
    m = ModelConfig(vocab_size=10, embed_dim=8, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=16)
    head_dim = 4
    attention = 8 * head_dim * (2 * 2 + 2 * 1)
    matmuls = 2 * (attention + 3 * 8 * 16) + 10 * 8
    assert flops.flops_per_token(m, 32) == 6 * matmuls + 6 * 2 * 32 * 2 * head_dim
    assert flops.peak_tflops("TPU v4") == 275.0 and flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops("cpu") is None and flops.peak_tflops("cpu", 2.0) == 2.0
