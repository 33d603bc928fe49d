"""`--dry-run --target 2xl40s`: the real train and eval steps compiled by XLA's GPU compiler (the CUDA plugin) for
NVIDIA GPUs that are not here, per-GPU memory against the share JAX may use, and the one-line refusals around it.

The refusals run everywhere. The compiles need the CUDA plugin and ptxas and nothing else (no driver, no GPU): either
installed in the environment (`pip install -e ".[gpu-compile]"`) or in a folder of their own named by
TRAINER_GPU_COMPILE_PATH (how CI runs them: a CUDA plugin in the environment makes jax print driver-probe lines on
stderr at every start-up, which the one-line-error tests of every other file would see). They run as subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from trainer.errors import ConfigError
from trainer.main import main
from trainer.target import gpu as gpu_targets
from trainer.target.gpu import GPUS, MiB, parse_gpu_target

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.yml")


GPU_COMPILE_PATH = os.environ.get("TRAINER_GPU_COMPILE_PATH")


def _has_cuda_plugin() -> bool:
    if GPU_COMPILE_PATH:
        return os.path.isdir(os.path.join(GPU_COMPILE_PATH, "jax_plugins", "xla_cuda12"))
    try:
        gpu_targets.require_cuda_plugin()
    except ConfigError:
        return False
    return True


needs_cuda_plugin = pytest.mark.skipif(
    not _has_cuda_plugin(),
    reason='compiling for GPUs needs the CUDA plugin: pip install -e ".[gpu-compile]" (or '
    "TRAINER_GPU_COMPILE_PATH: a folder holding it)",
)


def _python(*args: str, **env: str | None) -> subprocess.CompletedProcess:
    """`python ARGS` with the CUDA plugin importable (TRAINER_GPU_COMPILE_PATH on PYTHONPATH when set); an `env`
    value of None removes that variable."""
    path = [p for p in (GPU_COMPILE_PATH, REPO, os.environ.get("PYTHONPATH")) if p]
    variables = {**os.environ, "PYTHONPATH": os.pathsep.join(path), **env}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in variables.items() if v is not None},
    )


def _dry_run(*argv: str, **env: str | None) -> tuple[int, list[str], list[str]]:
    """`python -m trainer.main tiny.yml --dry-run ARGV` → exit code, stdout lines, stderr lines."""
    done = _python("-m", "trainer.main", TINY, "--dry-run", *argv, **env)
    return done.returncode, done.stdout.strip().splitlines(), done.stderr.strip().splitlines()


def _run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


@pytest.mark.parametrize(
    "name, device, count",
    [
        ("2xl40s", "NVIDIA L40S", 2),
        ("2xRTX-PRO-6000", "NVIDIA RTX PRO 6000 Blackwell", 2),
        ("8xh100", "NVIDIA H100 80GB HBM3", 8),
        ("1xa100", "NVIDIA A100-SXM4-80GB", 1),
    ],
)
def test_gpu_names_map_to_a_one_machine_topology(monkeypatch, name, device, count):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    t = parse_gpu_target(name)
    assert (t.model.device, t.chips, t.topology, t.slices) == (device, count, f"1x1x{count}", 1)
    assert t.hbm_bytes == int(0.75 * t.model.memory_bytes)  # JAX's allocator takes 75% of each GPU by default
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    assert parse_gpu_target(name).hbm_bytes == int(0.9 * t.model.memory_bytes)


def test_l40s_capacity_is_what_its_driver_reports():
    assert GPUS["l40s"].memory_bytes == 46068 * MiB and parse_gpu_target("2xl40s").model.compute_capability == (8, 9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--target", "2xl40"], "error: unknown GPU model 'l40' in --target 2xl40; did you mean '2xl40s'?\n"),
        (
            ["--target", "l40s"],
            "error: unknown target 'l40s': give a TPU type (v4-32, v5e-16, ...) or GPUs as "
            "COUNTxMODEL, e.g. 2xl40s (models: l40s, rtx-pro-6000, h100, a100)\n",
        ),
        (["--target", "0xh100"], "error: --target 0xh100: at least one GPU, e.g. 1xh100\n"),
        (
            ["--target", "2xl40s", "--slices", "2"],
            "error: --slices is for TPU slices; a GPU target is one machine (COUNTxMODEL)\n",
        ),
    ],
)
def test_bad_gpu_targets_are_one_line(capsys, argv, message):
    code, out, err = _run(capsys, TINY, "--dry-run", *argv)
    assert (code, out, err) == (2, [], message)


def test_bad_memory_fraction_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "75%")
    code, _, err = _run(capsys, TINY, "--dry-run", "--target", "2xl40s")
    assert code == 2 and err == "error: XLA_PYTHON_CLIENT_MEM_FRACTION='75%': give a fraction in (0, 1], e.g. .9\n"


def test_without_the_cuda_plugin_names_the_extra(capsys, monkeypatch):
    real = gpu_targets.importlib.util.find_spec
    monkeypatch.setattr(
        gpu_targets.importlib.util, "find_spec", lambda n, *a: None if n.startswith("jax_plugins") else real(n, *a)
    )
    code, out, err = _run(capsys, TINY, "--dry-run", "--target", "2xl40s")
    assert (code, out) == (2, [])
    assert err == 'error: compiling for NVIDIA GPUs needs the CUDA plugin: pip install -e ".[gpu-compile]"\n'


@needs_cuda_plugin
def test_every_gpu_description_is_accepted_by_the_plugin():
    """The table's device descriptions parse as the plugin's GpuTargetConfigProto and name their GPU."""
    script = (
        "import json; from trainer.target.gpu import GPUS, gpu_devices, parse_gpu_target; "
        "print(json.dumps({m: [(d.device_kind, d.platform) for d in gpu_devices(parse_gpu_target('2x' + m))] "
        "for m in GPUS}))"
    )
    done = _python("-c", script, JAX_PLATFORMS="cpu")
    assert done.returncode == 0, done.stderr
    kinds = json.loads(done.stdout.strip().splitlines()[-1])
    assert kinds == {m: [[GPUS[m].device, "gpu"]] * 2 for m in GPUS}


@needs_cuda_plugin
def test_compiles_the_real_step_for_two_gpus():
    code, out, err = _dry_run("--target", "2xl40s", XLA_PYTHON_CLIENT_MEM_FRACTION=None)
    text = "\n".join(out)
    assert code == 0, "\n".join(err)
    record = json.loads(out[-1])
    assert "compiled   train and eval steps with the XLA GPU compiler (CUDA plugin)" in text
    assert "per GPU" in text and out[-2].startswith("fits: peak ") and out[-2].endswith(" per GPU")
    assert (record["target"], record["chips"], record["topology"], record["fits"]) == ("2xl40s", 2, "1x1x2", True)
    assert record["hbm_capacity_bytes"] == int(0.75 * 46068 * MiB)
    assert record["temp_bytes"] > 0 and record["params_bytes"] > 0
    assert record["params_bytes"] + record["optimizer_bytes"] < record["hbm_peak_bytes"] < record["hbm_capacity_bytes"]


@needs_cuda_plugin
def test_not_fitting_on_one_gpu_names_the_microbatches_that_fit():
    # 64 × 2048 tokens through the tiny model on one A100 with 10% of its memory for JAX (7.9 GiB): ~14 GiB at once,
    # ~7 GiB in two microbatches. XLA's GPU compiler compiles over-budget programs: the search compares the peaks.
    code, out, err = _dry_run(
        "--target",
        "1xa100",
        "train.global_batch_size=64",
        "train.seq_len=2048",
        "model.max_seq_len=2048",
        XLA_PYTHON_CLIENT_MEM_FRACTION=".1",
    )
    assert code == 1, "\n".join(err)
    verdict = next(line for line in out if line.startswith("does not fit"))
    assert re.fullmatch(
        r"does not fit: [\d.]+ GiB > 7.93 GiB per GPU; fits with train\.microbatches=2 "
        r"\([\d.]+ GiB\)",
        verdict,
    ), verdict
    assert [line for line in out if line.startswith("tried")][0].startswith("tried      train.microbatches=2: fits")
    assert json.loads(out[-1])["suggestion"]["changes"] == ["train.microbatches=2"]


@needs_cuda_plugin
def test_cudnn_attention_compiles_or_names_what_is_missing():
    """jax 0.12 compiles cuDNN attention without cuDNN installed; jax 0.10 needs cuDNN to trace it: one line then."""
    code, out, err = _dry_run("--target", "2xl40s", "model.attention=cudnn")
    if code == 0:
        assert json.loads(out[-1])["fits"] is True
    else:
        # the lines before ours are the CUDA plugin's driver probe, printed by jax at start-up on a machine without GPUs
        assert code == 2 and err[-1] == f"error: {gpu_targets.CUDNN_HINT}" and "Traceback" not in "\n".join(err), err
