"""`python -m trainer.convert_to_hf --checkpoint RUN_DIR[:STEP] --out DIR`: a run's checkpoint → an HF folder.

Writes config.json (LlamaConfig), model*.safetensors (+ index when sharded), generation_config.json and the tokenizer
(a SentencePiece model becomes a `LlamaTokenizerFast` that encodes identically; an HF tokenizer folder is copied;
a chat template is passed through), so `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(DIR)` load it offline.
With `--format gguf` it writes a llama.cpp GGUF instead (`trainer.gguf_export`). Then it checks parity
(`trainer.parity`; `--no-verify` skips it). Bad input: one line on stderr, exit 2; failed parity: exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import struct
import sys
import tempfile
import time
from typing import Any, Iterable

import numpy as np

from trainer import hf_mapping, parity, storage
from trainer.config import Config, ConfigError, ModelConfig

DTYPES = ("float32", "bfloat16", "float16")
_SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "chat_template")
SAMPLE_TEXTS = (
    "def main(argv: list[str]) -> int:\n    return 0\n",
    "  leading spaces, trailing spaces  ",
    "Größe, naïve café — 東京 😀",
    "\ttabs\tand\nnewlines\n\n",
    "x = {'a': [1, 2, 3.5e-7]}  # comment",
)


class ConversionError(ConfigError):
    """Input the converter can't use (output folder, tokenizer, dtype range); one actionable line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m trainer.convert_to_hf",
                                description="Export a run's checkpoint as a Hugging Face LLaMA folder or a GGUF.")
    p.add_argument("--checkpoint", required=True, help="run folder, optionally :STEP (default: the latest step)")
    p.add_argument("--out", required=True, help="output folder (local)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="safetensors dtype (default: the checkpoint's param dtype, i.e. lossless)")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf")
    p.add_argument("--gguf-type", choices=("f16", "bf16", "q8_0"), default="f16", help="with --format gguf")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors file, e.g. 2GB, 500MB")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to ship (SentencePiece .model or HF folder); "
                        "default: RUN_DIR/tokenizer, then the run's data.path")
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


# ---------------------------------------------------------------------------------------------- weights


def converted(array: np.ndarray, dtype: str) -> np.ndarray:
    """One tensor as a contiguous array of the export dtype (a copy only where the layout or dtype changes)."""
    import ml_dtypes

    target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    if dtype == "float16":
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        if peak > np.finfo(np.float16).max:
            raise ConversionError(f"a weight of magnitude {peak:.3g} exceeds the float16 range: export "
                                  "--dtype bfloat16 or float32")
    return np.ascontiguousarray(array, dtype=target)


def plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, max_bytes: int) -> list[list[str]]:
    """Consecutive tensor names grouped into files of at most `max_bytes` (a bigger single tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_safetensors(path: str, shapes: dict[str, tuple[int, ...]], tensors: Iterable[tuple[str, np.ndarray]],
                      dtype: str) -> int:
    """Write one .safetensors file tensor by tensor; returns its byte count.

    safetensors' own writers take every tensor of a file at once (a second copy of the weights in memory); this
    writes the same format (u64 header length, JSON header, data in offset order) streaming, and the
    library reads it back in the parity check.
    """
    itemsize = 4 if dtype == "float32" else 2
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, array), expected in zip(tensors, shapes):
            assert name == expected, (name, expected)  # the iterator and the plan must agree: a bug if not
            converted(array, dtype).tofile(f)
    return offset


def write_weights(out: str, model: ModelConfig, params: dict[str, Any], dtype: str, max_shard_bytes: int,
                  progress: Any = None) -> list[str]:
    """All safetensors files of the model (+ model.safetensors.index.json when there are several); their names."""
    shapes = hf_mapping.hf_shapes(model)
    itemsize = 4 if dtype == "float32" else 2
    shards = plan_shards(shapes, itemsize, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    stream = iter(hf_mapping.to_hf(params, model))
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


class SafetensorsFolder:
    """Read access by tensor name to the safetensors files of a written folder (what the parity check reads back)."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        else:
            with safe_open(os.path.join(folder, "model.safetensors"), framework="numpy") as handle:
                weight_map = {name: "model.safetensors" for name in handle.keys()}
        self._weight_map = weight_map
        self._files = {name: safe_open(os.path.join(folder, name), framework="numpy")
                       for name in sorted(set(weight_map.values()))}

    def names(self) -> list[str]:
        """Every tensor name in the folder."""
        return list(self._weight_map)

    def dtype(self) -> str:
        """The dtype of the first tensor, as a numpy/ml_dtypes name ('float32', 'bfloat16', 'float16')."""
        return str(self[next(iter(self._weight_map))].dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._weight_map:
            raise hf_mapping.MappingError(f"tensor {name} is missing from the safetensors files")
        return self._files[self._weight_map[name]].get_tensor(name)


# ---------------------------------------------------------------------------------------------- tokenizer


def find_tokenizer(run_dir: str, config: Config, override: str | None) -> tuple[Any, str]:
    """The run's tokenizer and the folder/file it came from: --tokenizer, else RUN_DIR/tokenizer, else data.path."""
    from trainer.data.tokenizer import load_tokenizer

    if override:
        return load_tokenizer(override), override
    candidates = [storage.join(run_dir, "tokenizer")]
    if config.data.path and not storage.is_remote(config.data.path):
        candidates.append(config.data.path)
    for path in candidates:
        if storage.exists(path):
            return load_tokenizer(path), path
    raise ConversionError(f"no tokenizer in {candidates[0]}" + (f" nor at data.path {config.data.path}"
                          if config.data.path else "") + ": pass --tokenizer PATH (SentencePiece .model or HF folder)")


def chat_template(source: str) -> str | None:
    """A chat template kept beside a SentencePiece tokenizer (`chat_template.jinja` / `.json` / `chat_template`)."""
    folder = source if storage.isdir(source) else os.path.dirname(source)
    for name in _CHAT_TEMPLATE_FILES:
        path = storage.join(folder, name)
        if folder and storage.exists(path):
            text = storage.read_bytes(path).decode()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def data_adds_bos(config: Config) -> bool:
    """Whether training documents started with BOS (the data manifest's `bos`); True when unknown (STACK.md)."""
    path = config.data.path
    if path and not storage.is_remote(path) and os.path.exists(os.path.join(path, "manifest.json")):
        with open(os.path.join(path, "manifest.json")) as f:
            return bool(json.load(f).get("bos", True))
    return True


def write_tokenizer(tokenizer: Any, source: str, out: str, add_bos: bool) -> None:
    """The tokenizer as an HF folder in `out`: SentencePiece via LlamaTokenizerFast (STACK.md's recipe), HF copied."""
    if tokenizer.kind == "hf":
        for name, data in tokenizer.files().items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        return
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    special = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id(), "pad_token": sp.pad_id()}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(tokenizer.model_proto)
        hf_tok = LlamaTokenizerFast.from_pretrained(
            tmp, local_files_only=True, add_bos_token=add_bos, add_prefix_space=False,
            **{key: sp.id_to_piece(i) for key, i in special.items() if i >= 0},
        )
    template = chat_template(source)
    if template is not None:
        hf_tok.chat_template = template
    hf_tok.save_pretrained(out)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:  # for SentencePiece users and llama.cpp's tools
        f.write(tokenizer.model_proto)


def check_tokenizer(tokenizer: Any, out: str) -> None:
    """The exported tokenizer must encode sample texts exactly like the run's (ParityError otherwise)."""
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(out, local_files_only=True)
    for text in SAMPLE_TEXTS:
        ours, theirs = tokenizer.encode(text), exported.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise parity.ParityError(f"the exported tokenizer encodes {text!r} as {theirs[:12]}..., "
                                     f"ours as {ours[:12]}...")


# ---------------------------------------------------------------------------------------------- the command


def write_metadata(out: str, model: ModelConfig, tokenizer: Any, dtype: str) -> None:
    """config.json and generation_config.json."""
    from transformers import GenerationConfig

    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    hf_mapping.llama_config(model, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            dtype=dtype).save_pretrained(out)
    GenerationConfig(**ids).save_pretrained(out)


def verify_hf(out: str, model: ModelConfig, params: dict[str, Any], dtype: str, tokenizer: Any) -> str:
    """The parity check of a written HF folder (see `trainer.parity`); returns the report line."""
    files = SafetensorsFolder(out)
    parity.check_weights(hf_mapping.to_hf(params, model), files.__getitem__, lambda name: dtype)
    layout = dataclasses.replace(model, scan_layers="layers" in params)
    exported_params = hf_mapping.from_hf(files.__getitem__, layout)
    tokens = parity.sample_tokens(model.vocab_size, length=min(64, model.max_seq_len))
    ours_exported = parity.jax_logits(model, exported_params, tokens)
    ours = ours_exported if dtype == "float32" else parity.jax_logits(model, params, tokens)
    theirs = parity.hf_logits(parity.load_hf_model(out), tokens)
    report = parity.check_logits(parity.compare(ours_exported, theirs), parity.compare(ours, ours_exported), dtype)
    check_tokenizer(tokenizer, out)
    return report


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run the conversion the arguments describe; returns a summary (what the bench reports)."""
    from tqdm.auto import tqdm

    from trainer.checkpoint import load_params, parse_reference

    max_shard = parse_size(args.max_shard_size)
    out = os.path.abspath(args.out)
    check_out_dir(out, args.force)
    start = time.perf_counter()
    config, params, step = load_params(args.checkpoint)
    loaded = time.perf_counter()
    model = config.model
    hf_mapping.check_params(params, model)
    run_dir, _ = parse_reference(args.checkpoint)
    tokenizer, source = find_tokenizer(run_dir, config, args.tokenizer)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConversionError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
                              f"{model.vocab_size}: this tokenizer is not the one the run trained with")
    prepare_out_dir(out)
    summary: dict[str, Any] = {"step": step, "out": out, "load_s": loaded - start}
    if args.format == "gguf":
        from trainer import gguf_export

        with tempfile.TemporaryDirectory() as tok_dir:
            write_tokenizer(tokenizer, source, tok_dir, data_adds_bos(config))
            path = os.path.join(out, f"model-{args.gguf_type}.gguf")
            summary["bytes"] = gguf_export.write_gguf(path, model, params, tok_dir, tokenizer, args.gguf_type)
            summary["files"] = [os.path.basename(path)]
            summary["write_s"] = time.perf_counter() - loaded
            if not args.no_verify:
                summary["parity"] = gguf_export.verify_gguf(out, os.path.basename(path), model, params,
                                                            args.gguf_type)
        return summary
    dtype = args.dtype or model.param_dtype
    total_bytes = sum(math.prod(s) for s in hf_mapping.hf_shapes(model).values()) * (4 if dtype == "float32" else 2)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="writing safetensors", disable=None) as bar:
        summary["files"] = write_weights(out, model, params, dtype, max_shard, bar)
    summary["bytes"] = total_bytes
    summary["write_s"] = time.perf_counter() - loaded
    write_metadata(out, model, tokenizer, dtype)
    write_tokenizer(tokenizer, source, out, data_adds_bos(config))
    summary["total_write_s"] = time.perf_counter() - loaded
    if not args.no_verify:
        summary["parity"] = verify_hf(out, model, params, dtype, tokenizer)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 when parity fails, 2 on input a person must fix."""
    args = parse_args(argv)
    try:
        summary = export(args)
    except parity.ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(summary['files'])} ({summary['bytes'] / 1e9:.3f} GB, step {summary['step']}) to "
          f"{summary['out']}")
    if "parity" in summary:
        print(summary["parity"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
