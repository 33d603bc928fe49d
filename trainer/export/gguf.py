"""Our parameters → a llama.cpp GGUF file (F16, BF16, Q8_0 or Q4_0) with tokenizer metadata, and its read-back check.

Built on PyPI `gguf` (the writer, the name map, the quantizers and the vocab readers of llama.cpp's own converter).
Tensors go through the HF names of `trainer.hf_mapping`, then llama.cpp's names; q/k rows get the permutation HF's
convert_hf_to_gguf applies, because llama.cpp rotates adjacent pairs where HF (and we) rotate halves.
Norm scales stay F32, and a Q8_0 / Q4_0 file keeps rows whose width is not a multiple of 32 in F16 (as llama.cpp's
converter). `tokenizer.ggml.add_bos_token` comes from the data manifest: without it llama.cpp prepends a BOS the model
may never have seen.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ModelConfig
from trainer.errors import ConversionError
from trainer.export import gguf_rope, mapping, parity

QUANT_NAMES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
# GGML type → parity rounding kind
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


def _add_tokenizer(writer: Any, tokenizer_dir: str, tokenizer: Any, vocab_size: int, add_bos: bool) -> None:
    """Tokens, scores, types, merges, special ids, BOS/EOS flags and chat template, read from an HF tokenizer folder
    by gguf.vocab (the BOS flag from the data manifest, which transformers 5 no longer saves in the folder)."""
    gguf = _gguf()
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab, SpecialVocab

    path = Path(tokenizer_dir)
    vocab: Any = None
    for cls in (SentencePieceVocab, LlamaHfVocab, BpeVocab):
        try:
            vocab = cls(path)
            break
        except (FileNotFoundError, TypeError):
            continue
    if vocab is None:
        raise ConversionError("GGUF export supports SentencePiece, LLaMA-style and GPT-2-style BPE tokenizers only; "
                          "use --format hf for this tokenizer")
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    if len(tokens) > vocab_size:
        raise ConversionError(f"the tokenizer has {len(tokens)} tokens but model.vocab_size is {vocab_size}")
    for i in range(len(tokens), vocab_size):  # llama.cpp needs one token per embedding row
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        writer.add_tokenizer_pre("gpt2")
    else:
        writer.add_add_space_prefix(_adds_dummy_prefix(path))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = SpecialVocab(path, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=vocab_size)
    eos = tokenizer.eos_id if tokenizer.end_of_turn_id is None else tokenizer.end_of_turn_id  # chat: stop at end of turn
    ids = {"bos": tokenizer.bos_id, "eos": eos, "pad": tokenizer.pad_id}
    special.special_token_ids.update({k: v for k, v in ids.items() if v is not None})
    special.add_special_token.update({"bos": add_bos, "eos": False})
    special.add_to_gguf(writer, quiet=True)


def _adds_dummy_prefix(path: Path) -> bool:
    """Whether the SentencePiece model prepends a space (llama.cpp assumes it does unless told)."""
    model_file = path / "tokenizer.model"
    if not model_file.exists():
        return False
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def write_gguf(path: str, model: ModelConfig, params: dict[str, Any], tokenizer_dir: str, tokenizer: Any,
               gguf_type: str, name: str = "model", add_bos: bool = True) -> int:
    """Write the GGUF tensor by tensor (tensor infos first, then each converted tensor); returns the file's bytes."""
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
    _add_tokenizer(writer, tokenizer_dir, tokenizer, model.vocab_size, add_bos)
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
    """The file's tensors dequantized to fp32 under their HF names and layout, and each one's rounding kind."""
    gguf = _gguf()
    to_hf_name = {g: hf for hf, g in gguf_names(model).items()}
    tensors, kinds = {}, {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name == gguf_rope.ROPE_FREQS:  # not a weight: RoPE's scaling, checked by gguf_rope.check_rope
            continue
        hf = to_hf_name[t.name]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        heads = _heads_if_permuted(hf, model)
        tensors[hf] = unpermute_qk(w, heads) if heads is not None else w
        kinds[hf] = KIND_OF[t.tensor_type.name]
    return tensors, kinds


def check_gguf_weights(path: str, model: ModelConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Read the GGUF back: each tensor within its quantisation's bound of ours; returns the stored weights as params."""
    tensors, kinds = read_gguf(path, model)
    missing = sorted(set(mapping.hf_shapes(model)) - set(tensors))
    if missing:
        raise parity.ParityError(f"the GGUF lacks {missing[0]} (and {len(missing) - 1} more)")
    parity.check_weights(mapping.to_hf(params, model), tensors.__getitem__, kinds.__getitem__)
    return mapping.from_hf(tensors.__getitem__, dataclasses.replace(model, scan_layers="layers" in params))


def verify_gguf(folder: str, filename: str, model: ModelConfig, params: dict[str, Any], gguf_type: str) -> str:
    """The weights and RoPE read back, then transformers' GGUF loader against ours on the stored weights (fp32)."""
    stored = check_gguf_weights(os.path.join(folder, filename), model, params)
    if importlib.util.find_spec("accelerate") is None:
        raise ConversionError("the GGUF parity check loads the file with transformers, which needs accelerate: "
                          "pip install accelerate (or pass --no-verify)")
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    ours_stored = parity.jax_logits(model, stored, tokens)
    ours = parity.jax_logits(model, params, tokens)
    gguf_rope.check_rope(os.path.join(folder, filename), model)
    # transformers' GGUF loader reads no RoPE scaling for `llama`: it gets the config.json we would write, whose
    # scaling check_rope has just shown to be the one llama.cpp reads from the file
    config = None
    if model.rope_scaling.type in ("linear", "yarn", "llama3"):
        config = mapping.llama_config(model, bos_id=None, eos_id=None, pad_id=None)
    theirs = parity.hf_logits(parity.load_hf_model(folder, gguf_file=filename, config=config), tokens)
    return parity.check_logits(parity.compare(ours_stored, theirs), parity.compare(ours, ours_stored), gguf_type)
