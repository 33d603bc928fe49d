"""`python -m trainer.convert_to_hf --checkpoint RUN_DIR[:STEP] --out DIR`: a run's checkpoint → an HF folder.

Writes config.json (LlamaConfig), model*.safetensors (+ index when sharded), generation_config.json and the tokenizer
(a SentencePiece model becomes a `LlamaTokenizerFast` that encodes identically; an HF tokenizer folder is copied;
a chat template is passed through), so `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(DIR)` load it offline.
`--format gguf|mlx|onnx` writes a llama.cpp GGUF, an mlx-lm folder or an onnxruntime decoder instead
(`trainer.export.formats`). Then it checks parity in the format's own runtime (`--no-verify` skips it) and writes the
model card, README.md (`trainer.export.card`). Bad input: one line on stderr, exit 2; failed parity: exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

from trainer.config import ModelConfig
from trainer.data.bos import run_adds_bos
from trainer.errors import ConversionError, cli
from trainer.export import mapping, parity
from trainer.export.gguf import GGUF_TYPES
from trainer.export.safetensors import SafetensorsFolder, plan_shards, write_safetensors
from trainer.export.tokenizer import (
    check_tokenizer,
    find_tokenizer,
    write_tokenizer,
)

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m trainer.convert_to_hf",
                                description="Export a run's checkpoint as a Hugging Face LLaMA folder, a GGUF, an "
                                            "MLX folder or an ONNX decoder, with a model card.")
    p.add_argument("--checkpoint", required=True, help="run folder, optionally :STEP (default: the latest step)")
    p.add_argument("--out", required=True, help="output folder (local)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights dtype for hf and mlx (default: the checkpoint's param dtype, i.e. lossless); "
                        "onnx: float32 (default) or float16")
    p.add_argument("--format", choices=("hf", "gguf", "mlx", "onnx"), default="hf",
                   help="hf: a transformers folder (safetensors); gguf: one llama.cpp file; mlx: an mlx-lm folder; "
                        "onnx: an onnxruntime decoder with a KV cache (default: hf)")
    p.add_argument("--gguf-type", choices=GGUF_TYPES, default="f16",
                   help="with --format gguf; q4_k_m, q5_k_m and q6_k are made by llama.cpp's own quantizer "
                        '(pip install -e ".[llama]")')
    p.add_argument("--mlx-bits", type=int, choices=(8, 4), default=None,
                   help="with --format mlx: quantise with mlx-lm to 8 or 4 bits (groups of 64; default: none)")
    p.add_argument("--license", default="apache-2.0", help="the model card's license (default: apache-2.0)")
    p.add_argument("--language", default="en", help="the model card's languages, comma-separated (default: en)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors file, e.g. 2GB, 500MB")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to ship (SentencePiece .model or HF folder); "
                        "default: RUN_DIR/tokenizer, then the run's data.path")
    adapters = p.add_mutually_exclusive_group()
    adapters.add_argument("--merge-lora", action="store_true",
                          help="a LoRA run: fold its adapters into its base's weights (W + (alpha/rank)·A·B) and "
                               "export a plain model (what a LoRA run exports by default)")
    adapters.add_argument("--adapter-only", action="store_true",
                          help="a LoRA run: only the adapters, as a PEFT folder (adapter_config.json + "
                               "adapter_model.safetensors) for the base model's own export")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check (huge models)")
    p.add_argument("--force", action="store_true", help="write into an existing output folder")
    return p.parse_args(argv)


def parse_size(text: str) -> int:
    """'2GB' / '500MB' / '1GiB' / '123' → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    digits = t.rstrip("KMGIB")
    try:
        value = float(digits)
        unit = units[t[len(digits):]]
    except (ValueError, KeyError):
        raise ConversionError(f"--max-shard-size {text!r} is not a size such as 2GB or 500MB") from None
    return int(value * unit)


def check_out_dir(out: str, force: bool) -> None:
    """Refuse an existing non-empty output folder without --force (checked before the slow checkpoint load)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConversionError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise ConversionError(f"output folder {out} already exists and is not empty: pass --force to overwrite it")


def prepare_out_dir(out: str) -> None:
    """Create `out`, removing model files a previous export left there (tokenizer and config files are rewritten)."""
    if os.path.isdir(out):
        for name in os.listdir(out):
            if name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json", ".gguf")):
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)


def write_weights(out: str, model: ModelConfig, params: dict[str, Any], dtype: str, max_shard_bytes: int,
                  progress: Any = None) -> list[str]:
    """All safetensors files of the model (+ model.safetensors.index.json when there are several); their names."""
    shapes = mapping.hf_shapes(model)
    itemsize = 4 if dtype == "float32" else 2
    shards = plan_shards(shapes, itemsize, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    stream = iter(mapping.to_hf(params, model))
    total = 0
    for filename, members in zip(names, shards):
        part = {name: shapes[name] for name in members}
        tensors = (next(stream) for _ in members)
        total += write_safetensors(os.path.join(out, filename), part, tensors, dtype)
        if progress is not None:
            progress.update(sum(math.prod(s) for s in part.values()) * itemsize)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: filename for filename, members in zip(names, shards) for name in members}}
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    return names





def write_metadata(out: str, model: ModelConfig, tokenizer: Any, dtype: str) -> None:
    """config.json and generation_config.json: the stop id as `eos_token_id`, and a chat format's plain-text
    end-of-turn marker as `stop_strings` (transformers stops on it when `generate` is given `tokenizer=`)."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_id if tokenizer.end_of_turn_id is None else tokenizer.end_of_turn_id  # a chat model stops
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos, "pad_token_id": tokenizer.pad_id}  # at end of turn
    mapping.llama_config(model, bos_id=tokenizer.bos_id, eos_id=eos, pad_id=tokenizer.pad_id,
                            dtype=dtype).save_pretrained(out)
    stops = list(getattr(tokenizer, "stop_strings", ()))  # a chat marker kept as plain text (KodaLite's <|end|>):
    GenerationConfig(**ids, **({"stop_strings": stops} if stops else {})).save_pretrained(out)  # needs tokenizer=


def write_folder(out: str, model: ModelConfig, params: dict[str, Any], dtype: str, max_shard_bytes: int,
                 tokenizer: Any, source: str, add_bos: bool) -> list[str]:
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


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run the conversion the arguments describe; returns a summary (what the bench reports)."""
    from trainer.checkpoint import parse_reference
    from trainer.export import card, formats

    max_shard = parse_size(args.max_shard_size)
    out = os.path.abspath(args.out)
    check_out_dir(out, args.force)
    formats.check_args(args)
    start = time.perf_counter()
    if getattr(args, "adapter_only", False):
        from trainer.export.peft import export_adapter

        return export_adapter(args, out)
    from trainer.checkpoint import read_run_config
    from trainer.model.lora import enabled
    from trainer.run.finetune import load_merged

    if getattr(args, "merge_lora", False) and not enabled(read_run_config(parse_reference(args.checkpoint)[0]).model):
        raise ConversionError(f"{args.checkpoint} is not a LoRA run: nothing to merge; drop --merge-lora")
    config, params, step = load_merged(args.checkpoint, dtype=formats.load_dtype(args))  # LoRA: merged into its base
    loaded = time.perf_counter()
    model = config.model
    mapping.check_params(params, model)
    run_dir, _ = parse_reference(args.checkpoint)
    tokenizer, source = find_tokenizer(run_dir, config, args.tokenizer)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConversionError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
                              f"{model.vocab_size}: this tokenizer is not the one the run trained with")
    prepare_out_dir(out)
    summary: dict[str, Any] = {"step": step, "out": out, "load_s": loaded - start}
    if args.format != "hf":
        summary.update(formats.export_format(args, out, config, params, tokenizer, source))
    else:
        dtype = args.dtype or model.param_dtype
        summary["files"] = write_folder(out, model, params, dtype, max_shard, tokenizer, source,
                                        run_adds_bos(run_dir, config))
        summary["bytes"] = sum(os.path.getsize(os.path.join(out, name)) for name in summary["files"]
                               if name.endswith(".safetensors"))
        summary["write_s"] = time.perf_counter() - loaded
        if not args.no_verify:
            summary["parity"] = verify_hf(out, model, params, dtype, tokenizer)
    card.write_card(out, card.facts(args, run_dir, config, params, step, tokenizer, source, summary))
    return summary


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 when parity fails, 2 on input a person must fix."""
    summary = export(parse_args(argv))
    print(f"wrote {', '.join(summary['files'])} ({summary['bytes'] / 1e9:.3f} GB, step {summary['step']}) to "
          f"{summary['out']}")
    if "parity" in summary:
        print(summary["parity"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
