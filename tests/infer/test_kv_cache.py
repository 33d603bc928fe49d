"""The model decoding with its KV cache: cached logits equal the full forward pass at every position, greedy tokens
equal transformers' `generate` (greedy, fp32, its own KV cache) on the exported model for 64 new tokens across the
seed architectures, and a batch of prompts of different lengths gives each row the tokens it gets alone — with the
params sharded over the 8-device mesh."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
import torch
from hf_models import ARCHITECTURES, export, random_params

from trainer import sharding
from trainer.config import Config, MeshConfig, ModelConfig
from trainer.export import parity
from trainer.infer.decode import Generator
from trainer.model.transformer import Transformer
from trainer.step import abstract_params

NEW_TOKENS = 64
# |cached − full| / max|full logit|, both fp32: the same sums in another order (measured ~3e-7)
CACHE_TOLERANCE = 1e-5


def sharded(config: Config, params: dict) -> tuple:
    """The mesh of `config` over the 8 test devices and `params` placed in the shardings training would give them."""
    mesh = sharding.make_mesh(config.mesh)
    target = abstract_params(config, mesh)
    return mesh, jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), params, target)


@pytest.mark.parametrize("scan", [True, False])
def test_cached_decoding_equals_the_full_forward_pass_at_every_position(scan):
    model = ModelConfig(
        vocab_size=256,
        embed_dim=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=128,
        max_seq_len=48,
        compute_dtype="float32",
        remat_policy="full",
        scan_layers=scan,
    )
    tokens = np.random.default_rng(0).integers(0, model.vocab_size, (2, 40)).astype(np.int32)
    params = random_params(model)
    full = np.asarray(Transformer(model).apply({"params": params}, tokens))
    # decoding attends over the cache with plain XLA whatever the training kernel (cuDNN, Splash: absent on CPU)
    kernel = dataclasses.replace(model, attention="splash" if scan else "cudnn")
    apply = jax.jit(functools.partial(Transformer(kernel, decode=True).apply, mutable=["cache"]))
    positions = np.broadcast_to(np.arange(40, dtype=np.int32), tokens.shape)
    ones = np.ones_like(tokens)
    prefill, variables = apply({"params": params}, tokens[:, :9], positions[:, :9], ones[:, :9])
    steps = [np.asarray(prefill)]
    for t in range(9, 40):
        logits, variables = apply(
            {"params": params, "cache": variables["cache"]},
            tokens[:, t : t + 1],
            positions[:, t : t + 1],
            ones[:, t : t + 1],
        )
        steps.append(np.asarray(logits))
    cached = np.concatenate(steps, axis=1)
    relative = np.abs(cached - full).max() / np.abs(full).max()
    print(f"scan={scan}: max |cached - full| = {relative:.2e} x logit scale")
    assert relative <= CACHE_TOLERANCE
    assert "cache" not in Transformer(model).init(jax.random.key(0), tokens[:, :4])


def prompts_for(vocab: int, lengths=(7, 12, 3, 9)) -> list[list[int]]:
    return [parity.sample_tokens(vocab, 1, n, seed=n)[0].tolist() for n in lengths]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_greedy_tokens_equal_transformers_generate(name, tmp_path):
    model = dataclasses.replace(
        ARCHITECTURES[name],
        compute_dtype="float32",
        remat_policy="none",
        max_seq_len=max(ARCHITECTURES[name].max_seq_len, 96),
    )
    params = random_params(model, seed=1)
    export(model, params, str(tmp_path))
    hf = parity.load_hf_model(str(tmp_path))
    config = Config(model=model, mesh=MeshConfig(data=2, fsdp=4))
    mesh, placed = sharded(config, params)
    prompts = prompts_for(model.vocab_size, (7, 12))
    # CPUs decode unrolled by default (scanned params are unstacked); the tiny config decodes through the layer scan
    ours = Generator(config, mesh, placed, unroll=name != "tiny").generate(prompts, NEW_TOKENS)
    for prompt, result in zip(prompts, ours):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            )
        assert result.tokens == out[0, len(prompt) :].tolist()
        assert result.finish_reason == "length" and len(result.logprobs) == NEW_TOKENS


def test_a_batch_of_prompts_of_different_lengths_gives_each_row_its_tokens_alone():
    model = dataclasses.replace(ARCHITECTURES["gqa14x2"], max_seq_len=96)  # unrolled layers, GQA 14/2
    params = random_params(model, seed=2)
    config = Config(model=model, mesh=MeshConfig(data=1, fsdp=4, tensor=2))
    mesh, placed = sharded(config, params)
    generator = Generator(config, mesh, placed)
    prompts = prompts_for(model.vocab_size, (7, 19, 3, 9))
    together = generator.generate(prompts, NEW_TOKENS)
    for prompt, row in zip(prompts, together):
        alone = generator.generate([prompt], NEW_TOKENS)[0]
        assert row.tokens == alone.tokens
        np.testing.assert_allclose(row.logprobs, alone.logprobs, atol=1e-4)
