"""Our parameters ↔ a Hugging Face `LlamaForCausalLM` state dict, and `ModelConfig` ↔ `LlamaConfig`.

Pure functions, one tensor at a time, on numpy arrays (no torch). Torch `Linear` weights are [out, in]; ours are
[in, out] with the head axes split out, so every projection is a reshape and a transpose:

    embed/embedding [vocab, embed]                 model.embed_tokens.weight [vocab, embed]
    attention/query/kernel [embed, heads, hd]      model.layers.N.self_attn.q_proj.weight [heads·hd, embed]
    attention/{key,value}/kernel [embed, kv, hd]   ...k_proj / v_proj.weight [kv·hd, embed]
    attention/out/kernel [heads, hd, embed]        ...o_proj.weight [embed, heads·hd]
    mlp/{gate,up}/kernel [embed, mlp]              ...mlp.gate_proj / up_proj.weight [mlp, embed]
    mlp/down/kernel [mlp, embed]                   ...mlp.down_proj.weight [embed, mlp]
    attention_norm / mlp_norm / final_norm scale   input_layernorm / post_attention_layernorm / model.norm
    lm_head/kernel [embed, vocab] (untied)         lm_head.weight [vocab, embed]

Our RoPE rotates the two halves of each head, as HF's does, so q/k need no permutation here (GGUF needs one:
see `trainer.gguf_export`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from trainer.config import ModelConfig, RopeScalingConfig
from trainer.errors import MappingError
from trainer.model import rope

# (our path inside a layer, HF name inside `model.layers.N.`)
_LAYER_TENSORS = (
    (("attention_norm", "scale"), "input_layernorm.weight"),
    (("attention", "query", "kernel"), "self_attn.q_proj.weight"),
    (("attention", "key", "kernel"), "self_attn.k_proj.weight"),
    (("attention", "value", "kernel"), "self_attn.v_proj.weight"),
    (("attention", "out", "kernel"), "self_attn.o_proj.weight"),
    (("mlp_norm", "scale"), "post_attention_layernorm.weight"),
    (("mlp", "gate", "kernel"), "mlp.gate_proj.weight"),
    (("mlp", "up", "kernel"), "mlp.up_proj.weight"),
    (("mlp", "down", "kernel"), "mlp.down_proj.weight"),
)


# ---------------------------------------------------------------------------------------------- configs


def llama_config(
    model: ModelConfig, *, bos_id: int | None, eos_id: int | None, pad_id: int | None, dtype: str = "float32"
) -> Any:
    """The `LlamaConfig` that describes `model` (every architecture field explicit, so no HF default leaks in)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=model.vocab_size,
        hidden_size=model.embed_dim,
        intermediate_size=model.mlp_dim,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_kv_heads,
        head_dim=model.resolved_head_dim,
        hidden_act="silu",
        max_position_embeddings=model.max_seq_len,
        rms_norm_eps=model.norm_eps,
        rope_parameters=rope_parameters(model),
        tie_word_embeddings=model.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype=dtype,
    )
    return with_legacy_rope_keys(config)


def with_legacy_rope_keys(config: Any) -> Any:
    """Also write RoPE as the top-level `rope_theta` (and `rope_scaling` for a scaled type) beside `rope_parameters`.

    transformers 5 reads `rope_parameters`; mlx-lm and older readers read only the legacy keys (mlx-lm 0.32 silently
    falls back to θ = 10000 without them).
    """
    params = dict(config.rope_parameters or {})
    config.rope_theta = float(params["rope_theta"])
    if params.get("rope_type", "default") != "default":
        # transformers 5's `rope_scaling` is a property aliasing `rope_parameters` (setting it replaces them, and it
        # is never saved): the legacy dict goes straight into the instance's __dict__, which `to_dict` serialises.
        # `type` too: transformers before 4.45 (and readers written against it) look for that name.
        legacy = {k: v for k, v in params.items() if k not in ("rope_theta", "type")}
        config.__dict__["rope_scaling"] = {"type": legacy["rope_type"], **legacy}
    return config


def rope_parameters(model: ModelConfig) -> dict[str, Any]:
    """transformers 5's `rope_parameters` for `model.rope_scaling`; ntk is the default type with its θ' (exactly
    what static NTK-aware scaling is), every other type has transformers' type of the same name."""
    r = model.rope_scaling
    if r.type in ("none", "ntk"):
        return {"rope_type": "default", "rope_theta": rope.effective_theta(model)}
    params: dict[str, Any] = {"rope_type": r.type, "rope_theta": float(model.rope_theta), "factor": float(r.factor)}
    if r.type in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = rope.original_max_seq_len(model)
    if r.type == "yarn":
        params.update(beta_fast=float(r.beta_fast), beta_slow=float(r.beta_slow))
        if r.attention_factor is not None:
            params["attention_factor"] = float(r.attention_factor)
            if r.factor > 1:  # the same factor as DeepSeek's `mscale` (0.1·mscale·ln s + 1), all mlx-lm reads
                params["mscale"] = (float(r.attention_factor) - 1.0) / (0.1 * math.log(r.factor))
    if r.type == "llama3":
        params.update(low_freq_factor=float(r.low_freq_factor), high_freq_factor=float(r.high_freq_factor))
    return params


def rope_scaling_from_hf(params: dict[str, Any], max_position_embeddings: int) -> RopeScalingConfig:
    """Our `model.rope_scaling` from transformers' rope parameters (as transformers reads them); refuses a type or
    an option whose frequencies we don't compute, naming it."""
    kind = params.get("rope_type") or params.get("type") or "default"
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise MappingError(
            f"partial_rotary_factor={params['partial_rotary_factor']} is not supported: "
            "trainer.model rotates the whole head"
        )
    if kind == "default":
        return RopeScalingConfig()
    if kind not in ("linear", "yarn", "llama3"):
        why = " (it changes the frequencies with the input length at run time)" if kind == "dynamic" else ""
        raise MappingError(
            f"RoPE scaling {kind!r} is not supported{why}: trainer.model computes none, linear, "
            "yarn and llama3 (and static NTK as a plain rope_theta)"
        )
    original = params.get("original_max_position_embeddings") or max_position_embeddings
    factor = params.get("factor")
    if factor is None and kind == "yarn":  # transformers: the ratio of the contexts
        factor = max_position_embeddings / original
    if factor is None:
        raise MappingError(f"RoPE scaling {kind!r} has no factor: config.json is incomplete")
    if kind == "linear":
        return RopeScalingConfig(type="linear", factor=float(factor))
    if kind == "llama3":
        low, high = params.get("low_freq_factor"), params.get("high_freq_factor")
        if low is None or high is None:
            raise MappingError(
                "RoPE scaling 'llama3' needs low_freq_factor and high_freq_factor: config.json is incomplete"
            )
        return RopeScalingConfig(
            type="llama3",
            factor=float(factor),
            original_max_seq_len=int(original),
            low_freq_factor=float(low),
            high_freq_factor=float(high),
        )
    if params.get("truncate", True) is False:
        raise MappingError(
            "yarn with truncate=false is not supported: trainer.model rounds the ramp's bounds to "
            "whole dimensions (transformers' default)"
        )
    attention = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention is None and mscale and mscale_all_dim and factor > 1:  # transformers' DeepSeek form, made explicit
        attention = (0.1 * mscale * math.log(factor) + 1) / (0.1 * mscale_all_dim * math.log(factor) + 1)
    return RopeScalingConfig(
        type="yarn",
        factor=float(factor),
        original_max_seq_len=int(original),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=None if attention is None else float(attention),
    )


def model_config(hf: Any, base: ModelConfig | None = None) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face LLaMA config (a `LlamaConfig` or its dict); refuses what we can't run.

    Fields HF has no notion of (dtypes, remat, scan, attention kernel) come from `base` (default: ModelConfig()).
    """
    get = hf.get if isinstance(hf, dict) else (lambda key, default=None: getattr(hf, key, default))
    model_type = get("model_type")
    if model_type != "llama":
        raise MappingError(f"model_type {model_type!r} is not supported: only LLaMA ('llama') checkpoints convert")
    for key, expected in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if get(key, expected) != expected:
            raise MappingError(f"{key}={get(key)!r} is not supported: trainer.model needs {key}={expected!r}")
    # transformers reads the legacy `rope_scaling` first when a config.json has both, and so do we
    rope_params = dict(get("rope_scaling") or get("rope_parameters") or {})
    theta = rope_params.get("rope_theta") or get("rope_theta") or 10000.0
    scaling = rope_scaling_from_hf(rope_params, get("max_position_embeddings"))
    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // heads
    base = base or ModelConfig()
    return dataclasses.replace(
        base,
        vocab_size=get("vocab_size"),
        embed_dim=get("hidden_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads") or heads,
        head_dim=None if head_dim * heads == get("hidden_size") else head_dim,
        mlp_dim=get("intermediate_size"),
        rope_theta=float(theta),
        rope_scaling=scaling,
        norm_eps=float(get("rms_norm_eps")),
        tie_embeddings=bool(get("tie_word_embeddings", False)),
        max_seq_len=get("max_position_embeddings"),
    )


# ---------------------------------------------------------------------------------------------- tensors


def hf_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name and its shape, in the order `to_hf` yields them (known before any tensor is converted)."""
    e, v, m, hd = model.embed_dim, model.vocab_size, model.mlp_dim, model.resolved_head_dim
    q, kv = model.num_heads * hd, model.num_kv_heads * hd
    per_layer = {
        "input_layernorm.weight": (e,),
        "post_attention_layernorm.weight": (e,),
        "self_attn.q_proj.weight": (q, e),
        "self_attn.k_proj.weight": (kv, e),
        "self_attn.v_proj.weight": (kv, e),
        "self_attn.o_proj.weight": (e, q),
        "mlp.gate_proj.weight": (m, e),
        "mlp.up_proj.weight": (m, e),
        "mlp.down_proj.weight": (e, m),
    }
    shapes = {"model.embed_tokens.weight": (v, e)}
    for i in range(model.num_layers):
        shapes.update({f"model.layers.{i}.{name}": per_layer[name] for _, name in _LAYER_TENSORS})
    shapes["model.norm.weight"] = (e,)
    if not model.tie_embeddings:
        shapes["lm_head.weight"] = (v, e)
    return shapes


def our_shapes(model: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every parameter path of one (unrolled) layer's worth plus the globals, with the shape the config implies."""
    e, hd, h, kv = model.embed_dim, model.resolved_head_dim, model.num_heads, model.num_kv_heads
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {
        ("embed", "embedding"): (model.vocab_size, e),
        ("final_norm", "scale"): (e,),
    }
    if not model.tie_embeddings:
        shapes[("lm_head", "kernel")] = (e, model.vocab_size)
    layer = {
        ("attention_norm", "scale"): (e,),
        ("mlp_norm", "scale"): (e,),
        ("attention", "query", "kernel"): (e, h, hd),
        ("attention", "key", "kernel"): (e, kv, hd),
        ("attention", "value", "kernel"): (e, kv, hd),
        ("attention", "out", "kernel"): (h, hd, e),
        ("mlp", "gate", "kernel"): (e, model.mlp_dim),
        ("mlp", "up", "kernel"): (e, model.mlp_dim),
        ("mlp", "down", "kernel"): (model.mlp_dim, e),
    }
    for path, shape in layer.items():
        shapes[("layers",) + path] = shape
    return shapes


def check_params(params: dict[str, Any], model: ModelConfig) -> None:
    """Fail with one line when `params` (scanned or unrolled) does not have the shapes `model` implies."""
    scanned = "layers" in params
    layers = {"layers"} if scanned else {f"layers_{i}" for i in range(model.num_layers)}
    expected_top = {"embed", "final_norm"} | layers | (set() if model.tie_embeddings else {"lm_head"})
    extra = sorted(set(params) - expected_top)
    if extra:
        raise MappingError(
            f"the checkpoint holds {', '.join(extra)}, which its config does not describe "
            f"(num_layers={model.num_layers}, tie_embeddings={model.tie_embeddings}): "
            "the checkpoint's config does not match its params"
        )
    for path, shape in our_shapes(model).items():
        if path[0] == "layers":
            if scanned:
                candidates = [(path, (model.num_layers,) + shape)]
            else:
                candidates = [((f"layers_{i}",) + path[1:], shape) for i in range(model.num_layers)]
        else:
            candidates = [(path, shape)]
        for where, want in candidates:
            got = _lookup(params, where)
            if got is None:
                raise MappingError(
                    f"the checkpoint has no parameter {'/'.join(where)}: it was not written by this "
                    "model (or its config's tie_embeddings / num_layers differ)"
                )
            if tuple(got.shape) != tuple(want):
                raise MappingError(
                    f"parameter {'/'.join(where)} has shape {tuple(got.shape)} but the config implies "
                    f"{tuple(want)}: the checkpoint's config does not match its params"
                )


def _lookup(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _layer(params: dict[str, Any], i: int) -> Callable[[tuple[str, ...]], np.ndarray]:
    """Accessor for layer i's tensors in either layout; slicing a stacked array is a view, not a copy."""
    if "layers" in params:
        return lambda path: np.asarray(_lookup(params["layers"], path))[i]
    return lambda path: np.asarray(_lookup(params[f"layers_{i}"], path))


def to_hf(params: dict[str, Any], model: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, array) in file order; arrays are views where possible (transposes are not contiguous)."""
    e, hd = model.embed_dim, model.resolved_head_dim
    yield "model.embed_tokens.weight", np.asarray(params["embed"]["embedding"])
    for i in range(model.num_layers):
        get = _layer(params, i)
        for path, name in _LAYER_TENSORS:
            w = get(path)
            if path[-1] == "scale":
                out = w
            elif path[1] == "out":
                out = w.reshape(model.num_heads * hd, e).T
            elif path[0] == "attention":
                out = w.reshape(e, -1).T
            else:
                out = w.T
            yield f"model.layers.{i}.{name}", out
    yield "model.norm.weight", np.asarray(params["final_norm"]["scale"])
    if not model.tie_embeddings:
        yield "lm_head.weight", np.asarray(params["lm_head"]["kernel"]).T


def from_hf(get: Callable[[str], np.ndarray], model: ModelConfig) -> dict[str, Any]:
    """Our parameter tree (layout per `model.scan_layers`) from a getter of HF tensors by name (e.g. safe_open)."""
    e, hd = model.embed_dim, model.resolved_head_dim
    expected = hf_shapes(model)

    def fetch(name: str) -> np.ndarray:
        w = np.asarray(get(name))
        if tuple(w.shape) != expected[name]:
            raise MappingError(f"tensor {name} has shape {tuple(w.shape)} but config.json implies {expected[name]}")
        return w

    params: dict[str, Any] = {
        "embed": {"embedding": np.ascontiguousarray(fetch("model.embed_tokens.weight"))},
        "final_norm": {"scale": np.ascontiguousarray(fetch("model.norm.weight"))},
    }
    if not model.tie_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(fetch("lm_head.weight").T)}
    for i in range(model.num_layers):
        layer: dict[str, Any] = {}
        for path, name in _LAYER_TENSORS:
            w = fetch(f"model.layers.{i}.{name}")
            if path[-1] == "scale":
                ours = w
            elif path[1] == "out":
                ours = w.T.reshape(model.num_heads, hd, e)
            elif path[0] == "attention":
                ours = w.T.reshape(e, -1, hd)
            else:
                ours = w.T
            node = layer
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = np.ascontiguousarray(ours)
        params[f"layers_{i}"] = layer
    if model.scan_layers:
        layers = [params.pop(f"layers_{i}") for i in range(model.num_layers)]
        params["layers"] = _stack(layers)
    return params


def _stack(trees: list[dict[str, Any]]) -> dict[str, Any]:
    """numpy twin of `trainer.model.stack_layers` (which would move every array onto a JAX device)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _stack([t[k] for t in trees]) for k in first}
    return np.stack(trees)
