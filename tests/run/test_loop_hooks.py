"""The step loop's parts: the timer's categories add up to the wall time, hooks run at their intervals in order and
can end a run, and TRAINER_HOOKS plugins load from one `module:function` spec (or fail in one line)."""

import pytest

from trainer.errors import ConfigError
from trainer.run.hooks import Hooks, StepInfo, install_plugins
from trainer.run.timer import CATEGORIES, Timer


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timer_charges_each_interval_to_one_category_and_windows_skip_eval_and_compile():
    clock = Clock()
    timer = Timer(clock)
    clock.now += 5  # start-up
    timer.switch("compile")
    with timer.during("data_wait"):
        clock.now += 1
    clock.now += 20
    timer.switch("step")
    clock.now += 3
    with timer.during("eval"):
        clock.now += 7
    with timer.during("checkpoint"):
        clock.now += 2
    clock.now += 0.5  # still in `step`
    totals = timer.totals()
    assert list(totals) == list(CATEGORIES)
    assert totals == {"startup": 5, "compile": 20, "step": 3.5, "data_wait": 1, "checkpoint": 2, "eval": 7}
    assert sum(totals.values()) == clock.now - 100
    assert timer.window() == 5.5  # step + checkpoint since compiling ended: not the first batch's wait, not eval
    clock.now += 1
    assert timer.window() == 1
    with pytest.raises(ValueError, match="unknown timer category"):
        timer.switch("lunch")


def test_hooks_run_at_their_interval_and_the_last_step_in_order_until_one_returns_a_code():
    clock = Clock()
    timer = Timer(clock)
    timer.switch("step")
    hooks, ran = Hooks(timer), []

    def hook(name, code=None, seconds=0.0):
        def run(info):
            ran.append((name, info.step))
            clock.now += seconds
            return code if info.step == 6 else None

        return run

    hooks.add("a", hook("a", seconds=1), every=2, category="eval")
    hooks.add("b", hook("b", code=143), every=3, at_last=False)
    hooks.add("c", hook("c"), every=4)
    hooks.at_end("end", hook("end"))
    codes = {step: hooks.after_step(StepInfo(step, 7, None, {})) for step in range(1, 8)}
    hooks.finish(StepInfo(7, 7, None, {}))
    assert ran == [("a", 2), ("b", 3), ("a", 4), ("c", 4), ("a", 6), ("b", 6), ("a", 7), ("c", 7), ("end", 7)]
    assert codes[6] == 143 and all(code is None for step, code in codes.items() if step != 6)
    assert timer.totals()["eval"] == 4 and timer.category == "step"
    assert hooks.batch(1, {"x": 1}) == {"x": 1}
    hooks.add_batch_hook(lambda step, batch: {**batch, "step": step})
    assert hooks.batch(5, {"x": 1}) == {"x": 1, "step": 5}


SEEN = []


def _plugin(hooks):
    hooks.add("plugin", lambda info: SEEN.append(info.step), every=1)


def test_plugins_load_from_module_function_or_fail_in_one_line():
    hooks = Hooks(Timer())
    install_plugins(hooks, f"{__name__}:_plugin")
    hooks.after_step(StepInfo(1, 2, None, {}))
    assert SEEN == [1]
    install_plugins(hooks, "")  # nothing named: nothing added
    with pytest.raises(ConfigError, match="expected package.module:function"):
        install_plugins(hooks, "no_colon")
    with pytest.raises(ConfigError, match="can't load no_such_module:f"):
        install_plugins(hooks, "no_such_module:f")
