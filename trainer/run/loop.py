"""The step loop: batches in, steps out. The job (`trainer.run.job`) hands it a ready state; the loop owns the I/O
around the pure step.

Each step: wait for this process's batch, dispatch the step, check the previous step's non-finite counters (only
now, so the check never stalls the devices), then run the hooks due at this step, in this order:

    plugins     every step, when TRAINER_HOOKS names some (`trainer.run.hooks`)
    profile     at the last step of log.profile_steps: write the trace
    log         every log.every_steps: metrics.jsonl, TensorBoard, W&B and the step line
    eval        every eval.every_steps: validation loss
    tasks       every eval.tasks_every_steps: lm-eval tasks (eval.tasks)
    stop        every step: after SIGTERM / Ctrl-C, save the step reached and exit 143 / 130
    checkpoint  every checkpoint.every_steps
    goodput     every log.every_steps: the run's goodput ledger, RUN/goodput.json (`trainer.run.goodput`)

Periodic hooks also run after the last step; then, once it is saved, the greedy sample (log.sample_tokens). Too many
non-finite steps in a row end the run with exit code 3 and the last good checkpoint intact. The wall time is
charged to the job's `Timer` (start-up, compile, step, data wait, checkpoint, eval).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import checkpoint, storage
from trainer.config import Config
from trainer.data.bos import run_adds_bos
from trainer.data.mixture import Stage
from trainer.data.tokenizer import load_tokenizer
from trainer.errors import ExitCode
from trainer.eval.loss import evaluate
from trainer.eval.periodic import TaskEvaluator
from trainer.infer.decode import Generator
from trainer.model import flops
from trainer.run.goodput import Ledger
from trainer.run.hooks import Hooks, StepInfo, install_plugins
from trainer.run.metrics import MetricsLogger, Speedometer, StepLog, duration
from trainer.run.profile import StepProfiler
from trainer.run.timer import Timer
from trainer.step import StepFunctions, TrainState

EXIT_SIGNAL = {signal.SIGTERM: ExitCode.TERMINATED, signal.SIGINT: ExitCode.INTERRUPTED}


class StopRequest:
    """Turns SIGTERM / SIGINT into a request to stop after the current step; a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in EXIT_SIGNAL}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(ExitCode.INTERRUPTED)
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name} received: finishing this step, saving, then exiting "
            "(Ctrl-C again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def agreed(self) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([local]))))

    def restore(self) -> None:
        """Put back the signal handlers that were there before."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class NonfiniteGuard:
    """Reads the step's non-finite counters (an update with non-finite loss or gradients is skipped in the step) and
    says when `train.max_consecutive_nonfinite` in a row must end the run. A step is checked once the next one is
    queued (reading it then costs no device time), or at once before a save: no checkpoint holds an unchecked step."""

    def __init__(self, limit: int, say: Callable[[str], None]):
        self.limit, self.say = limit, say
        self._pending: tuple[int, Any] | None = None

    def queued(self, step: int, metrics: Any) -> bool:
        """Remember `step`'s counters and check the step before it; True: stop the run."""
        previous, self._pending = self._pending, (step, metrics)
        return previous is not None and self._too_many(*previous)

    def settle(self) -> bool:
        """Check the latest step now; True: stop the run."""
        pending, self._pending = self._pending, None
        return pending is not None and self._too_many(*pending)

    def _too_many(self, step: int, metrics: Any) -> bool:
        nonfinite = int(jax.device_get(metrics["nonfinite_in_a_row"]))
        if nonfinite:
            self.say(
                f"step {step}: non-finite loss or gradients, update skipped "
                f"({nonfinite} in a row, {int(metrics['nonfinite_total'])} in all)"
            )
        if nonfinite >= self.limit:
            self.say(
                f"stopping: {nonfinite} non-finite steps in a row (train.max_consecutive_nonfinite); "
                "the last good checkpoint is intact — lower the learning rate or inspect the data"
            )
            return True
        return False


@dataclasses.dataclass
class Saves:
    """The `stop` and `checkpoint` hooks: save the step reached, never with unchecked or non-finite params."""

    config: Config
    ckpt: checkpoint.Checkpointer
    data_iter: Any
    log: MetricsLogger
    guard: NonfiniteGuard
    stop: StopRequest
    timer: Timer

    def periodic(self, info: StepInfo) -> int | None:
        """The `checkpoint` hook: start saving this step (the write goes on in the background)."""
        if self.guard.settle():
            return ExitCode.NONFINITE
        self._save(info)
        return None

    def on_stop_request(self, info: StepInfo) -> int | None:
        """The `stop` hook: once any process was asked to stop, save this step, wait for it and end the run."""
        if not self.stop.agreed():
            return None
        if self.guard.settle():
            return ExitCode.NONFINITE
        self._save(info, force=True)
        with self.timer.during("checkpoint"):
            self.ckpt.wait()
            self.log.flush(plot=True)
        self.log.say(f"stopped at step {info.step} on request; checkpoint saved — run the same command to continue")
        return EXIT_SIGNAL.get(self.stop.signal, ExitCode.TERMINATED)

    def _save(self, info: StepInfo, force: bool = False) -> None:
        with self.timer.during("checkpoint"):
            if not bool(_all_finite(info.state.params)):
                self.log.say(
                    f"step {info.step}: parameters are not finite; not saving (the last good checkpoint stays)"
                )
                return
            if self.ckpt.save(info.step, info.state, self.data_iter, self.config, force=force):
                self.log.flush()


def train(
    config: Config,
    step_fns: StepFunctions,
    ckpt: checkpoint.Checkpointer,
    data_iter: Any,
    state: TrainState,
    stop: StopRequest,
    log: MetricsLogger,
    profiler: StepProfiler | None = None,
    timer: Timer | None = None,
    stages: Sequence[Stage] | None = None,
    ledger: Ledger | None = None,
) -> int:
    """Run steps from `state` to `train.steps`; returns the exit code (OK, NONFINITE, or the stop signal's).

    `timer` (made when the job started, to count its start-up) receives the loop's time by category; `stages` (the
    data's, read once by the job) feed the validation batches; `ledger` (the run's goodput ledger) records each logged
    step.
    """
    profiler = profiler or StepProfiler(None, config.run.dir, enabled=False)
    timer = timer or Timer()
    last = config.train.steps
    step = int(jax.device_get(state.step))
    if step >= last:
        log.say(
            f"already done: {config.run.dir} holds step {step} of train.steps={last}; raise train.steps to "
            "train on, or choose a new run.dir"
        )
        return ExitCode.OK
    speed = _speedometer(config)
    log.say(
        f"training {config.run.dir}: steps {step} → {last}, {speed.tokens_per_step:,} tokens/step, "
        f"{jax.device_count()} device(s) {jax.devices()[0].device_kind}, mesh {dict(step_fns.mesh.shape)}"
    )
    guard = NonfiniteGuard(config.train.max_consecutive_nonfinite, log.say)
    hooks = Hooks(timer)
    install_plugins(hooks)
    compiled_step = step + 1  # the first step of this process compiles
    _add_hooks(
        hooks,
        config,
        step_fns,
        log,
        profiler,
        StepLog(log, speed, timer, compiled_step),
        Saves(config, ckpt, data_iter, log, guard, stop, timer),
        stages,
    )
    if ledger is not None:
        hooks.add("goodput", ledger.after_step, every=config.log.every_steps)

    log.say("compiling the train step (the first step includes it) …")
    started = time.perf_counter()
    timer.switch("compile")
    while step < last:
        with timer.during("data_wait"):
            batch = next(data_iter)
        batch = hooks.batch(step + 1, batch)
        with profiler.step(step + 1):
            state, metrics = step_fns.train_step(state, step_fns.global_batch(batch))
        step += 1
        if guard.queued(step, metrics):
            return ExitCode.NONFINITE
        if step == compiled_step:
            jax.block_until_ready(metrics)
            log.say(f"first step took {time.perf_counter() - started:.1f}s (compilation included)")
            timer.switch("step")
        code = hooks.after_step(StepInfo(step, last, state, metrics))
        if code is not None:
            return code

    with timer.during("checkpoint"):
        ckpt.wait()
    log.flush(plot=True)
    log.say(f"done: {step} steps in {duration(time.perf_counter() - started)}; run folder {config.run.dir}")
    hooks.finish(StepInfo(step, last, state, metrics))
    return ExitCode.OK


def _add_hooks(
    hooks: Hooks,
    config: Config,
    step_fns: StepFunctions,
    log: MetricsLogger,
    profiler: StepProfiler,
    step_log: StepLog,
    saves: Saves,
    stages: Sequence[Stage] | None,
) -> None:
    """Register the loop's own hooks, in the order they run (see the module docstring)."""
    if profiler.last_step is not None:
        hooks.add("profile", profiler.after, every=profiler.last_step, category="eval", at_last=False)
    hooks.add("log", step_log, every=config.log.every_steps)
    hooks.add(
        "eval",
        functools.partial(_evaluate, config, step_fns, log, stages),
        every=config.eval.every_steps,
        category="eval",
    )
    if config.eval.tasks:  # built now: a missing extra or task file fails before any step
        scorer = TaskEvaluator(config, step_fns.mesh)
        hooks.add(
            "tasks",
            functools.partial(_score_tasks, scorer, step_fns, log),
            every=config.eval.tasks_every_steps,
            category="eval",
        )
    hooks.add("stop", saves.on_stop_request, every=1)
    hooks.add("checkpoint", saves.periodic, every=config.checkpoint.every_steps)
    hooks.at_end("sample", functools.partial(_sample, config, step_fns, log), category="eval")


def _speedometer(config: Config) -> Speedometer:
    t, kind = config.train, jax.devices()[0].device_kind
    return Speedometer(
        t.global_batch_size * t.seq_len,
        flops.flops_per_token(config.model, t.seq_len),
        jax.device_count(),
        flops.peak_tflops(kind, t.peak_tflops),
        f"{jax.device_count()} × {kind}",
    )


def _evaluate(
    config: Config, step_fns: StepFunctions, log: MetricsLogger, stages: Sequence[Stage] | None, info: StepInfo
) -> None:
    """The `eval` hook: validation loss and perplexity, logged and printed."""
    result = evaluate(config, step_fns, info.state.params, stages)
    log.log({"step": info.step, **result})
    log.say(
        f"step {info.step:>6}/{info.last} eval_loss {result['eval_loss']:.4f} "
        f"perplexity {result['eval_perplexity']:.2f}"
    )


def _score_tasks(scorer: TaskEvaluator, step_fns: StepFunctions, log: MetricsLogger, info: StepInfo) -> None:
    """The `tasks` hook: lm-eval task scores on the live params, logged and printed."""
    scores = scorer(step_fns.full_params(info.state.params), info.step)
    log.log({"step": info.step, **scores})
    log.say(f"step {info.step:>6}/{info.last} " + " ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items())))


def _sample(config: Config, step_fns: StepFunctions, log: MetricsLogger, info: StepInfo) -> None:
    """The `sample` hook at the end: a greedy continuation of log.sample_prompt."""
    _print_sample(config, step_fns, step_fns.full_params(info.state.params), log)


def _print_sample(config: Config, step_fns: StepFunctions, params: Any, log: MetricsLogger) -> None:
    if config.log.sample_tokens <= 0:
        return
    if config.data.synthetic:
        log.say("no sample: synthetic data has no tokenizer")
        return
    tokenizer = load_tokenizer(storage.join(config.run.dir, "tokenizer"))
    text = config.log.sample_prompt
    if tokenizer.chat is not None:  # a chat model: the prompt is a user turn through its template
        text = tokenizer.render_chat([{"role": "user", "content": text}])
    ids = tokenizer.encode_with_offsets(text)[0]
    if tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id] and run_adds_bos(config.run.dir, config):
        ids = [tokenizer.bos_id] + ids  # as the training documents began
    result = Generator(config, step_fns.mesh, params).generate(
        [ids],
        config.log.sample_tokens,
        eos_ids=tokenizer.stop_ids,
        pad_id=tokenizer.pad_id,
        stop=tokenizer.stop_strings,
        detokenize=tokenizer.decode,
    )[0]
    log.say("sample (greedy):\n" + text + result.text)
