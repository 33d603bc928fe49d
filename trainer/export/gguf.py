"""Our parameters → a llama.cpp GGUF file (F16, BF16, Q8_0, Q4_0, or llama.cpp's K-quants) with tokenizer metadata,
and its read-back check.

Built on PyPI `gguf` (the writer, the name map, the quantizers and the vocab readers of llama.cpp's own converter).
Tensors go through the HF names of `trainer.hf_mapping`, then llama.cpp's names; q/k rows get the permutation HF's
convert_hf_to_gguf applies, because llama.cpp rotates adjacent pairs where HF (and we) rotate halves.
Norm scales stay F32, and a Q8_0 / Q4_0 file keeps rows whose width is not a multiple of 32 in F16 (as llama.cpp's
converter). Q4_K_M, Q5_K_M and Q6_K are made from an F16 file by llama.cpp's own quantizer (`gguf_quantize`).
The tokenizer (`gguf_vocab`) is written so llama.cpp splits text as training did; `tokenizer.ggml.add_bos_token` is
the data's BOS flag: without it llama.cpp prepends a BOS the model may never have seen.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any

import numpy as np

from trainer.config import ModelConfig
from trainer.errors import ConversionError
from trainer.export import gguf_llama_cpp, gguf_quantize, gguf_rope, gguf_vocab, mapping, parity

QUANT_NAMES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}  # written here, with `gguf`
GGUF_TYPES = (*QUANT_NAMES, *gguf_quantize.K_QUANTS)  # --gguf-type's choices
# GGML type → parity rounding kind (types our own writer stores)
KIND_OF = {"F32": "float32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0", "Q4_0": "q4_0"}


def _gguf() -> Any:
    import gguf

    return gguf


def gguf_names(model: ModelConfig) -> dict[str, str]:
    """HF tensor name → llama.cpp tensor name (`blk.N.attn_q.weight`, ...), from gguf's own name map."""
    gguf = _gguf()
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.num_layers)
    names = {}
    for name in mapping.hf_shapes(model):
        base, suffix = name.rsplit(".", 1)
        names[name] = f"{table.get_name(base)}.{suffix}"
    return names


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-rotation rows → llama.cpp's adjacent-pair rows (LlamaModel.permute in convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk` (what transformers' GGUF loader applies)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_if_permuted(name: str, model: ModelConfig) -> int | None:
    if name.endswith("q_proj.weight"):
        return model.num_heads
    if name.endswith("k_proj.weight"):
        return model.num_kv_heads
    return None


def tensor_type(shape: tuple[int, ...], gguf_type: str) -> Any:
    """The GGML type a tensor of `shape` is stored in for a `gguf_type` file."""
    q = _gguf().GGMLQuantizationType
    if len(shape) == 1:
        return q.F32
    if gguf_type in ("q8_0", "q4_0") and shape[-1] % 32:
        return q.F16
    return q[QUANT_NAMES[gguf_type]]


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    gguf = _gguf()
    if qtype == gguf.GGMLQuantizationType.F32:
        return math.prod(shape) * 4
    if qtype == gguf.GGMLQuantizationType.F16:
        return math.prod(shape) * 2
    return math.prod(gguf.quant_shape_to_byte_shape(shape, qtype))


def write_gguf(
    path: str,
    model: ModelConfig,
    params: dict[str, Any],
    tokenizer_dir: str,
    tokenizer: Any,
    gguf_type: str,
    name: str = "model",
    add_bos: bool = True,
) -> int:
    """Write the GGUF of `gguf_type` (a K-quant: an F16 file beside it, quantised by llama.cpp, then removed);
    returns the file's bytes."""
    if gguf_type not in gguf_quantize.K_QUANTS:
        return _write(path, model, params, tokenizer_dir, tokenizer, gguf_type, name, add_bos)
    gguf_quantize.check_installed(gguf_type)
    source = f"{path}.f16.tmp"
    try:
        _write(source, model, params, tokenizer_dir, tokenizer, "f16", name, add_bos)
        gguf_quantize.quantize(source, path, gguf_type)
    finally:
        if os.path.exists(source):
            os.remove(source)
    return os.path.getsize(path)


def _write(
    path: str,
    model: ModelConfig,
    params: dict[str, Any],
    tokenizer_dir: str,
    tokenizer: Any,
    gguf_type: str,
    name: str,
    add_bos: bool,
) -> int:
    """Write a GGUF our own writer makes (F16/BF16/Q8_0/Q4_0) tensor by tensor: tensor infos first, then each
    converted tensor; returns the file's bytes."""
    gguf = _gguf()
    gguf_rope.check_supported(model)
    shapes = mapping.hf_shapes(model)
    names = gguf_names(model)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(model.max_seq_len)
    writer.add_embedding_length(model.embed_dim)
    writer.add_block_count(model.num_layers)
    writer.add_feed_forward_length(model.mlp_dim)
    writer.add_head_count(model.num_heads)
    writer.add_head_count_kv(model.num_kv_heads)
    writer.add_key_length(model.resolved_head_dim)
    writer.add_value_length(model.resolved_head_dim)
    gguf_rope.add_rope(writer, model)
    writer.add_layer_norm_rms_eps(float(model.norm_eps))
    writer.add_vocab_size(model.vocab_size)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{QUANT_NAMES[gguf_type]}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    gguf_vocab.add_tokenizer(writer, tokenizer_dir, tokenizer, model.vocab_size, add_bos)
    types = {hf: tensor_type(shape, gguf_type) for hf, shape in shapes.items()}
    for hf, shape in shapes.items():
        writer.add_tensor_info(names[hf], shape, np.dtype(np.float32), _nbytes(shape, types[hf]), raw_dtype=types[hf])
    rope_freqs = gguf_rope.rope_freqs(model)
    if rope_freqs is not None:
        writer.add_tensor_info(gguf_rope.ROPE_FREQS, rope_freqs.shape, rope_freqs.dtype, rope_freqs.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for hf, w in mapping.to_hf(params, model):
        w = np.asarray(w, np.float32)
        heads = _heads_if_permuted(hf, model)
        if heads is not None:
            w = permute_qk(w, heads)
        if gguf_type == "f16" and np.max(np.abs(w)) > np.finfo(np.float16).max:
            raise ConversionError(f"{hf} exceeds the float16 range: use --gguf-type bf16 or q8_0")
        writer.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(w), types[hf]))
    if rope_freqs is not None:
        writer.write_tensor_data(rope_freqs)
    writer.close()
    return os.path.getsize(path)


def read_gguf(path: str, model: ModelConfig) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The file's tensors dequantized to fp32 under their HF names and layout, and each one's GGML type name."""
    gguf = _gguf()
    to_hf_name = {g: hf for hf, g in gguf_names(model).items()}
    tensors, types = {}, {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name == gguf_rope.ROPE_FREQS:  # not a weight: RoPE's scaling, checked by gguf_rope.check_rope
            continue
        hf = to_hf_name[t.name]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        heads = _heads_if_permuted(hf, model)
        tensors[hf] = unpermute_qk(w, heads) if heads is not None else w
        types[hf] = t.tensor_type.name
    return tensors, types


def check_gguf_weights(path: str, model: ModelConfig, params: dict[str, Any], gguf_type: str = "f16") -> dict[str, Any]:
    """Read the GGUF back: each tensor within its quantisation's bound of ours (for llama.cpp's K-quant mixes, within
    its type's relative error); returns the stored weights as params."""
    tensors, types = read_gguf(path, model)
    missing = sorted(set(mapping.hf_shapes(model)) - set(tensors))
    if missing:
        raise parity.ParityError(f"the GGUF lacks {missing[0]} (and {len(missing) - 1} more)")
    if gguf_type in gguf_quantize.K_QUANTS:
        gguf_quantize.check_weights(mapping.to_hf(params, model), tensors.__getitem__, types.__getitem__)
    else:
        parity.check_weights(mapping.to_hf(params, model), tensors.__getitem__, lambda n: KIND_OF[types[n]])
    return mapping.from_hf(tensors.__getitem__, dataclasses.replace(model, scan_layers="layers" in params))


def verify_gguf(
    folder: str,
    filename: str,
    model: ModelConfig,
    params: dict[str, Any],
    gguf_type: str,
    tokenizer: Any = None,
    add_bos: bool = True,
) -> str:
    """The weights and RoPE read back, then transformers' GGUF loader against ours on the stored weights (fp32), then
    — when llama-cpp-python is installed and `tokenizer` given — llama.cpp itself: tokenization, logits, greedy."""
    path = os.path.join(folder, filename)
    stored = check_gguf_weights(path, model, params, gguf_type)
    if importlib.util.find_spec("accelerate") is None:
        raise ConversionError(
            "the GGUF parity check loads the file with transformers, which needs accelerate: "
            "pip install accelerate (or pass --no-verify)"
        )
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    ours_stored = parity.jax_logits(model, stored, tokens)
    ours = parity.jax_logits(model, params, tokens)
    gguf_rope.check_rope(path, model)
    # transformers' GGUF loader reads no RoPE scaling for `llama`: it gets the config.json we would write, whose
    # scaling check_rope has just shown to be the one llama.cpp reads from the file
    config = None
    if model.rope_scaling.type in ("linear", "yarn", "llama3"):
        config = mapping.llama_config(model, bos_id=None, eos_id=None, pad_id=None)
    theirs = parity.hf_logits(parity.load_hf_model(folder, gguf_file=filename, config=config), tokens)
    exported, drift = parity.compare(ours_stored, theirs), parity.compare(ours, ours_stored)
    if gguf_type in gguf_quantize.K_QUANTS:
        report = parity.check_logits(exported) + "; " + gguf_quantize.check_drift(drift, gguf_type)
    else:
        report = parity.check_logits(exported, drift, gguf_type)
    if tokenizer is None:
        return report
    if not gguf_llama_cpp.available():
        return f"{report}; {gguf_llama_cpp.not_run()}"
    return f"{report}; " + gguf_llama_cpp.check_model(
        path, model, stored, ours_stored, tokens, tokenizer, add_bos, gguf_type
    )
