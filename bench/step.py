"""Train-step throughput on this machine, against the dense-matmul roof and against PyTorch; compile time vs depth.

    python -m bench.step [--config configs/small.yml] [--steps N] [--rounds R] [--skip-torch] [--skip-compile]
                         [--stock] [section.key=value ...]

Prints ONE JSON object on stdout (progress on stderr):
  tokens_per_s, model_tflops   the jitted `StepFunctions.train_step` on a one-device mesh, median of --steps timed
                               steps; model FLOPs are `trainer.flops.flops_per_token` (6·N + attention, recomputation
                               not counted)
  roof_tflops                  the machine's dense-matmul roof: the fastest [S×S]@[S×S] any library in the process
                               reaches in the same run (XLA bf16 and fp32 jnp.dot, torch fp32 and bf16 matmul);
                               cpu_mfu = model_tflops / roof_tflops, roof_source names the winner
  matmul_tflops                XLA's own jnp.dot in the model's compute dtype; cpu_mfu_xla = model_tflops /
                               matmul_tflops (the older ratio: flattering where XLA's matmul is the slow one)
  torch_tokens_per_s           the same shapes in transformers' LlamaForCausalLM + torch.optim.AdamW (+ grad clipping,
                               like ours), fp32, same batch, same thread count; vs_torch = ours / torch's
  compile_s_{2,24}_layers      `.lower(abstract state, batch)` + `.compile()` of the jitted train step of the same
                               config with 2 and 24 scanned layers (nothing allocated); compile_ratio_24_vs_2 = 24 / 2

After compiling, the JAX step, the reference matmuls and the torch step are timed in --rounds alternating blocks, each
block opened by --warmup untimed calls (a JAX step right after a torch step measured up to ~30% slower), so a
neighbour's burst on a shared machine is spread over all of them.

The bench runs on one device (mesh.data = mesh.fsdp = mesh.tensor = 1, the first device). On CPU it measures the
options that were fastest there (CPU_DEFAULTS below, and the XLA:CPU flags `trainer.cpu_tuning` chooses for the CPU
and jax version, as `python -m trainer.main` does; docs/bench.md has the tables); `--stock` measures the config as it
is. Overrides after the options go through `trainer.config.load_config` and win over those defaults.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):  # `python bench/step.py`: make the repo importable like `python -m bench.step`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (  # noqa: E402
    REPO,
    block_rounds,
    loadavg,
    log,
    machine_info,
    print_json,
    ratio,
    timed,
)
from trainer import cpu_tuning  # noqa: E402  (imports nothing of jax)

DEFAULT_CONFIG = os.path.join(REPO, "configs", "small.yml")
# One device, whatever the config's mesh says: the bench measures a single CPU (or accelerator) device.
SINGLE_DEVICE = ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "mesh.dcn_data=1", "mesh.dcn_fsdp=1")
# On CPU, the config options that measured fastest for the small model (docs/bench.md has the table); they come before
# the command line's overrides, so those win. Not applied on accelerators or with --stock.
CPU_DEFAULTS = ("model.compute_dtype=bfloat16", "model.remat_policy=save_matmuls", "model.scan_layers=true")
# Dense-matmul roof candidates, in both libraries: the machine's roof is the fastest of them (on a Zen 4 EPYC torch's
# bfloat16 matmul, through oneDNN's AVX512-BF16 kernels, ran ~2× its float32; XLA:CPU's bfloat16 dot does not).
ROOF_DTYPES = ("bfloat16", "float32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.step",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="model/recipe YAML (default: configs/small.yml)")
    p.add_argument("--steps", type=int, default=4, help="timed train steps per framework (median reported)")
    p.add_argument("--rounds", type=int, default=2, help="alternating blocks the timed steps are split into")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls at the start of every block")
    p.add_argument("--matmul-size", type=int, default=4096, help="S of the [S×S]@[S×S] reference matmul")
    p.add_argument("--compile-layers", default="2,24", help="two layer counts whose compile times are compared")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count(), like XLA)")
    p.add_argument("--skip-torch", action="store_true", help="no PyTorch baseline (vs_torch = null)")
    p.add_argument("--skip-compile", action="store_true", help="no 2-vs-24-layer compile measurement")
    p.add_argument(
        "--stock",
        action="store_true",
        help="measure the config as it is: no CPU option defaults, no XLA:CPU flag from the bench",
    )
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = p.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            p.error(f"override {item!r} must look like section.key=value")
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--steps and --rounds must be ≥ 1, --warmup ≥ 0")
    args.rounds = min(args.rounds, args.steps)
    return args


def _random_batch() -> Callable[..., dict[str, Any]]:
    """`tests/support/batches.py:random_batch`, loaded by path (the tests folder is not an installed package)."""
    path = os.path.join(REPO, "tests", "support", "batches.py")
    spec = importlib.util.spec_from_file_location("_bench_batches", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_batch


def _load(config_path: str, overrides: list[str]) -> Any:
    from trainer.config import load_config

    return load_config(config_path, list(SINGLE_DEVICE) + list(overrides))


def _mesh(config: Any) -> Any:
    import jax

    from trainer.sharding import make_mesh

    return make_mesh(config.mesh, jax.devices()[:1])


def _tune_cpu(stock: bool) -> list[str]:
    """Before jax starts its backend: the XLA:CPU flags `python -m trainer.main` adds on this CPU and jax version
    (trainer.cpu_tuning), so the bench compiles what a training run compiles; none with --stock."""
    return [] if stock else cpu_tuning.add_xla_flags(cpu_tuning.choose(cpu_tuning.detect()).xla_flags)


# ---------------------------------------------------------------------------------------------- the pieces


def prepare_jax_step(config: Any, host_batch: dict[str, Any]) -> dict[str, Any]:
    """The jitted train step on one device, compiled by a first (timed) call; `step()` runs one and blocks."""
    import jax

    from trainer.step import make_step_functions

    trainer = make_step_functions(config, _mesh(config))
    batch = jax.device_put(host_batch, trainer.batch_sharding)
    holder: dict[str, Any] = {"state": trainer.init(jax.random.key(config.train.seed))}
    jax.block_until_ready(holder["state"])

    def step() -> None:
        state, metrics = trainer.train_step(holder["state"], batch)
        jax.block_until_ready((state, metrics))
        holder["state"], holder["metrics"] = state, metrics

    log("jax: first train step (trace + compile + run) ...")
    first_s, _ = timed(step)
    log(f"jax: first call {first_s:.2f} s")
    return {"step": step, "first_call_s": first_s, "loss": lambda: float(holder["metrics"]["loss"])}


def prepare_matmul(size: int, dtype: str) -> Callable[[], None]:
    """A jitted, compiled [size×size]@[size×size] jnp.dot in `dtype`; calling it runs one and blocks."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))

    def run() -> None:
        jax.block_until_ready(dot(a, b))

    run()
    return run


def prepare_torch_matmul(size: int, dtype: str, threads: int) -> Callable[[], None]:
    """torch's own [size×size]@[size×size] in `dtype` (its BLAS / oneDNN): a candidate for the machine's roof."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))

    def run() -> None:
        a @ b

    run()
    return run


def prepare_torch_step(config: Any, host_batch: dict[str, Any], threads: int) -> dict[str, Any]:
    """The same shapes in transformers' LlamaForCausalLM + torch.optim.AdamW (+ grad clipping), fp32."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, o = config.model, config.optimizer
    hf_config = LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.embed_dim,
        intermediate_size=m.mlp_dim,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        head_dim=m.resolved_head_dim,
        max_position_embeddings=m.max_seq_len,
        rms_norm_eps=m.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
        tie_word_embeddings=m.tie_embeddings,
        initializer_range=m.init_std,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        use_cache=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(hf_config).to(torch.float32)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay
    )
    inputs = torch.from_numpy(np.asarray(host_batch["inputs"], np.int64))
    targets = torch.from_numpy(np.asarray(host_batch["targets"], np.int64))
    holder: dict[str, Any] = {}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        if o.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        holder["loss"] = loss.item()

    seconds, _ = timed(step)  # the first eager step allocates gradients and optimizer state
    log(f"torch: first step {seconds:.2f} s")
    return {
        "step": step,
        "params": sum(p.numel() for p in model.parameters()),
        "loss": lambda: holder["loss"],
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


def _lower_train_step(trainer: Any, config: Any, *args: Any) -> Any:
    """`trainer.train_step.lower(*args)`: the jitted step lowered under its mesh and logical rules (AOT)."""
    step = trainer.train_step
    if hasattr(step, "lower"):  # trainer.train.InMesh
        return step.lower(*args)
    # an older StepFunctions whose train_step is a plain wrapper closing over the jit object `fn`
    from trainer import sharding

    fn = inspect.getclosurevars(step).nonlocals.get("fn")
    if fn is None or not hasattr(fn, "lower"):
        raise RuntimeError("can't lower StepFunctions.train_step: it has no .lower and wraps no jax.jit function `fn`")
    with sharding.activate(trainer.mesh, config):
        return fn.lower(*args)


def bench_compile(config_path: str, overrides: list[str], layers: int) -> dict[str, float]:
    """Seconds to trace+lower and to compile the train step with `layers` scanned layers (abstract inputs only)."""
    import jax

    from trainer.step import BATCH_KEYS, make_step_functions

    config = _load(config_path, list(overrides) + [f"model.num_layers={layers}", "model.scan_layers=true"])
    trainer = make_step_functions(config, _mesh(config))
    shape = (config.train.global_batch_size, config.train.seq_len)
    dtypes = {"loss_mask": "float32"}
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtypes.get(k, "int32"), sharding=trainer.batch_sharding) for k in BATCH_KEYS
    }
    start = time.perf_counter()
    lowered = _lower_train_step(trainer, config, trainer.abstract_state, batch)
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    result = {"lower_s": lowered_at - start, "compile_s": done - lowered_at, "total_s": done - start}
    log(f"compile {layers} layers: lower {result['lower_s']:.2f} s + compile {result['compile_s']:.2f} s")
    return result


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine_info()
    log(f"machine: {info['cpu']}, {info['cpu_count']} cores, load average {info['loadavg_at_start']}")
    added_flags = _tune_cpu(args.stock)

    import jax

    from trainer.model.flops import flops_per_token, param_count

    on_cpu = jax.default_backend() == "cpu"
    defaults = list(CPU_DEFAULTS) if on_cpu and not args.stock else []
    overrides = defaults + list(args.overrides)
    config = _load(args.config, overrides)
    m, t = config.model, config.train
    tokens_per_step = t.global_batch_size * t.seq_len
    fpt = flops_per_token(m, t.seq_len)
    log(
        f"config {os.path.relpath(args.config, REPO)}: {param_count(m) / 1e6:.1f}M params, batch {t.global_batch_size}"
        f" × seq {t.seq_len}, compute {m.compute_dtype}, remat {m.remat_policy}, scan {m.scan_layers}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    host_batch = _random_batch()(0, t.global_batch_size, t.seq_len, m.vocab_size)

    # prepare (compile, warm up) everything, then time round-robin
    jax_step = prepare_jax_step(config, host_batch)
    fns: dict[str, Callable[[], None]] = {"jax_step": jax_step["step"]}
    # the roof candidates: every dense matmul of the same size the process can run (ROOF_DTYPES, both libraries)
    for dtype in ROOF_DTYPES:
        fns[f"xla_matmul_{dtype}"] = prepare_matmul(args.matmul_size, dtype)
    threads = args.threads or os.cpu_count() or 1
    torch_step = None
    if not args.skip_torch:
        log(f"torch: LlamaForCausalLM + AdamW, fp32, {threads} threads ...")
        torch_step = prepare_torch_step(config, host_batch, threads)
        fns["torch_step"] = torch_step["step"]
        for dtype in ROOF_DTYPES:
            fns[f"torch_matmul_{dtype}"] = prepare_torch_matmul(args.matmul_size, dtype, threads)
    per_block = -(-args.steps // args.rounds)
    times = block_rounds(fns, args.rounds, per_block, settle=args.warmup, label="timed")
    matmul_flops = 2.0 * args.matmul_size**3
    roofs = {  # TFLOP/s of each matmul by wall time, and by this process's CPU time (per CPU second)
        name: (matmul_flops / times[name]["median_s"] / 1e12, matmul_flops / times[name]["cpu_median_s"] / 1e12)
        for name in fns
        if "_matmul_" in name
    }
    roof_source = max(roofs, key=lambda name: roofs[name][0])
    roof_tflops = roofs[roof_source][0]
    roof_cputime = max(cpu for _, cpu in roofs.values())

    step_s, step_cpu_s = times["jax_step"]["median_s"], times["jax_step"]["cpu_median_s"]
    tokens_per_s = tokens_per_step / step_s
    model_tflops = tokens_per_s * fpt / 1e12
    matmul_tflops = roofs[f"xla_matmul_{m.compute_dtype}"][0] if m.compute_dtype in ROOF_DTYPES else None
    matmul_f32_tflops = roofs["xla_matmul_float32"][0]
    # the same ratio from CPU seconds: the step's FLOPs per CPU second over the best matmul's, robust to a busy machine
    cpu_mfu_cputime = ratio(tokens_per_step * fpt / step_cpu_s / 1e12, roof_cputime)
    torch_tokens_per_s = tokens_per_step / times["torch_step"]["median_s"] if torch_step else None
    torch_matmul_tflops = roofs["torch_matmul_float32"][0] if torch_step else None
    torch_matmul_bf16_tflops = roofs["torch_matmul_bfloat16"][0] if torch_step else None
    jax_loss, first_call_s = jax_step["loss"](), jax_step["first_call_s"]
    torch_loss = torch_step["loss"]() if torch_step else None
    torch_params = torch_step["params"] if torch_step else None
    torch_note = None
    if torch_step:
        torch_note = (
            f"torch {torch_step['version']} eager fp32, attn {torch_step['attn_implementation']}, "
            f"{torch_step['threads']} threads"
        )
    del fns, jax_step, torch_step
    gc.collect()

    compile_results: dict[int, dict[str, float]] = {}
    layer_counts = [int(x) for x in args.compile_layers.split(",")]
    if not args.skip_compile:
        for layers in layer_counts:
            compile_results[layers] = bench_compile(args.config, overrides, layers)
    lo, hi = (layer_counts + [None, None])[:2]
    compile_lo = compile_results.get(lo, {}).get("total_s")
    compile_hi = compile_results.get(hi, {}).get("total_s")

    device = jax.devices()[0]
    load_end = loadavg()
    notes = [
        f"machine shared with other jobs: load average {info['loadavg_at_start']} at start, {load_end} at end on "
        f"{info['cpu_count']} cores; medians of {args.rounds * per_block} timed calls each, in {args.rounds} "
        f"alternating blocks (JAX step, matmuls, torch step), {args.warmup} untimed call(s) opening every block; "
        "step_cpu_s / cpu_mfu_cputime use CPU time and move less with the load",
        f"model: compute {m.compute_dtype}, params {m.param_dtype}, remat {m.remat_policy}, "
        f"scan_layers {m.scan_layers}, attention {m.attention}; bench defaults {defaults or 'none'} "
        f"(before the command line's overrides); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        + (f" ({' '.join(added_flags)} added as trainer.cpu_tuning chose)" if added_flags else ""),
        "model FLOPs = trainer.flops.flops_per_token (6·N_matmul + causal attention), recomputation not counted",
        f"cpu_mfu = model_tflops / roof_tflops, the fastest {args.matmul_size}² matmul measured in this run ("
        + ", ".join(f"{name.replace('_matmul_', ' ')} {wall:.3f}" for name, (wall, _) in roofs.items())
        + f" TFLOP/s; roof: {roof_source}); cpu_mfu_xla = model_tflops / XLA's own {m.compute_dtype} matmul "
        f"({ratio(model_tflops, matmul_tflops) or 0:.2f}), the older, flattering ratio",
    ]
    if args.skip_torch:
        notes.append("--skip-torch: the roof is XLA's matmuls only (torch's were not measured)")
    if m.compute_dtype != "float32" and on_cpu:
        notes.append(
            "XLA:CPU of jax 0.10 runs bfloat16 dots as float32 dots (converts around them): bfloat16 compute saves "
            "memory traffic (activations, residuals), not matmul time (jax 0.12 runs them in bfloat16); torch runs fp32"
        )
    if torch_note:
        notes.append(torch_note)
    if compile_results:
        notes.append(
            f"compile_s = jitted train step .lower(abstract inputs) + .compile(), scan on, remat {m.remat_policy}; "
            f"the first call of the {m.num_layers}-layer bench step (trace + compile + run) took {first_call_s:.1f} s"
        )

    result = {
        "config": os.path.relpath(os.path.abspath(args.config), REPO),
        "overrides": overrides,
        "params": param_count(m),
        "tokens_per_step": tokens_per_step,
        "flops_per_token": fpt,
        "step_time_s": step_s,
        "step_times_s": times["jax_step"]["times_s"],
        "step_cpu_s": step_cpu_s,
        "tokens_per_s": tokens_per_s,
        "model_tflops": model_tflops,
        "roof_tflops": roof_tflops,
        "roof_source": roof_source,
        "matmul_tflops": matmul_tflops,
        "matmul_tflops_float32": matmul_f32_tflops,
        "matmul_tflops_bfloat16": roofs["xla_matmul_bfloat16"][0],
        "matmul_size": args.matmul_size,
        "cpu_mfu": ratio(model_tflops, roof_tflops),
        "cpu_mfu_xla": ratio(model_tflops, matmul_tflops),
        "cpu_mfu_cputime": cpu_mfu_cputime,
        "loss": jax_loss,
        "torch_tokens_per_s": torch_tokens_per_s,
        "torch_step_time_s": times["torch_step"]["median_s"] if torch_loss is not None else None,
        "torch_step_times_s": times["torch_step"]["times_s"] if torch_loss is not None else None,
        "torch_step_cpu_s": times["torch_step"]["cpu_median_s"] if torch_loss is not None else None,
        "torch_loss": torch_loss,
        "torch_params": torch_params,
        "torch_matmul_tflops": torch_matmul_tflops,
        "torch_matmul_tflops_bfloat16": torch_matmul_bf16_tflops,
        "vs_torch": ratio(tokens_per_s, torch_tokens_per_s),
        f"compile_s_{lo}_layers": compile_lo,
        f"compile_s_{hi}_layers": compile_hi,
        f"compile_ratio_{hi}_vs_{lo}": ratio(compile_hi, compile_lo),
        "compile_detail": {str(k): v for k, v in compile_results.items()},
        "first_call_s": first_call_s,
        "compute_dtype": m.compute_dtype,
        "remat_policy": m.remat_policy,
        "scan_layers": m.scan_layers,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "threads": threads,
        "device": f"{device.platform}:{device.device_kind}",
        "cpu": info["cpu"],
        "jax_version": jax.__version__,
        "loadavg_start": info["loadavg_at_start"],
        "loadavg_end": load_end,
        "bench_wall_s": time.perf_counter() - started,
        "notes": notes,
    }
    log(
        f"done in {result['bench_wall_s']:.0f} s: {tokens_per_s:.0f} tok/s, {model_tflops:.3f} TFLOP/s, "
        f"cpu_mfu {result['cpu_mfu']:.2f} of {roof_tflops:.3f} TFLOP/s ({roof_source}; cpu-time "
        f"{cpu_mfu_cputime:.2f}; vs XLA's own matmul {result['cpu_mfu_xla'] or 0:.2f}), vs_torch {result['vs_torch']}"
    )
    print_json(result)


if __name__ == "__main__":
    main()
