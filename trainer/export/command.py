"""`python -m trainer.convert_to_hf --checkpoint RUN_DIR[:STEP] --out DIR`: the export command, every format.

It parses the arguments, refuses an output folder or options that can't work before the slow checkpoint load, loads
the run (a LoRA run merged into its base, or `--adapter-only`: its adapters as a PEFT folder, `trainer.export.peft`),
then writes `--format hf` (the default, `trainer.export.hf`) or gguf|mlx|onnx (`trainer.export.formats`), checks
parity in the format's own runtime (`--no-verify` skips it) and writes the model card, README.md
(`trainer.export.card`). Bad input: one line on stderr, exit 2; failed parity: exit 1.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from trainer import cli_args
from trainer.data.tokenizer import load_tokenizer
from trainer.errors import ConversionError, cli
from trainer.export import card, formats, mapping
from trainer.export.gguf import GGUF_TYPES
from trainer.export.hf import parse_size, prepare_out_dir, verify_hf, write_folder
from trainer.export.peft import export_adapter
from trainer.run_folder import open_run

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = cli_args.ArgumentParser(
        prog="python -m trainer.convert_to_hf",
        description="Export a run's checkpoint as a Hugging Face LLaMA folder, a GGUF, an "
        "MLX folder or an ONNX decoder, with a model card.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder, optionally :STEP (default: the latest step)")
    p.add_argument("--out", required=True, help="output folder (local)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights dtype for hf and mlx (default: the checkpoint's param dtype, i.e. lossless); "
        "onnx: float32 (default) or float16",
    )
    p.add_argument(
        "--format",
        choices=("hf", "gguf", "mlx", "onnx"),
        default="hf",
        help="hf: a transformers folder (safetensors); gguf: one llama.cpp file; mlx: an mlx-lm folder; "
        "onnx: an onnxruntime decoder with a KV cache (default: hf)",
    )
    p.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        default="f16",
        help="with --format gguf; q4_k_m, q5_k_m and q6_k are made by llama.cpp's own quantizer "
        '(pip install -e ".[llama]")',
    )
    p.add_argument(
        "--mlx-bits",
        type=int,
        choices=(8, 4),
        default=None,
        help="with --format mlx: quantise with mlx-lm to 8 or 4 bits (groups of 64; default: none)",
    )
    p.add_argument("--license", default="apache-2.0", help="the model card's license (default: apache-2.0)")
    p.add_argument("--language", default="en", help="the model card's languages, comma-separated (default: en)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors file, e.g. 2GB, 500MB")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer to ship (SentencePiece .model or HF folder); "
        "default: RUN_DIR/tokenizer, then the run's data.path",
    )
    adapters = p.add_mutually_exclusive_group()
    adapters.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA run: fold its adapters into its base's weights (W + (alpha/rank)·A·B) and "
        "export a plain model (what a LoRA run exports by default)",
    )
    adapters.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA run: only the adapters, as a PEFT folder (adapter_config.json + "
        "adapter_model.safetensors) for the base model's own export",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the parity check (huge models)")
    p.add_argument("--force", action="store_true", help="write into an existing output folder")
    return p.parse_args(argv)


def check_out_dir(out: str, force: bool) -> None:
    """Refuse an existing non-empty output folder without --force (checked before the slow checkpoint load)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConversionError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise ConversionError(f"output folder {out} already exists and is not empty: pass --force to overwrite it")


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run the conversion the arguments describe; returns a summary (what the bench reports)."""
    max_shard = parse_size(args.max_shard_size)
    out = os.path.abspath(args.out)
    check_out_dir(out, args.force)
    formats.check_args(args)
    start = time.perf_counter()
    if getattr(args, "adapter_only", False):
        return export_adapter(args, out)
    run = open_run(args.checkpoint)
    if getattr(args, "merge_lora", False) and not run.lora:
        raise ConversionError(f"{args.checkpoint} is not a LoRA run: nothing to merge; drop --merge-lora")
    config, params = run.host_params(dtype=formats.load_dtype(args))  # LoRA: merged into its base
    step, run_dir = run.step, run.run_dir
    loaded = time.perf_counter()
    model = config.model
    mapping.check_params(params, model)
    source = run.tokenizer_path(args.tokenizer)
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConversionError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{model.vocab_size}: this tokenizer is not the one the run trained with"
        )
    prepare_out_dir(out)
    summary: dict[str, Any] = {"step": step, "out": out, "load_s": loaded - start}
    if args.format != "hf":
        summary.update(formats.export_format(args, out, config, params, tokenizer, source))
    else:
        dtype = args.dtype or model.param_dtype
        summary["files"] = write_folder(out, model, params, dtype, max_shard, tokenizer, source, run.adds_bos())
        summary["bytes"] = sum(
            os.path.getsize(os.path.join(out, name)) for name in summary["files"] if name.endswith(".safetensors")
        )
        summary["write_s"] = time.perf_counter() - loaded
        if not args.no_verify:
            summary["parity"] = verify_hf(out, model, params, dtype, tokenizer)
    card.write_card(out, card.facts(args, run_dir, config, params, step, tokenizer, source, summary))
    return summary


@cli
def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 when parity fails, 2 on input a person must fix."""
    summary = export(parse_args(argv))
    print(
        f"wrote {', '.join(summary['files'])} ({summary['bytes'] / 1e9:.3f} GB, step {summary['step']}) to "
        f"{summary['out']}"
    )
    if "parity" in summary:
        print(summary["parity"])
    return 0
