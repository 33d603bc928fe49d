"""The export formats other than the Hugging Face folder: GGUF (llama.cpp), MLX (mlx-lm) and ONNX (onnxruntime).

`trainer.export.command` owns the command; this module checks a format's options before the checkpoint is loaded, then
writes the format's files into the output folder and checks them in the format's own runtime.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from trainer.checkpoint import parse_reference
from trainer.config import Config
from trainer.data.bos import run_adds_bos
from trainer.errors import ConversionError
from trainer.export import gguf, gguf_quantize, hf, mlx, modelfile, onnx
from trainer.export.tokenizer import write_tokenizer

SIXTEEN_BIT = ("bfloat16", "float16")


def check_args(args: argparse.Namespace) -> None:
    """Options that don't fit the format, or a runtime that isn't installed: one line, before any work."""
    if args.mlx_bits is not None and args.format != "mlx":
        raise ConversionError("--mlx-bits applies to --format mlx only")
    if args.format == "mlx":
        mlx.check_installed()
    if args.format == "onnx":
        if args.dtype not in (None, *onnx.DTYPES):
            raise ConversionError(f"--dtype {args.dtype} is not available for --format onnx: use float32 or float16")
        onnx.check_installed()
    if args.format == "gguf" and args.dtype is not None:
        raise ConversionError("--dtype does not apply to --format gguf: choose the file type with --gguf-type")
    if args.format == "gguf":
        gguf_quantize.check_installed(args.gguf_type)  # a K-quant needs llama.cpp's quantizer


def load_dtype(args: argparse.Namespace) -> str | None:
    """The dtype to restore the checkpoint's params in, tensor by tensor (None: as saved).

    A 16-bit hf or mlx export without the parity check never needs the float32 weights: restoring each tensor straight
    into the export dtype keeps the peak memory near the size of the export. The check compares with the float32
    originals, so it keeps them.
    """
    if args.no_verify and args.format in ("hf", "mlx") and args.dtype in SIXTEEN_BIT:
        return args.dtype
    return None


def adds_bos(args: argparse.Namespace, config: Config) -> bool:
    """Whether the exported tokenizer (and llama.cpp's add_bos_token) starts prompts with BOS: the run's record."""
    return run_adds_bos(parse_reference(args.checkpoint)[0], config)


def export_format(
    args: argparse.Namespace, out: str, config: Config, params: dict[str, Any], tokenizer: Any, source: str
) -> dict[str, Any]:
    """Write `args.format` into `out` (and check it unless --no-verify); returns the summary's entries."""
    write = {"gguf": _gguf, "mlx": _mlx, "onnx": _onnx}[args.format]
    summary = write(args, out, config, params, tokenizer, source)
    summary["bytes"] = sum(os.path.getsize(os.path.join(out, name)) for name in summary["files"])
    return summary


def _gguf(
    args: argparse.Namespace, out: str, config: Config, params: dict[str, Any], tokenizer: Any, source: str
) -> dict[str, Any]:
    model, add_bos = config.model, adds_bos(args, config)
    filename = f"model-{args.gguf_type}.gguf"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tok_dir:
        write_tokenizer(tokenizer, source, tok_dir, add_bos)
        gguf.write_gguf(os.path.join(out, filename), model, params, tok_dir, tokenizer, args.gguf_type, add_bos=add_bos)
    files = [filename, modelfile.write_modelfile(out, filename, tokenizer)]  # Ollama: template and stop strings
    summary: dict[str, Any] = {"files": files, "write_s": time.perf_counter() - started}
    if not args.no_verify:
        summary["parity"] = gguf.verify_gguf(out, filename, model, params, args.gguf_type, tokenizer, add_bos)
    return summary


def _mlx(
    args: argparse.Namespace, out: str, config: Config, params: dict[str, Any], tokenizer: Any, source: str
) -> dict[str, Any]:
    model = config.model
    dtype = args.dtype or model.param_dtype
    started = time.perf_counter()
    files = hf.write_folder(
        out, model, params, dtype, hf.parse_size(args.max_shard_size), tokenizer, source, adds_bos(args, config)
    )
    if args.mlx_bits is not None:
        files = mlx.quantize_folder(out, args.mlx_bits)
    summary: dict[str, Any] = {"files": files, "write_s": time.perf_counter() - started}
    if not args.no_verify:
        summary["parity"] = mlx.verify_mlx(out, model, params, dtype, args.mlx_bits)
    return summary


def _onnx(
    args: argparse.Namespace, out: str, config: Config, params: dict[str, Any], tokenizer: Any, source: str
) -> dict[str, Any]:
    model = config.model
    dtype = args.dtype or "float32"
    started = time.perf_counter()
    files = onnx.write_onnx(out, model, params, dtype)
    hf.write_metadata(out, model, tokenizer, dtype)
    write_tokenizer(tokenizer, source, out, adds_bos(args, config))
    summary: dict[str, Any] = {"files": files, "write_s": time.perf_counter() - started}
    if not args.no_verify:
        summary["parity"] = onnx.verify_onnx(out, model, params, dtype)
    return summary
