"""Documents per second of our lm-eval backend beside the harness's `hf` backend on the same checkpoint and machine.

    python -m bench.eval [--config configs/tiny.yml] [--docs 32] [--batch-size 32] [--workdir DIR]

Writes random params of the config's shapes with `checkpoint.save_params` (a SentencePiece tokenizer trained on the
standard library, data without BOS), exports them to a float32 Hugging Face folder, writes `--docs` synthetic
documents per zero-shot task (the real schemas, tests/support/eval_data.py), then scores the 8 tasks twice with each
backend in this process: ours (`trainer`, JAX on the default devices) and lm_eval's `hf` (transformers + torch, float32,
CPU). The first pass includes compilation (ours) and warm-up; the second is the figure. Prints ONE JSON object:
  documents, requests          documents scored per pass, and the loglikelihood requests they make
  ours / hf: first_pass_s, warm_s, docs_per_s (warm), requests_per_s (warm)
  ratio                        ours.docs_per_s / hf.docs_per_s (above 1: ours is faster)
  max_abs_loglikelihood_diff   largest per-request difference between the two (both float32)
  generation                   a generate_until task (GSM8K, --gen-shots shots, --gen-docs documents, --gen-tokens
                               new tokens each, greedy): ours on the KV-cache generator and hf, the same two passes;
                               ours / hf docs_per_s, ratio, identical_generations (every output the same)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import sysconfig
import tempfile

if __package__ in (None, ""):  # `python bench/eval.py`: make the repo importable like `python -m bench.eval`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, log, machine_info, print_json, ratio, timed  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "support"))  # the synthetic task files of the tests


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.yml"), help="model shapes")
    p.add_argument("--docs", type=int, default=32, help="documents per task (8 tasks)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per call, both backends")
    p.add_argument("--workdir", default=None, help="where the run, export and task files go (default: a temp dir)")
    p.add_argument("--gen-docs", type=int, default=24, help="GSM8K documents of the generation figure (0: none)")
    p.add_argument("--gen-shots", type=int, default=3, help="few-shot examples of each GSM8K prompt")
    p.add_argument("--gen-tokens", type=int, default=48, help="new tokens per document (max_gen_toks)")
    return p.parse_args(argv)


def build(config_path: str, root: str, docs: int) -> tuple[str, str, str]:
    """Run folder (random params, tokenizer, no-BOS data manifest), its float32 HF export, task files."""
    import dataclasses
    import glob

    import jax
    import numpy as np
    from eval_data import write_task_files
    from flax import linen as nn

    from trainer import checkpoint
    from trainer.config import DataConfig, load_config
    from trainer.data.tokenizer import train_sentencepiece
    from trainer.export import command as convert_to_hf
    from trainer.model.transformer import Transformer

    config = load_config(config_path)
    data, run, hf, tasks = (os.path.join(root, n) for n in ("data", "run", "hf", "tasks"))
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "manifest.json"), "w") as f:
        json.dump({"bos": False}, f)
    config = dataclasses.replace(config, data=DataConfig(path=data))
    log(f"training a {config.model.vocab_size}-token SentencePiece model on the standard library")
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:300]
    texts = [pathlib.Path(p).read_text(errors="replace") for p in files]
    tokenizer = train_sentencepiece(texts, vocab_size=config.model.vocab_size)
    shapes = jax.eval_shape(Transformer(config.model).init, jax.random.key(0), np.zeros((1, 8), np.int32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), nn.unbox(shapes)["params"]
    )
    checkpoint.save_params(run, config, params)
    tokenizer.save(os.path.join(run, "tokenizer"))
    log("exporting to a float32 Hugging Face folder")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON result only
        assert (
            convert_to_hf.main(["--checkpoint", run, "--out", hf, "--dtype", "float32", "--no-verify", "--force"]) == 0
        )
    write_task_files(tasks, n=docs)
    return run, hf, tasks


def score(lm, tasks_dir: str) -> tuple[float, dict]:
    """Seconds for one pass over the 8 tasks, and the harness's results (with per-document samples)."""
    from trainer.eval import tasks

    return timed(lambda: tasks.evaluate(lm, tasks.ZERO_SHOT, tasks_dir, bootstrap_iters=0, log_samples=True))


def measure(name: str, lm, tasks_dir: str) -> tuple[dict, dict]:
    first, _ = score(lm, tasks_dir)
    log(f"{name}: first pass {first:.1f} s")
    warm, results = score(lm, tasks_dir)
    documents = sum(v["effective"] for v in results["n-samples"].values())
    requests = sum(len(d["resps"]) for docs in results["samples"].values() for d in docs)
    log(f"{name}: warm pass {warm:.1f} s, {documents / warm:.1f} documents/s")
    return {
        "first_pass_s": first,
        "warm_s": warm,
        "docs_per_s": documents / warm,
        "requests_per_s": requests / warm,
        "documents": documents,
        "requests": requests,
    }, results


def write_generation_files(tasks_dir: str, docs: int) -> None:
    """GSM8K test and train splits in the dataset's schema (tests/support/eval_data.py)."""
    from eval_data import gsm8k, write_jsonl

    write_jsonl(os.path.join(tasks_dir, "gsm8k.test.jsonl"), gsm8k(docs))
    write_jsonl(os.path.join(tasks_dir, "gsm8k.train.jsonl"), gsm8k(16, 1000))


def measure_generation(name: str, lm, tasks_dir: str, shots: int, tokens: int) -> tuple[dict, list]:
    """Two passes of GSM8K (generate_until) on `lm`: the second is the figure; its outputs for the comparison."""
    from trainer.eval import tasks

    def once() -> dict:
        return tasks.evaluate(
            lm,
            [f"gsm8k:{shots}"],
            tasks_dir,
            bootstrap_iters=0,
            log_samples=True,
            gen_kwargs=f"max_gen_toks={tokens}",
        )

    first, _ = timed(once)
    warm, results = timed(once)
    documents = results["n-samples"]["gsm8k"]["effective"]
    log(f"{name} generation: first pass {first:.1f} s, warm {warm:.1f} s, {documents / warm:.2f} documents/s")
    outputs = [d["resps"] for d in results["samples"]["gsm8k"]]
    return {"first_pass_s": first, "warm_s": warm, "docs_per_s": documents / warm, "documents": documents}, outputs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        root = args.workdir or tmp
        run, hf, tasks_dir = build(args.config, root, args.docs)
        from lm_eval.models.huggingface import HFLM

        from trainer.eval.harness import TrainerLM

        ours_lm = TrainerLM(checkpoint=run, batch_size=args.batch_size)
        hf_lm = HFLM(pretrained=hf, dtype="float32", device="cpu", batch_size=args.batch_size)
        ours, ours_results = measure("ours", ours_lm, tasks_dir)
        theirs, hf_results = measure("hf", hf_lm, tasks_dir)
        generation = None
        if args.gen_docs > 0:
            write_generation_files(tasks_dir, args.gen_docs)
            ours_gen, ours_out = measure_generation("ours", ours_lm, tasks_dir, args.gen_shots, args.gen_tokens)
            hf_gen, hf_out = measure_generation("hf", hf_lm, tasks_dir, args.gen_shots, args.gen_tokens)
            generation = {
                "task": f"gsm8k:{args.gen_shots}",
                "max_gen_toks": args.gen_tokens,
                "ours": ours_gen,
                "hf": hf_gen,
                "ratio": ratio(ours_gen["docs_per_s"], hf_gen["docs_per_s"]),
                "identical_generations": ours_out == hf_out,
            }
    diff = max(
        abs(a["resps"][i][0][0] - b["resps"][i][0][0])
        for task in ours_results["samples"]
        for a, b in zip(ours_results["samples"][task], hf_results["samples"][task])
        for i in range(len(a["resps"]))
    )
    print_json(
        {
            "bench": "eval",
            "config": os.path.relpath(args.config, REPO),
            "docs_per_task": args.docs,
            "batch_size": args.batch_size,
            "documents": ours["documents"],
            "requests": ours["requests"],
            "ours": ours,
            "hf": theirs,
            "ratio": ratio(ours["docs_per_s"], theirs["docs_per_s"]),
            "max_abs_loglikelihood_diff": diff,
            "generation": generation,
            **machine_info(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
