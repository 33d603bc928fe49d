"""A human (and JSON) summary of a job before it runs: parameters, memory per device, FLOPs, mesh, sharding."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from trainer import sharding
from trainer.config import Config
from trainer.model import flops


def _path(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _bytes_per_device(abstract: Any, mesh_shape: dict[str, int]) -> int:
    total = 0
    for leaf in jax.tree.leaves(abstract):
        spec = leaf.sharding.spec
        total += math.prod(sharding.shard_shape(leaf.shape, spec, mesh_shape)) * np.dtype(leaf.dtype).itemsize
    return total


def summarize(config: Config, abstract_state: Any, mesh_shape: dict[str, int]) -> tuple[str, dict[str, Any]]:
    """Text for a person and a dict for machines describing the model and how the state lands on the mesh."""
    params = abstract_state.params
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    fpt = flops.flops_per_token(config.model, config.train.seq_len)
    param_bytes = _bytes_per_device(params, mesh_shape)
    opt_bytes = _bytes_per_device(abstract_state.opt_state, mesh_shape)
    m = config.model
    lines = [
        f"model      {n_params:,} parameters ({n_params / 1e6:.1f}M): {m.num_layers} layers, width {m.embed_dim}, "
        f"{m.num_heads} heads / {m.num_kv_heads} kv heads × {m.resolved_head_dim}, MLP {m.mlp_dim}, "
        f"vocab {m.vocab_size}, {'tied' if m.tie_embeddings else 'untied'} embeddings, RoPE θ {m.rope_theta:g}",
        f"compute    params {m.param_dtype}, compute {m.compute_dtype}, attention {m.attention}, "
        f"remat {m.remat_policy}, scan_layers {m.scan_layers}",
        f"flops      {fpt / 1e9:.3f} GFLOP per token (train, seq_len {config.train.seq_len}); "
        f"{fpt * config.train.global_batch_size * config.train.seq_len / 1e12:.2f} TFLOP per step",
        "mesh       "
        + " × ".join(f"{k}={v}" for k, v in mesh_shape.items())
        + f" = {math.prod(mesh_shape.values())} devices",
        f"state      per device: params {param_bytes / 2**30:.3f} GiB + optimizer state {opt_bytes / 2**30:.3f} GiB "
        f"= {(param_bytes + opt_bytes) / 2**30:.3f} GiB. Not the peak: activations and compiler temporaries "
        "come on top (often the bulk); compile for the real per-chip peak with --target TPU_TYPE (e.g. v4-32)",
        f"batch      {config.train.global_batch_size} × {config.train.seq_len} tokens, "
        f"{config.train.microbatches} microbatch(es), split over {'×'.join(sharding.batch_axes(config)) or 'nothing'}",
        "sharding   (parameter: shape dtype → mesh axes per dimension)",
    ]
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        spec = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
        lines.append(f"  {_path(path):45s} {str(tuple(leaf.shape)):22s} {np.dtype(leaf.dtype).name:8s} {spec}")
    record = {
        "params": n_params,
        "flops_per_token": fpt,
        "mesh": mesh_shape,
        "bytes_per_device": {"params": param_bytes, "optimizer": opt_bytes},
        "tokens_per_step": config.train.global_batch_size * config.train.seq_len,
    }
    return "\n".join(lines), record
