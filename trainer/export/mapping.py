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
from typing import Any, Callable, Iterator

import numpy as np

from trainer.config import ModelConfig
from trainer.errors import MappingError

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


def llama_config(model: ModelConfig, *, bos_id: int | None, eos_id: int | None, pad_id: int | None,
                 dtype: str = "float32") -> Any:
    """The `LlamaConfig` that describes `model` (every architecture field explicit, so no HF default leaks in)."""
    from transformers import LlamaConfig

    return LlamaConfig(
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
        rope_parameters={"rope_type": "default", "rope_theta": float(model.rope_theta)},
        tie_word_embeddings=model.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype=dtype,
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
    rope = dict(get("rope_parameters") or {})
    scaling = get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise MappingError(f"RoPE scaling {rope_type!r} is not supported: trainer.model implements plain RoPE only")
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))
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
        "input_layernorm.weight": (e,), "post_attention_layernorm.weight": (e,),
        "self_attn.q_proj.weight": (q, e), "self_attn.k_proj.weight": (kv, e), "self_attn.v_proj.weight": (kv, e),
        "self_attn.o_proj.weight": (e, q),
        "mlp.gate_proj.weight": (m, e), "mlp.up_proj.weight": (m, e), "mlp.down_proj.weight": (e, m),
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
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {("embed", "embedding"): (model.vocab_size, e),
                                                       ("final_norm", "scale"): (e,)}
    if not model.tie_embeddings:
        shapes[("lm_head", "kernel")] = (e, model.vocab_size)
    layer = {
        ("attention_norm", "scale"): (e,), ("mlp_norm", "scale"): (e,),
        ("attention", "query", "kernel"): (e, h, hd), ("attention", "key", "kernel"): (e, kv, hd),
        ("attention", "value", "kernel"): (e, kv, hd), ("attention", "out", "kernel"): (h, hd, e),
        ("mlp", "gate", "kernel"): (e, model.mlp_dim), ("mlp", "up", "kernel"): (e, model.mlp_dim),
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
        raise MappingError(f"the checkpoint holds {', '.join(extra)}, which its config does not describe "
                           f"(num_layers={model.num_layers}, tie_embeddings={model.tie_embeddings}): "
                           "the checkpoint's config does not match its params")
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
                raise MappingError(f"the checkpoint has no parameter {'/'.join(where)}: it was not written by this "
                                   "model (or its config's tie_embeddings / num_layers differ)")
            if tuple(got.shape) != tuple(want):
                raise MappingError(f"parameter {'/'.join(where)} has shape {tuple(got.shape)} but the config implies "
                                   f"{tuple(want)}: the checkpoint's config does not match its params")


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

    params: dict[str, Any] = {"embed": {"embedding": np.ascontiguousarray(fetch("model.embed_tokens.weight"))},
                              "final_norm": {"scale": np.ascontiguousarray(fetch("model.norm.weight"))}}
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
