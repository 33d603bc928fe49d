"""Export speed and memory of `trainer.convert_to_hf`, per format, on a ~300M-parameter random checkpoint.

    python -m bench.convert [--config configs/303m.yml] [--exports hf:float32,hf:bfloat16,gguf:q8_0,...] [--workdir DIR]

Writes random params of the config's shapes (fp32) with `checkpoint.save_params` plus a small SentencePiece tokenizer,
then runs one export per entry of --exports with --no-verify, each in a fresh process. An entry is FORMAT:VARIANT:
hf:DTYPE, gguf:TYPE (f16, bf16, q8_0, q4_0), mlx:DTYPE or mlx:8bit / mlx:4bit, onnx:DTYPE (float32, float16); a
format whose runtime package is missing is reported as skipped. Prints ONE JSON object on stdout:
  checkpoint_gb, params            what was saved (fp32)
  runs[]: export, exported_gb      the entry; the bytes of the weight files written
          total_s, gb_per_s        the whole command (load + write + config + tokenizer) and exported_gb / total_s
          load_s, write_s,         loading the Orbax checkpoint; writing the safetensors files (write_gb_per_s)
          write_gb_per_s
          baseline_rss_gb          the process after importing jax, orbax, transformers (before any weight)
          peak_rss_gb              peak resident memory of the process (VmHWM)
          peak_over_exported       (peak − baseline) / exported_gb: the weights' share of the peak, in exports
          peak_over_checkpoint     (peak − baseline) / checkpoint_gb
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import sysconfig
import tempfile

if __package__ in (None, ""):  # `python bench/convert.py`: make the repo importable like `python -m bench.convert`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, log, machine_info, print_json, timed  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO, "configs", "303m.yml")
DEFAULT_EXPORTS = "hf:float32,hf:bfloat16,gguf:f16,gguf:q8_0,gguf:q4_0,mlx:bfloat16,mlx:8bit,onnx:float32,onnx:float16"
RUNTIME = {"mlx": ("mlx_lm",), "onnx": ("onnxruntime", "onnx", "torch")}  # what a format needs beyond the hf extra


def export_options(entry: str) -> list[str]:
    """`FORMAT:VARIANT` → the convert_to_hf options that make that export."""
    fmt, _, variant = entry.partition(":")
    if fmt == "gguf":
        return ["--format", "gguf", "--gguf-type", variant or "f16"]
    if fmt == "mlx" and variant.endswith("bit"):
        return ["--format", "mlx", "--mlx-bits", variant[:-3]]
    return ["--format", fmt] + (["--dtype", variant] if variant else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="model shapes to export (default: configs/303m.yml)")
    p.add_argument(
        "--exports", default=DEFAULT_EXPORTS, help=f"comma-separated FORMAT:VARIANT (default {DEFAULT_EXPORTS})"
    )
    p.add_argument("--workdir", default=None, help="where the checkpoint and exports go (default: a temp folder)")
    p.add_argument("--child", nargs=3, metavar=("RUN", "OUT", "EXPORT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_checkpoint(config_path: str, run_dir: str) -> dict:
    """Random fp32 params of the config's shapes + a SentencePiece tokenizer, saved as a run folder."""
    import dataclasses

    import jax
    import numpy as np
    from flax import linen as nn

    from trainer.checkpoint import save_params
    from trainer.config import load_config
    from trainer.data.tokenizer import train_sentencepiece
    from trainer.model.transformer import Transformer

    config = load_config(config_path, ["model.param_dtype=float32", "model.scan_layers=true"])
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, dir=run_dir))
    abstract = nn.unbox(jax.eval_shape(Transformer(config.model).init, jax.random.key(0), np.zeros((1, 4), np.int32)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.standard_normal(s.shape, dtype=np.float32) * np.float32(0.02), abstract["params"]
    )
    count = sum(x.size for x in jax.tree.leaves(params))
    seconds, _ = timed(lambda: save_params(run_dir, config, params))
    log(f"saved {count:,} random params in {seconds:.1f} s")
    stdlib = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    texts = [pathlib.Path(path).read_text(errors="replace") for path in stdlib[:40]]
    train_sentencepiece(texts, vocab_size=512, num_threads=1).save(os.path.join(run_dir, "tokenizer"))
    return {"params": count, "checkpoint_gb": count * 4 / 1e9, "save_s": seconds}


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM of its own address space.

    Not getrusage's ru_maxrss: Linux carries the pre-exec high-water mark over, so a child forked from a parent
    holding the random checkpoint would report the parent's memory.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: kilobytes elsewhere too


def child(run_dir: str, out: str, entry: str) -> None:
    """One export in this fresh process; prints its figures as JSON."""
    import jax  # noqa: F401  (imported up front so that the baseline holds every library)
    import orbax.checkpoint  # noqa: F401
    import psutil
    import transformers  # noqa: F401
    from transformers import GenerationConfig, LlamaConfig, LlamaTokenizerFast  # noqa: F401

    from trainer.export import command as convert_to_hf

    for module in RUNTIME.get(entry.partition(":")[0], ()):
        importlib.import_module(module)  # in the baseline too, as the libraries above
    baseline = psutil.Process().memory_info().rss
    args = convert_to_hf.parse_args(["--checkpoint", run_dir, "--out", out, "--no-verify", *export_options(entry)])
    total, summary = timed(lambda: convert_to_hf.export(args))
    peak = peak_rss()
    print(
        json.dumps(
            {
                "total_s": total,
                "load_s": summary["load_s"],
                "write_s": summary["write_s"],
                "exported_bytes": summary["bytes"],
                "files": summary["files"],
                "baseline_rss_bytes": baseline,
                "peak_rss_bytes": peak,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-convert-")
    run_dir = os.path.join(workdir, "run")
    result = {"config": os.path.relpath(args.config, REPO), **write_checkpoint(args.config, run_dir), "runs": []}
    for entry in args.exports.split(","):
        fmt = entry.partition(":")[0]
        missing = [m for m in RUNTIME.get(fmt, ()) if importlib.util.find_spec(m) is None]
        if missing:
            result["runs"].append({"export": entry, "skipped": f"{', '.join(missing)} not installed"})
            continue
        out = os.path.join(workdir, entry.replace(":", "-"))
        log(f"exporting {entry} ...")
        proc = subprocess.run(
            [sys.executable, "-m", "bench.convert", "--child", run_dir, out, entry],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        exported, weights_rss = r["exported_bytes"] / 1e9, (r["peak_rss_bytes"] - r["baseline_rss_bytes"]) / 1e9
        result["runs"].append(
            {
                "export": entry,
                "exported_gb": exported,
                "files": r["files"],
                "total_s": r["total_s"],
                "gb_per_s": exported / r["total_s"],
                "load_s": r["load_s"],
                "write_s": r["write_s"],
                "write_gb_per_s": exported / r["write_s"],
                "baseline_rss_gb": r["baseline_rss_bytes"] / 1e9,
                "peak_rss_gb": r["peak_rss_bytes"] / 1e9,
                "peak_over_exported": weights_rss / exported,
                "peak_over_checkpoint": weights_rss / result["checkpoint_gb"],
            }
        )
        log(json.dumps(result["runs"][-1]))
    result["machine"] = machine_info()
    print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
