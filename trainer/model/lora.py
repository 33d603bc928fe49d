"""LoRA: low-rank adapters on named projections, W x + (alpha/rank)·B(A(dropout(x))), with the base weights frozen.

A projection named in `model.lora.targets` (query, key, value, out, gate, up, down) gets two parameters beside its
`kernel` [*in, *out]: `lora_a` [*in, rank] (normal init, std 1/rank as PEFT's default Kaiming-uniform scale gives
about) and `lora_b` [rank, *out] (zeros), so a fresh adapter changes nothing. Their logical axes are the kernel's
(the rank axis unsharded), so adapters shard on any mesh like their base weight, and with `scan_layers` they are
stacked on the layer axis like every other layer parameter.

Training keeps the two halves apart: the train state holds only the adapters (`split`), the base params are passed
to the step separately and never differentiated, so gradients, optimizer state and checkpoints are adapter-sized.
`merge` folds adapters into plain weights (W + (alpha/rank)·A·B) for exports; `peft_tensors` names them as PEFT does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from trainer.config import LoraConfig, ModelConfig

ADAPTER_NAMES = ("lora_a", "lora_b")
# Our projection name → (path inside a layer, PEFT/HF module name)
TARGETS = {
    "query": (("attention", "query"), "self_attn.q_proj"),
    "key": (("attention", "key"), "self_attn.k_proj"),
    "value": (("attention", "value"), "self_attn.v_proj"),
    "out": (("attention", "out"), "self_attn.o_proj"),
    "gate": (("mlp", "gate"), "mlp.gate_proj"),
    "up": (("mlp", "up"), "mlp.up_proj"),
    "down": (("mlp", "down"), "mlp.down_proj"),
}


def enabled(config: ModelConfig) -> bool:
    """Whether the model carries adapters."""
    return config.lora.rank > 0


def scale(lora: LoraConfig) -> float:
    """alpha / rank: the adapters' output multiplier."""
    return lora.alpha / lora.rank


def adapter(
    module: nn.Module, config: ModelConfig, x: jax.Array, in_dims: int, features: tuple[int, ...], axes: tuple[str, ...]
) -> jax.Array | None:
    """Inside a projection named in the targets: its adapters' contribution (alpha/rank)·B(A(dropout(x))), in the
    compute dtype; None for other projections. Dropout runs only when a 'dropout' rng is given (training)."""
    lora = config.lora
    if lora.rank <= 0 or module.name not in lora.targets:
        return None
    in_shape = tuple(x.shape[-in_dims:])
    dtype = jnp.dtype(config.param_dtype)
    # flax types `param` as the boxed initializer it was given; inside the module it is the unboxed array
    a: jax.Array = module.param(  # type: ignore[assignment]
        "lora_a",
        nn.with_logical_partitioning(nn.initializers.normal(1.0 / lora.rank), axes[:in_dims] + (None,)),
        in_shape + (lora.rank,),
        dtype,
    )
    b: jax.Array = module.param(  # type: ignore[assignment]
        "lora_b",
        nn.with_logical_partitioning(nn.initializers.zeros, (None,) + axes[in_dims:]),
        (lora.rank,) + tuple(features),
        dtype,
    )
    if lora.dropout > 0 and module.has_rng("dropout"):
        x = nn.Dropout(lora.dropout, name="lora_dropout")(x, deterministic=False)
    compute = jnp.dtype(config.compute_dtype)
    contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    low = jax.lax.dot_general(x.astype(compute), a.astype(compute), (contract, ((), ())))
    up = jax.lax.dot_general(low, b.astype(compute), (((low.ndim - 1,), (0,)), ((), ())))
    return (up * scale(lora)).astype(compute)


def split(params: Any) -> tuple[Any, Any]:
    """A full params tree → (base: every leaf but the adapters, adapters: only `lora_a` / `lora_b`), as nested dicts."""
    return _filter(params, keep_adapters=False), _filter(params, keep_adapters=True)


def _filter(tree: Any, keep_adapters: bool) -> Any:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            sub = _filter(value, keep_adapters)
            if sub:
                out[key] = sub
        elif (key in ADAPTER_NAMES) == keep_adapters:
            out[key] = value
    return out


def combine(base: Any, adapters: Any) -> Any:
    """The full params tree the model applies: base and adapter leaves side by side."""
    out = dict(base)
    for key, value in adapters.items():
        out[key] = combine(out.get(key, {}), value) if hasattr(value, "items") else value
    return out


def count(tree: Any) -> int:
    """Number of scalars in a tree."""
    return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree))


def _layer_blocks(params: dict[str, Any]) -> Iterator[tuple[dict[str, Any], bool]]:
    """Each layer's dict (with scan: the one stacked dict) and whether it carries a leading layer axis."""
    if "layers" in params:
        yield params["layers"], True
    else:
        for key in sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k.split("_")[1])):
            yield params[key], False


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    for key in path:
        if not hasattr(tree, "items") or key not in tree:
            return None
        tree = tree[key]
    return tree


def _flat_factors(a: np.ndarray, b: np.ndarray, name: str, stacked: bool) -> tuple[np.ndarray, np.ndarray]:
    """A [L?, *in, r] and B [L?, r, *out] → [L?, in_flat, r] and [L?, r, out_flat] (float32)."""
    lead = a.shape[:1] if stacked else ()
    a2 = np.asarray(a, np.float32).reshape(lead + (-1, a.shape[-1]))
    b2 = np.asarray(b, np.float32).reshape(lead + (b.shape[len(lead)], -1))
    return a2, b2


def merge(params: dict[str, Any], lora: LoraConfig) -> dict[str, Any]:
    """Numpy params with adapters → plain params: every adapted kernel W becomes W + (alpha/rank)·A·B (in float32,
    cast back to W's dtype); adapter leaves dropped. What `convert_to_hf --merge-lora` exports."""
    out, _ = split(params)  # fresh dicts all the way down: the kernels below are replaced in it, not in params
    for block, stacked in _layer_blocks(params):
        for name in lora.targets:
            module = _lookup(block, TARGETS[name][0])
            if module is None or "lora_a" not in module:
                continue
            a2, b2 = _flat_factors(module["lora_a"], module["lora_b"], name, stacked)
            kernel = np.asarray(module["kernel"])
            delta = (a2 @ b2).reshape(kernel.shape) * scale(lora)
            merged = (kernel.astype(np.float32) + delta).astype(kernel.dtype)
            target = out["layers"] if stacked else out[_layer_key(params, block)]
            for key in TARGETS[name][0]:
                target = target[key]
            target["kernel"] = merged
    return out


def _layer_key(params: dict[str, Any], block: dict[str, Any]) -> str:
    return next(k for k, v in params.items() if v is block)


def peft_tensors(params: dict[str, Any], lora: LoraConfig) -> dict[str, np.ndarray]:
    """The adapters under PEFT's names for a LlamaForCausalLM: `base_model.model.model.layers.N.<module>.lora_A.weight`
    [rank, in] and `lora_B.weight` [out, rank], so that lora_B @ lora_A equals our A·B transposed as HF's Linear
    weight [out, in] is our kernel reshaped and transposed (trainer.export.mapping)."""
    tensors = {}
    for index, (block, stacked) in enumerate(_layer_blocks(params)):
        for name in lora.targets:
            module = _lookup(block, TARGETS[name][0])
            if module is None or "lora_a" not in module:
                continue
            a2, b2 = _flat_factors(module["lora_a"], module["lora_b"], name, stacked)
            layers = range(a2.shape[0]) if stacked else [index]
            for i in layers:
                a_i, b_i = (a2[i], b2[i]) if stacked else (a2, b2)
                prefix = f"base_model.model.model.layers.{i}.{TARGETS[name][1]}"
                tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
                tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
    return tensors


def peft_config(lora: LoraConfig, base_model: str) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA adapter for these adapters."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "bias": "none",
        "target_modules": sorted(TARGETS[name][1].split(".")[-1] for name in lora.targets),
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
