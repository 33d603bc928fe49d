"""The key/value cache of autoregressive decoding, kept in Linen's `cache` collection.

A decoding model (`Transformer(config, decode=True)`) gives every attention layer a cache of `length` slots:
    cache/.../attention/cache/{key,value} [batch, kv_heads, length, head_dim]   (compute dtype)
    cache/.../attention/cache/segment_ids [batch, length]                       (0 = padding or empty)
    cache/.../attention/cache/index       []                                    (the next slot to write)
With `scan_layers` each leaf gets a leading layer axis, like the params. A call writes its n new keys/values at
`index` (a prompt batch at once, then one token per step) and attends over all `length` slots with a mask: a slot
is visible when it is at or before the query's slot and holds the query's segment. Prompts of different lengths
are left-padded with segment 0, so padding and real tokens never see each other and every row writes the same slot.
Slots come after the heads because that is the layout the attention dots read: stored as [batch, length, ...], XLA:CPU
copied every layer's whole cache into that layout at every step.

Training never calls this: without `decode` the model has no `cache` collection and its parameters are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


class KVCache(nn.Module):
    """Append n new keys/values (and their segment ids) at the cache index; return all slots and the query mask."""

    length: int  # slots: the longest prompt plus every token to be generated must fit

    @nn.compact
    def __call__(self, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        batch, new, kv_heads, head_dim = k.shape
        shape = (batch, kv_heads, self.length, head_dim)
        keys = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
        values = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
        segments = self.variable("cache", "segment_ids", jnp.zeros, (batch, self.length), jnp.int32)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))

        start = index.value
        zero = jnp.zeros((), jnp.int32)
        at = (zero, zero, start, zero)
        for cached, new_slots in ((keys, k), (values, v)):
            new_slots = jnp.swapaxes(new_slots, 1, 2).astype(cached.value.dtype)
            cached.value = nn.with_logical_constraint(
                jax.lax.dynamic_update_slice(cached.value, new_slots, at), CACHE_AXES
            )
        segments.value = jax.lax.dynamic_update_slice(segments.value, segment_ids.astype(jnp.int32), (zero, start))
        index.value = start + new

        query_slot = start + jnp.arange(new, dtype=jnp.int32)  # [new]
        causal = jnp.arange(self.length, dtype=jnp.int32)[None, :] <= query_slot[:, None]  # [new, length]
        same_segment = segment_ids[:, :, None] == segments.value[:, None, :]  # [batch, new, length]
        return keys.value, values.value, causal[None] & same_segment


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of q [batch, new, heads, head_dim] over cache slots k/v [batch, kv_heads, length,
    head_dim] under `mask` [batch, new, length]; softmax in fp32, like `attention.dot_product_attention`.

    Every attention implementation decodes through this: the fused kernels (cuDNN, Splash) want equal query and key
    lengths and a causal structure, while a decode step has one query against a partly filled cache.
    """
    batch, new, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(batch, new, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bqhgd,bhkd->bhgqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(head_dim).astype(np.float32)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bhkd->bqhgd", weights, v)
    return out.reshape(batch, new, heads, head_dim)
