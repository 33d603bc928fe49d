"""The step loop: batches in, steps out, with logging, periodic evaluation, checkpoints, stop requests and the
non-finite guard. The job (`trainer.run.job`) hands it a ready state; the loop owns the I/O around the pure step.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import checkpoint, storage
from trainer.config import Config
from trainer.errors import ExitCode
from trainer.eval.loss import evaluate
from trainer.model import flops
from trainer.run.metrics import MetricsLogger
from trainer.run.profile import StepProfiler
from trainer.step import StepFunctions, TrainState

# Test hooks (environment variables, read once per run) that exercise the fault paths of the loop:
#   TRAINER_TEST_POISON_STEPS=3,4  these steps' batches get a NaN loss mask (non-finite loss and gradients)
#   TRAINER_TEST_STOP_AT=5         behave as if SIGTERM arrived during step 5
#   TRAINER_TEST_CRASH_AT=5        die (exit code 1, no cleanup) right after step 5
HOOK_ENV = {"poison": "TRAINER_TEST_POISON_STEPS", "stop": "TRAINER_TEST_STOP_AT", "crash": "TRAINER_TEST_CRASH_AT"}
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
        print(f"\n{signal.Signals(signum).name} received: finishing this step, saving, then exiting "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    def agreed(self) -> bool:
        """Whether any process was asked to stop (all processes must stop at the same step)."""
        local = self.signal is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([local]))))

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _hook_steps(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(HOOK_ENV[name], "").split(",") if s.strip()}


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train(config: Config, step_fns: StepFunctions, ckpt: checkpoint.Checkpointer, data_iter: Any, state: TrainState,
           stop: StopRequest, log: MetricsLogger, profiler: StepProfiler | None = None) -> int:
    """Run steps from `state` to `train.steps`; returns the exit code (OK, NONFINITE, or the stop signal's)."""
    profiler = profiler or StepProfiler(None, config.run.dir, enabled=False)
    t = config.train
    step = int(jax.device_get(state.step))
    if step >= t.steps:
        log.say(f"already done: {config.run.dir} holds step {step} of train.steps={t.steps}; raise train.steps to "
                "train on, or choose a new run.dir")
        return ExitCode.OK
    tokens_per_step = t.global_batch_size * t.seq_len
    speed = Speedometer(tokens_per_step, flops.flops_per_token(config.model, t.seq_len), jax.device_count(),
                        flops.peak_tflops(jax.devices()[0].device_kind, t.peak_tflops),
                        f"{jax.device_count()} × {jax.devices()[0].device_kind}")
    poisoned, stop_at, crash_at = _hook_steps("poison"), _hook_steps("stop"), _hook_steps("crash")
    log.say(f"training {config.run.dir}: steps {step} → {t.steps}, {tokens_per_step:,} tokens/step, "
            f"{jax.device_count()} device(s) {jax.devices()[0].device_kind}, mesh {dict(step_fns.mesh.shape)}")

    def save(at: int, force: bool = False) -> None:
        if not bool(_all_finite(state.params)):
            log.say(f"step {at}: parameters are not finite; not saving (the last good checkpoint stays)")
            return
        if ckpt.save(at, state, data_iter, config, force=force):
            log.flush()

    first_step = step
    task_eval = None
    if config.eval.tasks:  # fails here, before any step, on a missing extra or task file
        from trainer.eval.periodic import TaskEvaluator

        task_eval = TaskEvaluator(config, step_fns.mesh)
    log.say("compiling the train step (the first step includes it) …")
    window_start, window_steps, started = time.perf_counter(), 0, time.perf_counter()
    pending: tuple[int, Any] | None = None  # the previous step's metrics, checked once the next step is queued

    def too_many_nonfinite(at: int, metrics: Any) -> bool:
        nonfinite = int(jax.device_get(metrics["nonfinite_in_a_row"]))
        if nonfinite:
            log.say(f"step {at}: non-finite loss or gradients, update skipped "
                    f"({nonfinite} in a row, {int(metrics['nonfinite_total'])} in all)")
        if nonfinite >= t.max_consecutive_nonfinite:
            log.say(f"stopping: {nonfinite} non-finite steps in a row (train.max_consecutive_nonfinite); "
                    "the last good checkpoint is intact — lower the learning rate or inspect the data")
            return True
        return False

    while step < t.steps:
        local = next(data_iter)
        if step + 1 in poisoned:
            local = {**local, "loss_mask": np.full_like(local["loss_mask"], np.nan)}
        with profiler.step(step + 1):
            state, metrics = step_fns.train_step(state, step_fns.global_batch(local))
        step += 1
        if profiler.after(step, metrics):  # writing the trace is no step's time
            window_start, window_steps = time.perf_counter(), 0
        window_steps += 1
        if step in stop_at:
            stop.signal = signal.SIGTERM
        if step in crash_at:
            os._exit(1)
        if pending is not None and too_many_nonfinite(*pending):
            return ExitCode.NONFINITE
        pending = (step, metrics)
        if step == first_step + 1:
            jax.block_until_ready(metrics)
            log.say(f"first step took {time.perf_counter() - window_start:.1f}s (compilation included)")
            window_start, window_steps = time.perf_counter(), 0
        if step % config.log.every_steps == 0 or step == t.steps:
            _log_step(log, speed, step, t.steps, jax.device_get(metrics), window_steps,
                      time.perf_counter() - window_start)
            window_start, window_steps = time.perf_counter(), 0
        if step % config.eval.every_steps == 0 or step == t.steps:
            result = evaluate(config, step_fns, state.params)
            log.log({"step": step, **result})
            log.say(f"step {step:>6}/{t.steps} eval_loss {result['eval_loss']:.4f} "
                    f"perplexity {result['eval_perplexity']:.2f}")
            window_start, window_steps = time.perf_counter(), 0
        if task_eval is not None and (step % config.eval.tasks_every_steps == 0 or step == t.steps):
            scores = task_eval(step_fns.full_params(state.params), step)
            log.log({"step": step, **scores})
            log.say(f"step {step:>6}/{t.steps} " + " ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items())))
            window_start, window_steps = time.perf_counter(), 0
        if stop.agreed():
            if too_many_nonfinite(*pending):
                return ExitCode.NONFINITE
            save(step, force=True)
            ckpt.wait()
            log.flush(plot=True)
            log.say(f"stopped at step {step} on request; checkpoint saved — run the same command to continue")
            return EXIT_SIGNAL.get(stop.signal, ExitCode.TERMINATED)
        if step % config.checkpoint.every_steps == 0 or step == t.steps:
            if too_many_nonfinite(*pending):
                return ExitCode.NONFINITE
            pending = None
            save(step)
    ckpt.wait()
    log.flush(plot=True)
    log.say(f"done: {step} steps in {_duration(time.perf_counter() - started)}; run folder {config.run.dir}")
    _print_sample(config, step_fns, step_fns.full_params(state.params), log)
    return ExitCode.OK


@dataclasses.dataclass(frozen=True)
class Speedometer:
    """Turns steps and seconds into tokens/s, TFLOP/s per device, MFU and an ETA."""

    tokens_per_step: int
    flops_per_token: float
    devices: int
    peak_tflops: float | None
    hardware: str = ""  # "8 × TPU v4": recorded with the throughput (the model card reads it)

    def row(self, steps: int, seconds: float, remaining_steps: int) -> tuple[dict[str, float], str]:
        """Throughput fields for metrics.jsonl and their text for the step line."""
        tokens_per_s = self.tokens_per_step * steps / seconds
        row = {"tokens_per_s": tokens_per_s,
               "tflops_per_device": tokens_per_s * self.flops_per_token / self.devices / 1e12}
        if self.hardware:
            row["hardware"] = self.hardware
        text = f" {tokens_per_s:,.0f} tok/s {row['tflops_per_device']:.3f} TFLOP/s/dev"
        utilisation = flops.mfu(tokens_per_s / self.devices, self.flops_per_token, self.peak_tflops)
        if utilisation is not None:
            row["mfu"] = utilisation
            text += f" mfu {100 * utilisation:.1f}%"
        return row, text + f" eta {_duration(remaining_steps * seconds / steps)}"


def _log_step(log: MetricsLogger, speed: Speedometer, step: int, total: int, values: dict[str, Any],
              window_steps: int, seconds: float) -> None:
    """One metrics row and step line; throughput over the steps since the last line (none right after compiling)."""
    row = {"step": step, "loss": float(values["loss"]), "learning_rate": float(values["learning_rate"]),
           "grad_norm": float(values["grad_norm"]), "skipped_steps": int(values["nonfinite_total"])}
    text = ""
    if window_steps:
        throughput, text = speed.row(window_steps, seconds, total - step)
        row.update(throughput)
    log.log(row)
    log.say(f"step {step:>6}/{total} loss {row['loss']:.4f} lr {row['learning_rate']:.2e} "
            f"gnorm {row['grad_norm']:.3f}{text}")


def _print_sample(config: Config, step_fns: StepFunctions, params: Any, log: MetricsLogger) -> None:
    if config.log.sample_tokens <= 0:
        return
    if config.data.synthetic:
        log.say("no sample: synthetic data has no tokenizer")
        return
    from trainer.data.bos import run_adds_bos
    from trainer.data.tokenizer import load_tokenizer
    from trainer.infer.decode import Generator

    tokenizer = load_tokenizer(storage.join(config.run.dir, "tokenizer"))
    text = config.log.sample_prompt
    if tokenizer.chat is not None:  # a chat model: the prompt is a user turn through its template
        text = tokenizer.render_chat([{"role": "user", "content": text}])
    ids = tokenizer.encode_with_offsets(text)[0]
    if tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id] and run_adds_bos(config.run.dir, config):
        ids = [tokenizer.bos_id] + ids  # as the training documents began
    result = Generator(config, step_fns.mesh, params).generate(
        [ids], config.log.sample_tokens, eos_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
        stop=tokenizer.stop_strings, detokenize=tokenizer.decode)[0]
    log.say("sample (greedy):\n" + text + result.text)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
