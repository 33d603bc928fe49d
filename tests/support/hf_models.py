"""Small HF-LLaMA-shaped models for the export tests: each seed's architecture in miniature, random params in our
layout, the weights-and-config half of an export, and greedy decoding through ours and through transformers."""

import importlib.util
import os

import jax
import numpy as np
from flax import linen as nn

from trainer.config import ModelConfig, load_config
from trainer.export import hf, parity
from trainer.model.transformer import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None  # transformers' GGUF model loader needs it
# A small untied GQA model (float32, no remat): the subject of the tests that need one run of any model.
SMALL_MODEL = ModelConfig(
    vocab_size=512,
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=128,
    max_seq_len=64,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)
SMALL = dict(compute_dtype="float32", remat_policy="none", num_layers=2, max_seq_len=64)
ARCHITECTURES = {
    "tiny": load_config(os.path.join(REPO, "configs", "tiny.yml")).model,
    # KodaLite-1.3B's shape: GQA 32/8 heads of 64, untied
    "gqa32x8": ModelConfig(
        vocab_size=512,
        embed_dim=128,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=256,
        tie_embeddings=False,
        **SMALL,
    ),
    # auto-g-nano-1b's shape: 14/2 heads of 128, θ 500000, untied; unrolled layers
    "gqa14x2": ModelConfig(
        vocab_size=384,
        embed_dim=112,
        num_heads=14,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=224,
        rope_theta=500000.0,
        tie_embeddings=False,
        scan_layers=False,
        **SMALL,
    ),
    # SmallCoder / LiteLlama's shape: MHA, tied here
    "mha_tied": ModelConfig(
        vocab_size=256, embed_dim=64, num_heads=4, num_kv_heads=4, mlp_dim=128, tie_embeddings=True, **SMALL
    ),
}


class Ids:
    """The special ids a tokenizer would give (the mapping tests need no real tokenizer)."""

    kind, bos_id, eos_id, pad_id, end_of_turn_id = "none", 2, 3, 0, None


def random_params(model: ModelConfig, seed: int = 0) -> dict:
    """Random numpy params in the model's layout, with non-trivial norm scales and a clear logit spread."""
    shapes = jax.eval_shape(Transformer(model).init, jax.random.key(0), np.zeros((1, 4), np.int32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1.0 + 0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
        fan_in = {"'out'": model.num_heads * model.resolved_head_dim, "'down'": model.mlp_dim}
        std = (
            1.0
            if "embedding" in name
            else next((1 / np.sqrt(v) for k, v in fan_in.items() if k in name), 1 / np.sqrt(model.embed_dim))
        )
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, nn.unbox(shapes)["params"])


def export(model: ModelConfig, params: dict, out: str, dtype: str = "float32", max_shard: int = 2 * 10**9) -> None:
    """The weights and config part of `convert_to_hf` (no checkpoint, no tokenizer)."""
    hf.write_weights(out, model, params, dtype, max_shard)
    hf.write_metadata(out, model, Ids, dtype)


def greedy_ours(model: ModelConfig, params: dict, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy decoding by a full re-forward per token (causal: padding after the cursor changes nothing)."""
    apply = jax.jit(Transformer(parity.fp32_model(model, params)).apply)
    buf = np.zeros((1, len(prompt) + steps), np.int32)
    buf[0, : len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + steps):
        buf[0, t] = int(np.argmax(apply({"params": params}, buf)[0, t - 1]))
    return buf[0, len(prompt) :].tolist()


def greedy_hf(hf_model, prompt: np.ndarray, steps: int) -> list[int]:
    """The same loop through transformers."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(parity.hf_logits(hf_model, np.array([ids]))[0, -1])))
    return ids[len(prompt) :]
