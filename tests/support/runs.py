"""Helpers for tests that run whole training jobs: a small prepared corpus, configs, subprocess runs, results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Modules a trainer subprocess may load as `TRAINER_HOOKS` plugins: the test faults (plugins/fault_injection.py).
PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")

MICRO = {
    "model": {
        "vocab_size": 512,
        "embed_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "mlp_dim": 128,
        "max_seq_len": 64,
        "compute_dtype": "float32",
        "remat_policy": "none",
    },
    "mesh": {"data": 2, "fsdp": 4, "tensor": 1},
    "train": {"steps": 8, "global_batch_size": 8, "seq_len": 64, "seed": 3},
    "optimizer": {"learning_rate": 1e-2, "warmup_steps": 2},
    "eval": {"every_steps": 4, "batches": 2},
    "checkpoint": {"every_steps": 2, "keep": 10},
    "log": {"every_steps": 1, "tensorboard": True, "sample_tokens": 4},
}


def prepare_corpus(out: str) -> str:
    """A small tokenized corpus (60 stdlib files, vocab 512) for training tests."""
    from trainer.data.text_prepare import prepare

    prepare(
        corpus="stdlib",
        out=out,
        vocab_size=512,
        max_files=60,
        val_fraction=0.1,
        workers=1,
        progress=False,
        verbose=False,
    )
    return out


def write_config(path: str, data_path: str, run_dir: str, **sections: dict) -> str:
    """A YAML config file: MICRO updated section by section, with the data and run folders."""
    raw = {k: dict(v) for k, v in MICRO.items()}
    raw["data"] = {"path": data_path}
    raw["run"] = {"dir": run_dir}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    with open(path, "w") as f:
        yaml.safe_dump({"base": os.path.join(REPO, "configs", "base.yml"), **raw}, f)
    return path


def trainer_env(devices: int = 8, **extra: str) -> dict[str, str]:
    """Environment for a trainer subprocess: `devices` CPU devices and the test faults installed (`extra` chooses
    them: TRAINER_TEST_STOP_AT="3", …, see plugins/fault_injection.py), plus any other variables in `extra`; a
    PYTHONPATH there goes in front of the repository and the plugins, which stay reachable."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    front = [extra.pop("PYTHONPATH")] if "PYTHONPATH" in extra else []
    env["PYTHONPATH"] = os.pathsep.join(front + [REPO, PLUGINS, env.get("PYTHONPATH", "")])
    env["TRAINER_HOOKS"] = "fault_injection:install"
    env.update(extra)
    return env


def start(config: str, *overrides: str, devices: int = 8, **hooks: str) -> subprocess.Popen:
    """Start `python -m trainer.main CONFIG overrides` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.main", config, *overrides],
        cwd=REPO,
        env=trainer_env(devices, **hooks),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def train(config: str, *overrides: str, devices: int = 8, expect: int = 0, timeout: float = 300, **hooks: str) -> str:
    """Run the trainer to its end and return its output; fails the test on an unexpected exit code."""
    proc = start(config, *overrides, devices=devices, **hooks)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == expect, f"exit code {proc.returncode}, expected {expect}:\n{out[-4000:]}"
    return out


def losses(run_dir: str) -> dict[int, float]:
    """Per-step training loss from metrics.jsonl (the last row per step wins, as after a resume)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                out[row["step"]] = row["loss"]
    return out


def final_params(run_dir: str, step: int | None = None) -> dict:
    """The params of a run's checkpoint as numpy arrays."""
    from trainer.checkpoint import load_params

    return load_params(run_dir, step)[1]


def assert_params_equal(a: dict, b: dict) -> None:
    """Bitwise equality of two param trees."""
    import jax

    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), f"params differ at {jax.tree_util.keystr(path)}"


def keep_tokenizer(data: str, run: str) -> None:
    """Copy a prepared folder's tokenizer (and a chat template beside it) into RUN/tokenizer, as training does: a run
    written with `checkpoint.save_params` then opens like a trained one."""
    target = os.path.join(run, "tokenizer")
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(data):
        if name == "tokenizer.model" or name.startswith("chat_template"):
            shutil.copy(os.path.join(data, name), target)
    if os.path.isdir(os.path.join(data, "tokenizer")):
        shutil.copytree(os.path.join(data, "tokenizer"), target, dirs_exist_ok=True)
