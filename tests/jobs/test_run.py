"""Whole training jobs: exact resume, kill -9, SIGTERM, another mesh, gs://, non-finite steps, the supervisor."""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from runs import (
    REPO,
    assert_params_equal,
    final_params,
    losses,
    prepare_corpus,
    start,
    train,
    trainer_env,
    write_config,
)

STEPS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_corpus(str(tmp_path_factory.mktemp("corpus") / "stdlib-512"))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted run: per-step losses and final params."""
    base = tmp_path_factory.mktemp("reference")
    run_dir = str(base / "run")
    out = train(write_config(str(base / "c.yml"), corpus, run_dir))
    assert "eval_loss" in out and "sample (greedy)" in out
    assert "\ncpu: " in out and "[TRAINER_CPU_TUNING=0: off]" in out  # the CPU settings chosen, said at start-up
    return losses(run_dir), final_params(run_dir)


def _config(tmp_path, corpus, name="run", **sections):
    run_dir = str(tmp_path / name)
    return write_config(str(tmp_path / f"{name}.yml"), corpus, run_dir, **sections), run_dir


def test_run_folder_has_config_metrics_curve_tensorboard_and_tokenizer(corpus, reference, tmp_path):
    ref_losses, _ = reference
    assert sorted(ref_losses) == list(range(1, STEPS + 1))
    config, run_dir = _config(tmp_path, corpus, train={"steps": 2}, eval={"every_steps": 2})
    train(config)
    names = set(os.listdir(run_dir))
    assert {"config.yaml", "metrics.jsonl", "loss.png", "tensorboard", "checkpoints", "tokenizer"} <= names
    rows = pathlib.Path(run_dir, "metrics.jsonl").read_text().splitlines(keepends=True)
    assert any('"eval_loss"' in r for r in rows) and all('"step"' in r for r in rows)
    again = train(config)  # a finished run started again says so and changes nothing
    assert "already done" in again and "sample (greedy)" not in again
    assert pathlib.Path(run_dir, "metrics.jsonl").read_text().splitlines(keepends=True) == rows


def test_stop_and_resume_is_bitwise_identical(corpus, reference, tmp_path):
    ref_losses, ref_params = reference
    config, run_dir = _config(tmp_path, corpus)
    out = train(config, expect=143, TRAINER_TEST_STOP_AT="3")  # an async save of step 2 may still be in flight
    assert "stopped at step 3" in out
    train(config)
    assert losses(run_dir) == ref_losses
    assert_params_equal(final_params(run_dir), ref_params)


def test_kill_9_at_random_moments_then_resume(corpus, reference, tmp_path):
    """Killed while stepping and while writing checkpoints (every 2 steps): never a partial checkpoint loaded."""
    ref_losses, ref_params = reference
    config, run_dir = _config(tmp_path, corpus)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    rng = random.Random(0)
    for _attempt in range(3):
        before = len(losses(run_dir)) if os.path.exists(metrics) else 0
        target = min(before + rng.randint(1, 3), STEPS - 1)
        proc = start(config)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(metrics) and max(losses(run_dir), default=0) >= target:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # land anywhere in the next step or checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert os.listdir(os.path.join(run_dir, "checkpoints"))
    train(config)
    final = losses(run_dir)
    assert final == ref_losses
    assert_params_equal(final_params(run_dir), ref_params)


def test_sigterm_saves_the_step_reached_and_resume_continues(corpus, reference, tmp_path):
    ref_losses, ref_params = reference
    config, run_dir = _config(tmp_path, corpus, train={"steps": 200})
    proc = start(config)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (os.path.exists(metrics) and len(losses(run_dir)) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    from trainer.checkpoint import Checkpointer
    from trainer.config import CheckpointConfig

    reached = max(losses(run_dir))
    assert Checkpointer(run_dir, CheckpointConfig()).latest_step() == reached
    assert f"stopped at step {reached}" in out
    ckpt_losses = dict(losses(run_dir))
    train(config, "train.steps=200", "checkpoint.every_steps=1000", TRAINER_TEST_STOP_AT=str(reached + 2), expect=143)
    straight, straight_dir = _config(tmp_path, corpus, name="straight", train={"steps": 200})
    train(straight, TRAINER_TEST_STOP_AT=str(reached + 2), expect=143)
    assert losses(run_dir) == losses(straight_dir)
    assert {k: v for k, v in losses(run_dir).items() if k <= reached} == ckpt_losses


def test_restore_onto_another_mesh_gives_the_same_next_loss(corpus, reference, tmp_path):
    ref_losses, _ = reference
    config, run_dir = _config(tmp_path, corpus)
    train(config, expect=143, TRAINER_TEST_STOP_AT="4")
    for name, overrides, devices in [
        ("fsdp8", ["mesh.data=1", "mesh.fsdp=8"], 8),
        ("one", ["mesh.data=1", "mesh.fsdp=1"], 1),
    ]:
        other = str(tmp_path / name)
        shutil.copytree(run_dir, other)
        train(config, f"run.dir={other}", *overrides, "train.steps=5", devices=devices)
        np.testing.assert_allclose(losses(other)[5], ref_losses[5], rtol=1e-5)


def test_checkpoints_to_gcs_and_resume(corpus, reference, tmp_path):
    from gcs_emulator import gcs_emulator

    ref_losses, ref_params = reference
    with gcs_emulator() as gcs:
        run_url = gcs.url("runs/micro")
        config = write_config(str(tmp_path / "gcs.yml"), corpus, run_url)
        train(config, expect=143, TRAINER_TEST_STOP_AT="3")
        train(config)
        from trainer import storage

        assert storage.exists(storage.join(run_url, "metrics.jsonl"))
        assert storage.exists(storage.join(run_url, "loss.png"))
        assert_params_equal(final_params(run_url), ref_params)
        local = str(tmp_path / "metrics.jsonl")
        with open(local, "wb") as f:
            f.write(storage.read_bytes(storage.join(run_url, "metrics.jsonl")))
        os.makedirs(tmp_path / "m", exist_ok=True)
        shutil.move(local, tmp_path / "m" / "metrics.jsonl")
        assert losses(str(tmp_path / "m")) == ref_losses


def test_poisoned_batch_is_skipped_and_counted(corpus, tmp_path):
    config, run_dir = _config(tmp_path, corpus)
    out = train(config, TRAINER_TEST_POISON_STEPS="3")
    assert "step 3: non-finite loss or gradients, update skipped (1 in a row, 1 in all)" in out
    import json

    rows = [
        json.loads(line) for line in pathlib.Path(run_dir, "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert rows[-1]["skipped_steps"] == 1 and np.isfinite(rows[-1]["loss"])
    params = final_params(run_dir)
    import jax

    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_persistent_nonfinite_stops_cleanly_with_last_good_checkpoint(corpus, tmp_path):
    config, run_dir = _config(tmp_path, corpus, train={"max_consecutive_nonfinite": 3})
    out = train(config, TRAINER_TEST_POISON_STEPS="5,6,7,8", expect=3)
    assert "stopping: 3 non-finite steps in a row" in out
    from trainer.checkpoint import load_params

    _, params, step = load_params(run_dir)
    assert step == 6  # steps 5 and 6 were skipped: the state saved at 6 is the good state of step 4
    assert_params_equal(params, load_params(run_dir, 4)[1])
    import jax

    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_supervisor_restarts_a_crashing_job_until_it_finishes(corpus, reference, tmp_path):
    ref_losses, ref_params = reference
    config, run_dir = _config(tmp_path, corpus)
    counter = tmp_path / "attempts"
    wrapper = tmp_path / "job.py"
    wrapper.write_text(
        "import os, subprocess, sys\n"
        f"path = {str(counter)!r}\n"
        "n = int(open(path).read()) + 1 if os.path.exists(path) else 1\n"
        "open(path, 'w').write(str(n))\n"
        "env = dict(os.environ)\n"
        "if n <= 2: env['TRAINER_TEST_CRASH_AT'] = str(2 * n + 1)\n"
        f"sys.exit(subprocess.call([sys.executable, '-m', 'trainer.main', {config!r}], env=env))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.supervise",
            "--max-restarts",
            "3",
            "--backoff",
            "0.1",
            "--",
            sys.executable,
            str(wrapper),
        ],
        cwd=REPO,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert counter.read_text() == "3"
    assert result.stderr.count("restart") >= 2
    assert losses(run_dir) == ref_losses
    assert_params_equal(final_params(run_dir), ref_params)


def test_supervisor_does_not_restart_a_bad_config(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.supervise",
            "--backoff",
            "0.1",
            "--",
            sys.executable,
            "-m",
            "trainer.main",
            "configs/tiny.yml",
            "model.num_layrs=3",
        ],
        cwd=REPO,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "restart 1" not in result.stderr


def test_main_job_with_placeholder_bucket_fails_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "trainer.main", "configs/303m.yml"],
        cwd=REPO,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "example placeholder" in lines[0] and "trainer.data.prepare" in lines[0]


def test_restore_from_another_run_params_only_or_whole_state(corpus, reference, tmp_path):
    _, ref_params = reference
    source, source_dir = _config(tmp_path, corpus, name="source")
    train(source)
    # params only: a fresh optimizer and step 0; warmup makes step 1's learning rate 0, so the params stay the source's
    config, run_dir = _config(
        tmp_path,
        corpus,
        name="finetune",
        train={"steps": 2},
        checkpoint={"restore_from": source_dir + ":8", "every_steps": 1},
    )
    out = train(config)
    assert "started from" in out and "params only" in out
    assert_params_equal(final_params(run_dir, 1), ref_params)
    assert losses(run_dir)[1] < losses(source_dir)[1] - 0.3  # starts where the source ended, not from scratch
    # the whole state: the step and optimizer moments continue (steps 9 and 10 of the same schedule)
    config, run_dir = _config(
        tmp_path,
        corpus,
        name="continue",
        train={"steps": 10},
        checkpoint={"restore_from": source_dir, "restore_params_only": False},
    )
    train(config)
    assert sorted(losses(run_dir)) == [9, 10]
