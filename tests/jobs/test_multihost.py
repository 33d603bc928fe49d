"""Many hosts, one code path: 2 processes × 4 CPU devices train like 1 process × 8 devices.

The global batches are bitwise the same (tests/data/test_data_pipeline.py checks that); the cross-process all-reduce
(gloo) sums in another order than the in-process one, so losses and params agree to float32 rounding, not bitwise.
A 2-process run and its own resume are bitwise identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from runs import (
    REPO,
    assert_params_equal,
    final_params,
    losses,
    prepare_corpus,
    train,
    trainer_env,
    write_config,
)

STEPS = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_corpus(str(tmp_path_factory.mktemp("corpus") / "stdlib-512"))


def _two_processes(config: str, *overrides: str, expect: int = 0, **hooks: str) -> str:
    env = trainer_env(**hooks)
    env.pop("XLA_FLAGS")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "local.py"),
            "--processes",
            "2",
            "--devices-per-process",
            "4",
            "--timeout",
            "400",
            "--",
            sys.executable,
            "-m",
            "trainer.main",
            config,
            *overrides,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = result.stdout + result.stderr
    assert result.returncode == expect, f"exit code {result.returncode}:\n{out[-5000:]}"
    return out


def assert_close(a: dict, b: dict) -> None:
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    run_dir = str(base / "run")
    train(write_config(str(base / "c.yml"), corpus, run_dir, train={"steps": STEPS}))
    return run_dir


@pytest.fixture(scope="module")
def two(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("two")
    run_dir = str(base / "run")
    out = _two_processes(write_config(str(base / "c.yml"), corpus, run_dir, train={"steps": STEPS}))
    assert "[0] " in out and "[1] " in out
    return run_dir


def test_two_processes_equal_one_process(single, two):
    assert sorted(losses(two)) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [losses(two)[s] for s in range(1, STEPS + 1)], [losses(single)[s] for s in range(1, STEPS + 1)], rtol=1e-6
    )
    for step in (2, 4, 5):
        assert_close(final_params(two, step), final_params(single, step))


def test_two_process_run_resumes_exactly_and_restores_in_one_process(corpus, single, two, tmp_path):
    run_dir = str(tmp_path / "two")
    config = write_config(str(tmp_path / "c.yml"), corpus, run_dir, train={"steps": STEPS})
    out = _two_processes(config, expect=143, TRAINER_TEST_STOP_AT="3")
    assert "stopped at step 3" in out
    one_dir = str(tmp_path / "one")
    shutil.copytree(run_dir, one_dir)
    _two_processes(config)
    assert losses(run_dir) == losses(two)
    assert_params_equal(final_params(run_dir), final_params(two))
    train(config, f"run.dir={one_dir}")  # the 2-process checkpoint of step 3, continued by 1 process
    np.testing.assert_allclose([losses(one_dir)[s] for s in (4, 5)], [losses(two)[s] for s in (4, 5)], rtol=1e-6)
    assert_close(final_params(one_dir), final_params(single))
