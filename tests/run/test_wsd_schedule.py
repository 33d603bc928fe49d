"""The WSD schedule against its formula, the extension rule, the goodput ledger's arithmetic and the supervisor's
word to a restarted job: pure units, no training."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest

from trainer.config import Config, OptimizerConfig, RunConfig, TrainConfig
from trainer.errors import ConfigError
from trainer.optim import make_schedule, wsd_decay_start
from trainer.run import branch, extend, goodput
from trainer.run.supervise import supervise
from trainer.run.timer import Timer

SHAPES = {
    "linear": lambda t: 1 - t,
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    "1-sqrt": lambda t: 1 - math.sqrt(t),
}


def _wsd(steps: int, **optimizer) -> Config:
    opt = OptimizerConfig(schedule="wsd", learning_rate=1e-2, warmup_steps=5, min_learning_rate_ratio=0.1)
    return Config(
        optimizer=dataclasses.replace(opt, **optimizer),
        train=TrainConfig(steps=steps),
        run=RunConfig(dir="runs/x"),
    )


def _reference(step: int, total: int, warmup: int, decay: int, shape: str, peak=1e-2, ratio=0.1) -> float:
    start = total - decay
    if step < warmup:
        return peak * step / warmup
    if step < start:
        return peak
    t = min((step - start) / decay, 1.0)
    return peak * ratio + (peak - peak * ratio) * SHAPES[shape](t)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("decay", [{"decay_fraction": 0.2}, {"decay_steps": 35}])
def test_every_step_follows_the_formula(shape, decay):
    config = _wsd(100, decay_shape=shape, **decay)
    schedule = make_schedule(config.optimizer, 100)
    length = decay.get("decay_steps", 20)
    assert wsd_decay_start(config.optimizer, 100) == 100 - length
    got = np.asarray(schedule(np.arange(101)))
    want = np.array([_reference(s, 100, 5, length, shape) for s in range(101)])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    assert got[-1] == pytest.approx(1e-3)


def test_stable_rates_do_not_depend_on_the_length():
    short, long = _wsd(100), _wsd(200)
    assert extend.first_difference(short, long, 81) is None  # bitwise: warmup and stable (index 80 is still the peak)
    assert extend.first_difference(short, long, 82) == 81  # the short run's rate falls from update index 81 on


def test_extending_in_the_stable_phase_passes_and_in_the_decay_is_refused():
    before, after = _wsd(100), _wsd(200)
    extend.check_extension(after, before, [20, 40, 60, 80])  # checkpoint 80: every update so far was stable
    with pytest.raises(ConfigError, match=r"checkpoint 90 is in the decay .*restore_from=runs/x:80 "):
        extend.check_extension(after, before, [40, 80, 90])
    with pytest.raises(ConfigError, match="learning rate of update 2 from 0.002 to 0.001"):
        extend.check_extension(_wsd(200, warmup_steps=10), before, [40])
    with pytest.raises(ConfigError, match="decay would begin at step 48, before step 60"):
        extend.check_extension(_wsd(60), before, [40, 60])
    extend.check_extension(before, before, [90])  # a plain resume of a decayed run is no extension
    other = dataclasses.replace(before, optimizer=dataclasses.replace(before.optimizer, weight_decay=0.0))
    extend.check_extension(other, before, [90])  # nor is a change that leaves the rates as they were


def _entry(start, end, first, last, step_s, **more):
    seconds = dict.fromkeys(("startup", "compile", "step", "data_wait", "checkpoint", "eval"), 0.0)
    seconds["step"] = step_s
    seconds["startup"] = end - start - step_s
    return {"start": start, "end": end, "first_step": first, "last_step": last, "seconds": seconds, **more}


def test_the_ledger_charges_lost_steps_and_gaps_and_its_shares_sum_to_one():
    first = _entry(0.0, 30.0, 0, 21, 20.0)  # 20 steps after the compiled one: 1 s each
    goodput.settle(first, restored_step=15)
    assert first["lost_steps"] == 6 and first["lost_seconds"] == pytest.approx(6.0)
    second = _entry(40.0, 60.0, 15, 30, 10.0)
    total = goodput.summary([first, second])
    assert total["wall_s"] == pytest.approx(60.0)
    assert total["seconds"]["gaps"] == pytest.approx(10.0)
    assert total["seconds"]["lost"] == pytest.approx(6.0)
    assert total["seconds"]["productive"] == pytest.approx(24.0)
    assert sum(total["shares"].values()) == pytest.approx(1.0)
    assert "lost to crashes 10.0 % (6 steps)" in goodput.describe(total)


def test_a_ledger_records_each_start_and_settles_the_one_before(tmp_path):
    now = [1000.0]
    timer = Timer(clock=lambda: now[0])
    ledger = goodput.Ledger(str(tmp_path), timer, 0, enabled=True, clock=lambda: now[0], env={})
    timer.switch("step")
    now[0] += 12.0
    ledger.record(step=10)  # then killed: no close
    now[0] += 5.0  # the gap before the restart
    timer = Timer(clock=lambda: now[0])
    env = {goodput.RESTART_ENV: "1", goodput.BACKOFF_ENV: "2.5", goodput.PREVIOUS_EXIT_ENV: "-9"}
    again = goodput.Ledger(str(tmp_path), timer, 8, enabled=True, clock=lambda: now[0], env=env)
    now[0] += 3.0
    line = again.close(0)
    with open(tmp_path / goodput.LEDGER_FILE) as f:
        saved = json.load(f)
    first, second = saved["runs"]
    assert (first["exit"], first["lost_steps"], second["restart"], second["backoff_s"]) == (-9, 2, 1, 2.5)
    assert saved["summary"]["seconds"]["gaps"] == pytest.approx(5.0)
    assert saved["summary"]["wall_s"] == pytest.approx(20.0)
    assert line.startswith("goodput: ") and "over 2 runs" in line


def test_the_supervisor_tells_a_restarted_job_its_number_back_off_and_the_exit_before(tmp_path):
    told = tmp_path / "told.jsonl"
    code = (
        "import json, os, sys; keys = ('TRAINER_RESTART', 'TRAINER_BACKOFF_S', 'TRAINER_PREVIOUS_EXIT'); "
        f"f = open({str(told)!r}, 'a'); f.write(json.dumps([os.environ.get(k) for k in keys]) + '\\n'); f.close(); "
        "sys.exit(0 if os.environ.get('TRAINER_RESTART') else 7)"
    )
    assert supervise([sys.executable, "-c", code], max_restarts=2, backoff=0.01, healthy_after=60) == 0
    lines = [json.loads(line) for line in told.read_text().splitlines()]
    assert lines == [[None, None, None], ["1", "0.010", "7"]]


def test_a_branch_from_a_decayed_checkpoint_is_refused_naming_the_last_stable_one():
    source, branch = _wsd(100), _wsd(120, decay_steps=30)
    extend.check_branch(branch, source, "runs/main", 80, [40, 80, 90])  # 80: the source's decay begins there
    with pytest.raises(ConfigError, match=r"checkpoint 90 is in the decay .*restore_from=runs/main:80 "):
        extend.check_branch(branch, source, "runs/main", 90, [40, 80, 90])


def test_a_branch_reports_its_decay_tokens_and_both_validation_losses(tmp_path):
    main, cool = tmp_path / "main", tmp_path / "cool"
    main.mkdir(), cool.mkdir()
    (main / "metrics.jsonl").write_text('{"step": 120, "eval_loss": 4.5}\n')
    (cool / "metrics.jsonl").write_text('{"step": 120, "loss": 4.0}\n{"step": 120, "eval_loss": 4.25}\n')
    (cool / branch.BRANCH_FILE).write_text(json.dumps({"from": f"{main}:80", "stable_step": 80, "decay_start": 90}))
    config = dataclasses.replace(_wsd(120), train=TrainConfig(steps=120, global_batch_size=4, seq_len=16))
    found = branch.cooldown(str(cool), config, 120)
    assert found is not None and (found.decay_tokens, found.stable_step) == (30 * 64, 80)
    assert found.line().endswith("validation loss 4.2500 at step 120; the stable run at step 120: 4.5000")
    assert branch.cooldown(str(main), config, 120) is None
