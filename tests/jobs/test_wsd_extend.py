"""WSD runs as whole jobs: extending a stable run bitwise, refusing a decayed one, a cooldown branch killed twice
under the supervisor, and the goodput ledger that accounts for the kills."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from runs import REPO, losses, prepare_corpus, train, trainer_env, write_config

WSD = {"schedule": "wsd", "decay_fraction": 0.2, "warmup_steps": 5}
QUIET = {
    "eval": {"every_steps": 25, "batches": 2},
    "checkpoint": {"every_steps": 5, "keep": 30},
    "log": {"every_steps": 1, "sample_tokens": 0, "tensorboard": False},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: a 50-step WSD run stopped at step 30 (stable: the decay is steps 40-50), then extended to 100 (decay from
    80). B: 100 steps from scratch. (The issue's 100 → 200 steps, halved to keep CI short; the structure is kept.)"""
    base = tmp_path_factory.mktemp("wsd")
    corpus = prepare_corpus(str(base / "corpus"))
    folders = {}
    for name in ("A", "B"):
        folders[name] = str(base / name)
        write_config(str(base / f"{name}.yml"), corpus, folders[name], train={"steps": 50}, optimizer=WSD, **QUIET)
    train(str(base / "A.yml"), expect=143, TRAINER_TEST_STOP_AT="30")
    train(str(base / "A.yml"), "train.steps=100")
    train(str(base / "B.yml"), "train.steps=100")
    return base, corpus, folders


def _rows(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_a_stable_run_extends_bitwise_and_a_decayed_one_is_refused(runs):
    base, _, folders = runs
    a, b = losses(folders["A"]), losses(folders["B"])
    assert sorted(a) == sorted(b) == list(range(1, 101))
    assert all(a[s] == b[s] for s in range(1, 101)), [s for s in a if a[s] != b[s]][:5]
    # B's latest checkpoint (100) is in its decay (from 80): extending it is refused, naming step 80 to branch from.
    out = train(str(base / "B.yml"), "train.steps=150", expect=2)
    assert f"checkpoint.restore_from={folders['B']}:80" in out
    assert "Traceback" not in out


def _snapshot(folder: str) -> dict[str, tuple[int, int]]:
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return found


def test_a_cooldown_branch_killed_twice_resumes_bitwise_and_accounts_for_the_kills(runs, tmp_path, capsys):
    base, corpus, folders = runs
    main_before = _snapshot(folders["A"])
    branch = str(tmp_path / "branch")
    config = write_config(
        str(tmp_path / "branch.yml"),
        corpus,
        branch,
        train={"steps": 50},
        optimizer=WSD,
        **{**QUIET, "checkpoint": {**QUIET["checkpoint"], "restore_from": f"{folders['A']}:30"}},
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    supervised = [sys.executable, "-m", "trainer.supervise", "--max-restarts", "3", "--backoff", "0.2", "--"]
    job = [sys.executable, "-m", "trainer.main", config, "checkpoint.restore_params_only=false"]
    env = trainer_env(TRAINER_TEST_KILL_ONCE_AT="43,47", TRAINER_TEST_KILL_MARKS=str(marks))
    done = subprocess.run(supervised + job, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert _snapshot(folders["A"]) == main_before  # the main run is only read

    rows = [r for r in _rows(branch) if "loss" in r]
    first: dict[int, float] = {}
    restarts: list[tuple[int, int]] = []  # (last step logged before a kill, the step restored after it)
    for previous, row in zip(rows, rows[1:]):
        if row["step"] <= previous["step"]:
            restarts.append((previous["step"], row["step"] - 1))
    for row in rows:
        assert first.setdefault(row["step"], row["loss"]) == row["loss"], f"step {row['step']} differs after resume"
    assert [last for last, _ in restarts] == [42, 46]  # killed after steps 43 and 47, before they were logged
    # The branch read on from A's data position: its stable steps are the main runs' bitwise.
    stable = losses(folders["B"])
    assert all(first[s] == stable[s] for s in range(31, 41))
    a_eval = next(r["eval_loss"] for r in _rows(folders["A"]) if r.get("step") == 50 and "eval_loss" in r)
    assert "left stable step 30), 5,120 decay tokens" in out
    assert f"the stable run at step 50: {a_eval:.4f}" in out

    with open(os.path.join(branch, "goodput.json")) as f:
        ledger = json.load(f)
    entries = ledger["runs"]
    assert [e.get("lost_steps", 0) for e in entries] == [last - restored for last, restored in restarts] + [0]
    assert [e["exit"] for e in entries] == [-9, -9, 0]
    assert [e["restart"] for e in entries] == [0, 1, 2]
    assert abs(sum(ledger["summary"]["shares"].values()) - 1) < 0.01
    assert ledger["summary"]["shares"]["lost"] > 0 and ledger["summary"]["shares"]["gaps"] > 0
    assert "goodput: " in out

    from trainer.goodput import main

    assert main([branch, "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1])["lost_steps"] == sum(last - restored for last, restored in restarts)
    assert "killed by signal 9" in "\n".join(printed)
