"""Data throughput: preparing the stdlib corpus, and the Grain pipeline from local shards and from GCS (emulated).

    python -m bench.data [--seq-len 1024] [--batch 16] [--batches 200] [--max-files N] [--skip-gcs]
    python -m bench.data --only-prepare [--prepare-mb 30] [--workers N]     (the prepare figures alone)

Prints ONE JSON object on stdout (progress on stderr):
  prepare_stdlib     `prepare(corpus='stdlib', vocab_size=4096)` into a fresh local folder: seconds (tokenizer training
                     included), documents, tokens, tokens_per_s
  prepare_gcs        the same shards written to gs:// on gcp-storage-emulator (tokenizer reused): seconds, tokens_per_s
  pipeline_local     tokens/s handed out by `make_train_iterator` from local shards, concatenate and packing
  pipeline_gcs       the same read through array_record's GCS reader from the emulator
  train_step         tokens/s the train step of configs/tiny.yml and of the bench's "small" model consumes here
                     (bench.step's measurement, one device), and `headroom`: the slowest pipeline figure over it
                     (goal ≥ 100: the input pipeline never holds training back)
  prepare_large      one --prepare-mb JSONL file (the stdlib's sources as documents, repeated) prepared with a
                     SentencePiece BPE (vocab 4096) and a GPT-2-style byte-level BPE (vocab 8192): for each, `raw`
                     (the tokenizer's own batch encoder on the same texts, already in memory), `workers_1` and
                     `workers_N` (prepare with 1 and --workers processes): tokens, cpu_s, wall_s, tokens_per_cpu_s,
                     tokens_per_s, cores_used (cpu_s / wall_s), peak_rss_mb (the largest process); then
                     `ratio_per_cpu_s` (workers_1 against raw, goal ≥ 0.9) and `speedup_N` (wall, goal ≥ 0.9 N on
                     an idle machine). Each measurement runs in a fresh process, timed around the call alone.
Pipeline figures: batches of --batch × --seq-len tokens after 3 warm-up batches, one process, no Grain workers,
prefetch 2 (the defaults of data.*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # `python bench/data.py`: make the repo importable like `python -m bench.data`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log(*parts: Any) -> None:
    print("[bench.data]", *parts, file=sys.stderr, flush=True)


def pipeline_tokens_per_s(
    path: str, packing: bool, seq_len: int, batch: int, batches: int = 100, warmup: int = 3
) -> float:
    """Tokens per second that the training iterator hands out for `path` (local folder or gs:// URL).

    Counts batch × seq_len per batch (padding included when packing: it is what the train step consumes).
    """
    from trainer.config import DataConfig
    from trainer.data.pipeline import make_train_iterator

    it = make_train_iterator(
        DataConfig(path=path, packing=packing),
        seq_len=seq_len,
        global_batch_size=batch,
        seed=0,
        process_index=0,
        process_count=1,
    )
    try:
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch * seq_len / (time.perf_counter() - start)
    finally:
        it.close()


def prepare_stdlib(out: str, max_files: int | None = None, tokenizer: str | None = None) -> dict[str, Any]:
    """Prepare the stdlib corpus into `out`; seconds and tokens/s of the whole call (tokenizer training included)."""
    from trainer.data.text_prepare import prepare

    start = time.perf_counter()
    manifest = prepare(
        corpus="stdlib",
        out=out,
        vocab_size=4096,
        tokenizer=tokenizer,
        max_files=max_files,
        progress=False,
        verbose=False,
    )
    seconds = time.perf_counter() - start
    totals = manifest.totals()["all"]
    return {
        "seconds": round(seconds, 2),
        "documents": totals["documents"],
        "tokens": totals["tokens"],
        "tokens_per_s": round(totals["tokens"] / seconds),
    }


def _pipeline_figures(path: str, seq_len: int, batch: int, batches: int) -> dict[str, float]:
    out = {}
    for mode, packing in (("concatenate", False), ("packing", True)):
        out[f"{mode}_tokens_per_s"] = round(pipeline_tokens_per_s(path, packing, seq_len, batch, batches))
        _log(f"{path} {mode}: {out[f'{mode}_tokens_per_s']:,} tokens/s")
    return out


def _train_consumption(result: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s the train step of the tiny and the small config consumes on one device, and the pipeline's headroom."""
    import statistics

    import jax
    import numpy as np

    from trainer.config import load_config
    from trainer.sharding import make_mesh
    from trainer.step import make_step_functions

    slowest = min(v for key in ("pipeline_local", "pipeline_gcs") for v in result.get(key, {}).values())
    out: dict[str, Any] = {}
    for name in ("tiny", "small"):
        config = load_config(os.path.join(REPO, "configs", f"{name}.yml"), ["mesh.fsdp=1"])
        trainer = make_step_functions(config, make_mesh(config.mesh, jax.devices()[:1]))
        t = config.train
        tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, (t.global_batch_size, t.seq_len + 1))
        batch = jax.device_put(
            {
                "inputs": tokens[:, :-1].astype(np.int32),
                "targets": tokens[:, 1:].astype(np.int32),
                "loss_mask": np.ones((t.global_batch_size, t.seq_len), np.float32),
                "segment_ids": np.ones((t.global_batch_size, t.seq_len), np.int32),
                "positions": np.tile(np.arange(t.seq_len, dtype=np.int32), (t.global_batch_size, 1)),
            },
            trainer.batch_sharding,
        )
        state = trainer.init(jax.random.key(0))
        _log(f"train step of configs/{name}.yml ...")
        times = []
        for _ in range(4):  # the first call compiles
            start = time.perf_counter()
            state, metrics = trainer.train_step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        consumed = t.global_batch_size * t.seq_len / statistics.median(times[1:])
        out[name] = {"tokens_per_s": consumed, "headroom": slowest / consumed}
    out["goal_headroom_min"] = 100
    return out


def _large_jsonl(path: str, megabytes: float) -> str:
    """One JSONL file of about `megabytes` MB: the stdlib's .py files as documents, repeated until the size."""
    from trainer.data.sources import stdlib_files

    _, files = stdlib_files()
    size, target = 0, megabytes * 1e6
    with open(path, "w") as out:
        while size < target:
            for name in files:
                with open(name, encoding="utf-8", errors="replace") as f:
                    line = json.dumps({"text": f.read()}) + "\n"
                out.write(line)
                size += len(line)
                if size >= target:
                    break
    return path


def _tokenizers(folder: str, corpus: str) -> dict[str, str]:
    """A SentencePiece BPE (vocab 4096) trained on the corpus' first 16 MB and a GPT-2-style byte-level BPE."""
    from trainer.data.tokenizer import train_sentencepiece

    texts = []
    with open(corpus) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if sum(map(len, texts)) > 16e6:
                break
    sp = os.path.join(folder, "sp")
    os.makedirs(sp, exist_ok=True)
    train_sentencepiece(texts, 4096).save(sp)
    sys.path.insert(0, os.path.join(REPO, "tests", "support"))
    from bpe_tokenizers import gpt2_style

    return {"sentencepiece": os.path.join(sp, "tokenizer.model"), "byte_level_bpe": gpt2_style(f"{folder}/bpe", 8192)}


def _usage() -> tuple[float, float]:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, time.perf_counter()


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: the raw batch encoder, or `prepare` with some workers."""
    import resource

    from trainer.data.tokenizer import open_tokenizer
    from trainer.data.units import ENCODE_BATCH

    if spec["what"] == "raw":
        tok = open_tokenizer(spec["tokenizer"])
        with open(spec["corpus"]) as f:
            texts = [json.loads(line)["text"] for line in f]
        cpu, wall = _usage()
        batches = (texts[i : i + ENCODE_BATCH] for i in range(0, len(texts), ENCODE_BATCH))
        tokens = sum(len(ids) for batch in batches for ids in tok.encode_batch(batch))
    else:
        from trainer.data.text_prepare import prepare

        cpu, wall = _usage()
        manifest = prepare(
            [spec["corpus"]],
            spec["out"],
            tokenizer=spec["tokenizer"],
            workers=spec["workers"],
            val_fraction=0.0,
            progress=False,
            verbose=False,
        )
        tokens = manifest.totals()["all"]["tokens"] - manifest.totals()["all"]["documents"]  # without the EOS ids
    cpu_end, wall_end = _usage()
    cpu_s, wall_s = cpu_end - cpu, wall_end - wall
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {
        "tokens": tokens,
        "cpu_s": round(cpu_s, 2),
        "wall_s": round(wall_s, 2),
        "tokens_per_cpu_s": round(tokens / cpu_s),
        "tokens_per_s": round(tokens / wall_s),
        "cores_used": round(cpu_s / wall_s, 2),
        "peak_rss_mb": round(rss / 1024),
    }


def _measured(spec: dict[str, Any]) -> dict[str, Any]:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "bench.data", "--measure", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_large(tmp: str, megabytes: float, workers: int) -> dict[str, Any]:
    """The prepare figures (module docstring, `prepare_large`) for one large JSONL file."""
    import shutil

    corpus = _large_jsonl(os.path.join(tmp, "large.jsonl"), megabytes)
    result: dict[str, Any] = {"file_mb": round(os.path.getsize(corpus) / 1e6, 1), "workers": workers}
    for name, tokenizer in _tokenizers(tmp, corpus).items():
        figures: dict[str, Any] = {"raw": _measured({"what": "raw", "tokenizer": tokenizer, "corpus": corpus})}
        for n in sorted({1, workers}):
            out = os.path.join(tmp, f"out-{name}-{n}")
            spec = {"what": "prepare", "tokenizer": tokenizer, "corpus": corpus, "out": out, "workers": n}
            figures[f"workers_{n}"] = _measured(spec)
            shutil.rmtree(out)
        one, raw = figures["workers_1"], figures["raw"]
        figures["ratio_per_cpu_s"] = round(one["tokens_per_cpu_s"] / raw["tokens_per_cpu_s"], 3)
        figures[f"speedup_{workers}"] = round(one["wall_s"] / figures[f"workers_{workers}"]["wall_s"], 2)
        _log(f"prepare {name}: {figures}")
        result[name] = figures
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default 1024)")
    parser.add_argument("--batch", type=int, default=16, help="rows per batch (default 16)")
    parser.add_argument("--batches", type=int, default=100, help="batches timed per pipeline (default 100)")
    parser.add_argument("--max-files", type=int, default=None, help="prepare only part of the stdlib (quick runs)")
    parser.add_argument("--skip-gcs", action="store_true", help="no gs:// figures (no emulator started)")
    parser.add_argument("--skip-train", action="store_true", help="no train-step consumption figures")
    parser.add_argument("--prepare-mb", type=float, default=30, help="size of the large prepare file (default 30)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="workers against 1 (default: CPUs)")
    parser.add_argument("--only-prepare", action="store_true", help="the prepare figures alone")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return 0
    if args.only_prepare:
        with tempfile.TemporaryDirectory() as tmp:
            figures = prepare_large(tmp, args.prepare_mb, args.workers)
        print(json.dumps({"cpus": os.cpu_count(), "prepare_large": figures}))
        return 0

    result: dict[str, Any] = {"seq_len": args.seq_len, "batch": args.batch, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "stdlib")
        _log("preparing the stdlib corpus ...")
        result["prepare_stdlib"] = prepare_stdlib(local, args.max_files)
        _log(f"prepare: {result['prepare_stdlib']}")
        result["pipeline_local"] = _pipeline_figures(local, args.seq_len, args.batch, args.batches)
        if not args.skip_gcs:
            sys.path.insert(0, os.path.join(REPO, "tests", "support"))
            from gcs_emulator import gcs_emulator

            with gcs_emulator() as gcs:
                url = gcs.url("stdlib")
                result["prepare_gcs"] = prepare_stdlib(url, args.max_files, os.path.join(local, "tokenizer.model"))
                _log(f"prepare to gs://: {result['prepare_gcs']}")
                result["pipeline_gcs"] = _pipeline_figures(url, args.seq_len, args.batch, args.batches)
        result["prepare_large"] = prepare_large(tmp, args.prepare_mb, args.workers)
    if not args.skip_train:
        result["train_step"] = _train_consumption(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
