"""The LLaMA decoder in Flax Linen: RMSNorm pre-norm, RoPE, grouped-query attention, SwiGLU, tied or untied head.

The model names logical axes only ('batch', 'length', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp', 'vocab',
'layers', 'norm'); `trainer.sharding` maps them onto the mesh from the config's rules.

Parameter tree (with `scan_layers`, every layer's parameters are stacked under `layers` with a leading layer axis;
without it they live under `layers_0`, `layers_1`, ...):
    embed/embedding [vocab, embed]
    layers/attention_norm/scale [embed]        layers/mlp_norm/scale [embed]
    layers/attention/{query,key,value}/kernel [embed, heads|kv_heads, head_dim]
    layers/attention/out/kernel [heads, head_dim, embed]
    layers/mlp/{gate,up}/kernel [embed, mlp]   layers/mlp/down/kernel [mlp, embed]
    final_norm/scale [embed]                   lm_head/kernel [embed, vocab] (untied only)
RoPE rotates the two halves of each head (Hugging Face's layout), so q/k weights export without a permutation.

`Transformer(config, decode=True)` is the same model for autoregressive decoding: every attention layer keeps its
keys and values in the `cache` collection (`trainer.model.cache`); call it with `mutable=["cache"]`, explicit
positions and segment ids (0 marks left padding) — first on a prompt batch, then one token per step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from trainer.config import ModelConfig
from trainer.model import lora
from trainer.model.attention import attend
from trainer.model.cache import KVCache, cached_attention
from trainer.model.matmul import contract
from trainer.model.rope import apply_rope

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


def _init(config: ModelConfig, axes: tuple[str, ...]) -> Any:
    return nn.with_logical_partitioning(nn.initializers.normal(config.init_std), axes)


class Projection(nn.Module):
    """A bias-free linear map contracting the last `in_dims` axes of x with a kernel [*in, *features].

    Written by hand because Flax's DenseGeneral initialises a flattened kernel, which breaks logical partitioning
    of multi-axis kernels such as [embed, heads, head_dim].
    """

    config: ModelConfig
    features: tuple[int, ...]
    axes: tuple[str, ...]  # logical names of the kernel's axes
    in_dims: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        shape = tuple(x.shape[-self.in_dims :]) + tuple(self.features)
        kernel = self.param("kernel", _init(c, self.axes), shape, _dtype(c.param_dtype))
        dtype = _dtype(c.compute_dtype)
        y = contract(x.astype(dtype), kernel.astype(dtype), self.in_dims)
        delta = lora.adapter(self, c, x, self.in_dims, self.features, self.axes)  # None unless model.lora names it
        return y if delta is None else y + delta


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` reuses it as the output head when embeddings are tied."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        self.embedding = self.param(
            "embedding", _init(c, ("vocab", "embed")), (c.vocab_size, c.embed_dim), _dtype(c.param_dtype)
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        # Gather from a table whole along `embed` (FSDP gathers weights before use anyway): a lookup into an
        # embed-sharded table makes XLA replicate the activations instead.
        table = nn.with_logical_constraint(self.embedding, ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(_dtype(self.config.compute_dtype))

    def attend(self, x: jax.Array) -> jax.Array:
        dtype = _dtype(self.config.compute_dtype)
        return jnp.einsum("ble,ve->blv", x.astype(dtype), self.embedding.astype(dtype))


class RMSNorm(nn.Module):
    """Root-mean-square layer norm computed in fp32, with a learned scale."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # flax types param() as its initializer's LogicallyPartitioned box; linen returns the unboxed array
        scale: jax.Array = self.param(  # type: ignore[assignment]
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            _dtype(self.config.param_dtype),
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.config.norm_eps)
        return (normed.astype(x.dtype) * scale.astype(x.dtype)).astype(_dtype(self.config.compute_dtype))


class Attention(nn.Module):
    """Grouped-query causal self-attention with RoPE; never attends across segments (packed documents)."""

    config: ModelConfig
    decode: bool = False  # attend over a KV cache of `cache_length` slots (see trainer.model.cache)
    cache_length: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        c = self.config
        head_dim = c.resolved_head_dim
        q = Projection(c, (c.num_heads, head_dim), ("embed", "heads", "head_dim"), name="query")(x)
        k = Projection(c, (c.num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="key")(x)
        v = Projection(c, (c.num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="value")(x)
        q = nn.with_logical_constraint(apply_rope(q, positions, c), ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(apply_rope(k, positions, c), ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
        if self.decode:
            assert segment_ids is not None  # Transformer refuses to decode without them
            keys, values, mask = KVCache(self.cache_length, name="cache")(k, v, segment_ids)
            out = cached_attention(q, keys, values, mask)
        else:
            out = attend(q, k, v, segment_ids, c.attention)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        return Projection(c, (c.embed_dim,), ("heads", "head_dim", "embed"), in_dims=2, name="out")(out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        gate = Projection(c, (c.mlp_dim,), ("embed", "mlp"), name="gate")(x)
        up = Projection(c, (c.mlp_dim,), ("embed", "mlp"), name="up")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Projection(c, (c.embed_dim,), ("mlp", "embed"), name="down")(hidden)


class DecoderLayer(nn.Module):
    """One pre-norm transformer layer; returns (x, None) so that it can be scanned."""

    config: ModelConfig
    decode: bool = False
    cache_length: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None) -> tuple[jax.Array, None]:
        attention = Attention(self.config, self.decode, self.cache_length, name="attention")
        x = x + attention(RMSNorm(self.config, name="attention_norm")(x), positions, segment_ids)
        x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class Transformer(nn.Module):
    """The decoder: tokens [batch, length] → logits [batch, length, vocab] (compute dtype).

    With `decode`, attention reads and extends the KV cache (`cache_length` slots, default `max_seq_len`).
    """

    config: ModelConfig
    decode: bool = False
    cache_length: int | None = None

    @nn.compact
    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        c = self.config
        if self.decode and (positions is None or segment_ids is None):
            raise ValueError("decoding needs explicit positions and segment ids (0 = padding)")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        embed = Embed(c, name="embed")
        x = nn.with_logical_constraint(embed(tokens), ("batch", "length", "embed"))

        layer = DecoderLayer
        cache_length = self.cache_length or c.max_seq_len
        if c.remat_policy != "none" and not self.decode:
            layer = nn.remat(layer, prevent_cse=not c.scan_layers, policy=REMAT_POLICIES[c.remat_policy])
        if c.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(c, self.decode, cache_length, name="layers")(x, positions, segment_ids)
        else:
            for i in range(c.num_layers):
                x, _ = layer(c, self.decode, cache_length, name=f"layers_{i}")(x, positions, segment_ids)

        x = RMSNorm(c, name="final_norm")(x)
        if c.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Projection(c, (c.vocab_size,), ("embed", "vocab"), name="lm_head")(x)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
