"""Generation throughput: our KV-cache sampler against transformers' `generate` (its own KV cache) on the same weights.

    python -m bench.generate [--configs tiny,small] [--batches 1,8] [--prompt-tokens 128] [--new-tokens 128]
                             [--rounds 3] [--skip-hf]

Prints ONE JSON object on stdout (progress on stderr). For each config and batch size, on the same exported fp32
weights (random, from the model's initializer), same process, same CPU threads, greedy, no EOS:
  decode_tokens_per_s        ours: batch × new tokens / the sampling loop's time (`Generator.timing.decode_s`)
  prefill_tokens_per_s       ours: batch × prompt tokens / the prefill call's time
  hf_decode_tokens_per_s     transformers: batch × new tokens / (generate(1 + new) − generate(1))
  hf_prefill_tokens_per_s    transformers: batch × prompt tokens / generate(1 new token)
  decode_vs_hf, prefill_vs_hf   ours / theirs
  compile_s                  our ahead-of-time compilation (prefill + loop) of that shape, not in the figures above
Each figure is the median of --rounds alternating rounds (ours, then theirs). The model runs in float32 on one device
(mesh 1×1×1), as transformers does on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # `python bench/generate.py`: make the repo importable like `python -m bench.generate`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, loadavg, log, machine_info, print_json, ratio  # noqa: E402


class _Ids:
    """Special ids for the exported config (no tokenizer is involved)."""

    kind, bos_id, eos_id, pad_id, end_of_turn_id = "none", 2, 3, 0, None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,small", help="names of configs/*.yml, comma-separated")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-hf", action="store_true", help="measure ours only")
    return p.parse_args(argv)


def model_and_params(name: str) -> tuple[Any, Any]:
    """The config's model in fp32 on one device and initialised params (numpy)."""
    import jax
    import numpy as np
    from flax import linen as nn

    from trainer.config import MeshConfig, load_config
    from trainer.model.transformer import Transformer

    config = load_config(os.path.join(REPO, "configs", f"{name}.yml"))
    model = dataclasses.replace(
        config.model, compute_dtype="float32", param_dtype="float32", remat_policy="none", attention="dot_product"
    )
    mesh = MeshConfig(data=1, fsdp=1, tensor=1, rules=config.mesh.rules)
    config = dataclasses.replace(config, model=model, mesh=mesh)
    params = nn.unbox(jax.jit(Transformer(model).init)(jax.random.key(0), np.zeros((1, 8), np.int32)))["params"]
    return config, jax.tree.map(np.asarray, params)


def ours(config: Any, params: Any, prompts: list[list[int]], new_tokens: int) -> tuple[Any, Any]:
    """A generator on one device and a function running one measured generation (returns its Timing)."""
    import jax

    from trainer import sharding
    from trainer.infer.decode import Generator

    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    generator = Generator(config, mesh, jax.device_put(params, jax.devices()[0]))

    def once() -> Any:
        generator.generate(prompts, new_tokens)
        return generator.timing

    return generator, once


def theirs(folder: str, prompts: list[list[int]], new_tokens: int) -> Any:
    """transformers' greedy generate with its KV cache: (seconds for 1 new token, seconds for 1 + new_tokens)."""
    import torch

    from trainer.export import parity

    model = parity.load_hf_model(folder)
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - start

    run(2)  # warm-up
    return lambda: (run(1), run(1 + new_tokens))


def measure(name: str, batches: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every batch size of one config: ours and theirs in alternating rounds."""
    import numpy as np

    from trainer.export import hf as export_hf

    config, params = model_and_params(name)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_hf:
            export_hf.write_weights(folder, config.model, params, "float32", 2 * 10**9)
            export_hf.write_metadata(folder, config.model, _Ids, "float32")
        for batch in batches:
            rng = np.random.default_rng(batch)
            prompts = rng.integers(4, config.model.vocab_size, (batch, args.prompt_tokens)).tolist()
            generator, run_ours = ours(config, params, prompts, args.new_tokens)
            first = run_ours()  # compiles
            compile_s = first.compile_s
            run_hf = None if args.skip_hf else theirs(folder, prompts, args.new_tokens)
            decode, prefill, hf_decode, hf_prefill = [], [], [], []
            for r in range(args.rounds):
                t = run_ours()
                decode.append(t.new_tokens / t.decode_s)
                prefill.append(t.prompt_tokens / t.prefill_s)
                if run_hf is not None:
                    one, full = run_hf()
                    hf_prefill.append(batch * args.prompt_tokens / one)
                    hf_decode.append(batch * args.new_tokens / (full - one))
                log(
                    f"{name} batch {batch} round {r + 1}/{args.rounds}: decode {decode[-1]:,.0f} tok/s"
                    + (f" (hf {hf_decode[-1]:,.0f})" if hf_decode else "")
                    + f", prefill {prefill[-1]:,.0f} tok/s"
                    + (f" (hf {hf_prefill[-1]:,.0f})" if hf_prefill else "")
                    + f"; load {loadavg()}"
                )
            row = {
                "config": name,
                "batch": batch,
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "decode_tokens_per_s": statistics.median(decode),
                "prefill_tokens_per_s": statistics.median(prefill),
                "compile_s": compile_s,
            }
            if hf_decode:
                row.update(
                    hf_decode_tokens_per_s=statistics.median(hf_decode),
                    hf_prefill_tokens_per_s=statistics.median(hf_prefill),
                )
                row["decode_vs_hf"] = ratio(row["decode_tokens_per_s"], row["hf_decode_tokens_per_s"])
                row["prefill_vs_hf"] = ratio(row["prefill_tokens_per_s"], row["hf_prefill_tokens_per_s"])
            rows.append(row)
            del generator
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print its JSON object."""
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    info = machine_info()
    import jax
    import torch

    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for name in args.configs.split(","):
        results.extend(measure(name, batches, args))
    print_json(
        {
            "bench": "generate",
            **info,
            "loadavg_at_end": loadavg(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "results": results,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
