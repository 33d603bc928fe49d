"""The Hugging Face folder writer: config.json (LlamaConfig), model*.safetensors (+ index when sharded),
generation_config.json and the tokenizer (a SentencePiece model becomes a `LlamaTokenizerFast` that encodes
identically; an HF tokenizer folder is copied; a chat template is passed through), so `AutoModelForCausalLM` /
`AutoTokenizer.from_pretrained(DIR)` load it offline; and its parity check. The command that calls it is
`trainer.export.command` (`python -m trainer.convert_to_hf`); the MLX export writes the same folder first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from trainer.config import ModelConfig
from trainer.errors import ConversionError
from trainer.export import mapping, parity
from trainer.export.safetensors import SafetensorsFolder, plan_shards, write_safetensors
from trainer.export.tokenizer import check_tokenizer, write_tokenizer


def parse_size(text: str) -> int:
    """'2GB' / '500MB' / '1GiB' / '123' → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    digits = t.rstrip("KMGIB")
    try:
        value = float(digits)
        unit = units[t[len(digits) :]]
    except (ValueError, KeyError):
        raise ConversionError(f"--max-shard-size {text!r} is not a size such as 2GB or 500MB") from None
    return int(value * unit)


def prepare_out_dir(out: str) -> None:
    """Create `out`, removing model files a previous export left there (tokenizer and config files are rewritten)."""
    if os.path.isdir(out):
        for name in os.listdir(out):
            if name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json", ".gguf")):
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)


def write_weights(
    out: str, model: ModelConfig, params: dict[str, Any], dtype: str, max_shard_bytes: int, progress: Any = None
) -> list[str]:
    """All safetensors files of the model (+ model.safetensors.index.json when there are several); their names."""
    shapes = mapping.hf_shapes(model)
    itemsize = 4 if dtype == "float32" else 2
    shards = plan_shards(shapes, itemsize, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    stream = iter(mapping.to_hf(params, model))
    total = 0
    for filename, members in zip(names, shards):
        part = {name: shapes[name] for name in members}
        tensors = (next(stream) for _ in members)
        total += write_safetensors(os.path.join(out, filename), part, tensors, dtype)
        if progress is not None:
            progress.update(sum(math.prod(s) for s in part.values()) * itemsize)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {name: filename for filename, members in zip(names, shards) for name in members},
        }
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    return names


def write_metadata(out: str, model: ModelConfig, tokenizer: Any, dtype: str) -> None:
    """config.json and generation_config.json: the stop id as `eos_token_id`, and a chat format's plain-text
    end-of-turn marker as `stop_strings` (transformers stops on it when `generate` is given `tokenizer=`)."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_id if tokenizer.end_of_turn_id is None else tokenizer.end_of_turn_id  # a chat model stops
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos, "pad_token_id": tokenizer.pad_id}  # at end of turn
    mapping.llama_config(
        model, bos_id=tokenizer.bos_id, eos_id=eos, pad_id=tokenizer.pad_id, dtype=dtype
    ).save_pretrained(out)
    stops = list(getattr(tokenizer, "stop_strings", ()))  # a chat marker kept as plain text (KodaLite's <|end|>):
    GenerationConfig(**ids, **({"stop_strings": stops} if stops else {})).save_pretrained(out)  # needs tokenizer=


def write_folder(
    out: str,
    model: ModelConfig,
    params: dict[str, Any],
    dtype: str,
    max_shard_bytes: int,
    tokenizer: Any,
    source: str,
    add_bos: bool,
) -> list[str]:
    """The whole HF folder: safetensors (with a progress bar), config.json, generation_config.json, tokenizer files."""
    from tqdm.auto import tqdm

    total_bytes = sum(math.prod(s) for s in mapping.hf_shapes(model).values()) * (4 if dtype == "float32" else 2)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="writing safetensors", disable=None) as bar:
        files = write_weights(out, model, params, dtype, max_shard_bytes, bar)
    write_metadata(out, model, tokenizer, dtype)
    write_tokenizer(tokenizer, source, out, add_bos)
    return files


def verify_hf(out: str, model: ModelConfig, params: dict[str, Any], dtype: str, tokenizer: Any) -> str:
    """The parity check of a written HF folder (see `trainer.parity`); returns the report line."""
    files = SafetensorsFolder(out)
    parity.check_weights(mapping.to_hf(params, model), files.__getitem__, lambda name: dtype)
    layout = dataclasses.replace(model, scan_layers="layers" in params)
    exported_params = mapping.from_hf(files.__getitem__, layout)
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    ours_exported = parity.jax_logits(model, exported_params, tokens)
    ours = ours_exported if dtype == "float32" else parity.jax_logits(model, params, tokens)
    theirs = parity.hf_logits(parity.load_hf_model(out), tokens)
    report = parity.check_logits(parity.compare(ours_exported, theirs), parity.compare(ours, ours_exported), dtype)
    check_tokenizer(tokenizer, out)
    return report
