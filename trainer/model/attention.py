"""Causal grouped-query attention kernels: plain XLA everywhere, cuDNN on GPUs, Splash (Pallas) on TPUs.

All take q [batch, length, heads, head_dim], k/v [batch, length, kv_heads, head_dim] and segment ids
[batch, length] (tokens attend only within their own segment, so packed documents never see each other)
and return [batch, length, heads, head_dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trainer.errors import ConfigError

IMPLEMENTATIONS = ("dot_product", "cudnn", "splash")


PLATFORM = {"dot_product": None, "cudnn": "gpu", "splash": "tpu"}


def attend(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, implementation: str) -> jax.Array:
    """Causal attention with the named kernel (call `check_available` first for a clear error off its backend)."""
    if implementation == "dot_product":
        return dot_product_attention(q, k, v, segment_ids)
    if implementation == "cudnn":
        return cudnn_attention(q, k, v, segment_ids)
    if implementation == "splash":
        return splash_attention(q, k, v, segment_ids)
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")


def check_available(implementation: str) -> None:
    """Refuse, in one line, a kernel that this run's backend can't execute (cuDNN off GPUs, Splash off TPUs)."""
    needed, actual = PLATFORM[implementation], jax.devices()[0].platform
    if needed is not None and actual != needed:
        raise ConfigError(
            f"model.attention={implementation} needs a {needed.upper()} but this run is on {actual}; "
            "use model.attention=dot_product"
        )


def causal_segment_mask(segment_ids: jax.Array | None, length: int) -> jax.Array:
    """[batch or 1, 1, q, k] boolean mask: key position ≤ query position and, with segments, the same segment."""
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None, None]
    if segment_ids is None:
        return causal
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return causal & same


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Reference attention in plain jnp; softmax in fp32. Query heads are grouped over the kv heads (GQA)."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    # Heads ahead of positions before the dots: XLA then transposes q, k, v and the output (a few times smaller)
    # instead of the [b, h, g, q, k] scores and their gradients (−13% of the small model's CPU step on jax 0.12).
    q = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)  # [b, h, g, q, d]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, h, k, d]
    scores = jnp.einsum("bhgqd,bhkd->bhgqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(head_dim).astype(np.float32)
    mask = causal_segment_mask(segment_ids, length)[:, :, None]  # [b, 1, 1, q, k]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bhkd->bhgqd", weights, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """cuDNN fused attention through `jax.nn.dot_product_attention` (GQA native; bf16/fp16 inputs)."""
    if segment_ids is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    mask = causal_segment_mask(segment_ids, q.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, interpret: bool = False
) -> jax.Array:
    """Splash attention (Pallas TPU kernel), run per shard with shard_map over the batch and head axes.

    The kernel takes one example's [heads, length, head_dim] (grouped kv heads natively) and a pre-scaled query.
    Batch and heads are split over their mesh axes only where those divide them: a batch of 1 (model init, sampling)
    or 14 heads on 4 devices run replicated along that axis instead of failing. Length is never split (the causal
    mask spans the whole sequence). When the query heads' split does not divide the kv heads, every query head gets
    its own copy of its kv head. `interpret` runs the kernel's reference interpreter (tests on CPU).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    batch, length, heads, head_dim = q.shape
    if segment_ids is None:
        segment_ids = jnp.ones((batch, length), jnp.int32)
    mesh = jax.sharding.get_abstract_mesh()
    batch_axes = _dividing_axes("batch", batch, mesh)
    head_axes = _dividing_axes("heads", heads, mesh)
    if k.shape[2] % _size(head_axes, mesh):
        k, v = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
    qkv_spec = jax.sharding.PartitionSpec(batch_axes, None, head_axes, None)
    seg_spec = jax.sharding.PartitionSpec(batch_axes, None)

    def local(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
        mask = masks.MultiHeadMask([masks.CausalMask((length, length)) for _ in range(q.shape[2])])
        block = next((b for b in (512, 256, 128) if length % b == 0), None)  # blocks must divide the sequence
        if block is None:
            raise ValueError(f"splash attention needs a sequence length that is a multiple of 128, got {length}")
        sizes = kernel.BlockSizes(
            block_q=block,
            block_kv_compute=block,
            block_kv=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        )
        splash = kernel.make_splash_mha(
            mask=mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
        )
        q = jnp.swapaxes(q, 1, 2) / np.sqrt(head_dim).astype(q.dtype)
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        seg = kernel.SegmentIds(q=segment_ids, kv=segment_ids)
        out = jax.vmap(lambda q, k, v, s: splash(q, k, v, segment_ids=s))(q, k, v, seg)
        return jnp.swapaxes(out, 1, 2)

    if mesh.empty:
        return local(q, k, v, segment_ids)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec), out_specs=qkv_spec, check_vma=False
    )(q, k, v, segment_ids)


def _size(axes: tuple[str, ...] | None, mesh: jax.sharding.AbstractMesh) -> int:
    return int(np.prod([mesh.shape[a] for a in axes or ()]))


def _dividing_axes(logical: str, size: int, mesh: jax.sharding.AbstractMesh) -> tuple[str, ...] | None:
    """The mesh axes the logical axis maps to (current rules), or None when they don't divide `size`."""
    from flax import linen as nn

    if mesh.empty:
        return None
    spec = nn.logical_to_mesh_axes((logical,))  # None only when given no names
    axes = None if spec is None else spec[0]
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    axes = tuple(a for a in axes if a in mesh.shape)
    return axes if axes and size % _size(axes, mesh) == 0 else None
