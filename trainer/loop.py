"""The training job: distributed init, mesh, data, state (fresh or restored), then steps, evals, logs, checkpoints.

A stopped run (SIGTERM, Ctrl-C, a crash) started again with the same run folder continues exactly as if it had
never stopped: the train state and every process's data iterator come back from the latest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import checkpoint, distributed, flops, sharding, storage
from trainer.attention import check_available
from trainer.config import Config, ConfigError
from trainer.metrics import MetricsLogger
from trainer.train import BATCH_KEYS, Trainer, TrainState, make_trainer

# Test hooks (environment variables, read once per run) that exercise the fault paths of the loop:
#   TRAINER_TEST_POISON_STEPS=3,4  these steps' batches get a NaN loss mask (non-finite loss and gradients)
#   TRAINER_TEST_STOP_AT=5         behave as if SIGTERM arrived during step 5
#   TRAINER_TEST_CRASH_AT=5        die (exit code 1, no cleanup) right after step 5
HOOK_ENV = {"poison": "TRAINER_TEST_POISON_STEPS", "stop": "TRAINER_TEST_STOP_AT", "crash": "TRAINER_TEST_CRASH_AT"}
EXIT_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopRequest:
    """Turns SIGTERM / SIGINT into a request to stop after the current step; a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in EXIT_SIGNAL}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(130)
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


def _global_batch(trainer: Trainer, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(trainer.batch_sharding, local[k]) for k in BATCH_KEYS}


def _hook_steps(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(HOOK_ENV[name], "").split(",") if s.strip()}


PLACEHOLDER = "YOUR_BUCKET"


def _data_paths(config: Config) -> list[str]:
    d = config.data
    paths = [d.path] if d.path else []
    paths += [c.path for c in d.mixture] + [c.path for s in d.stages for c in s.mixture]
    return paths


def _check_reachable(config: Config) -> None:
    """Fail in one line, before any work, on a placeholder bucket or a path this machine can't reach."""
    from trainer.data.shards import prepare_hint

    for key, path in [("run.dir", config.run.dir)] + [("data.path", p) for p in _data_paths(config)]:
        if PLACEHOLDER in path:
            raise ConfigError(
                f"{key}={path} is the example placeholder: prepare your shards with "
                f"`{prepare_hint('gs://<bucket>/<name>/data')}` and override data.path=gs://<bucket>/... "
                "and run.dir=gs://<bucket>/... (README, 'Data')")
        if storage.is_remote(path):
            quiet = logging.getLogger("gcsfs")
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)  # its retry tracebacks would bury the one line below
            try:
                storage.exists(path)
            except Exception as e:  # network, DNS, credentials: whatever the storage client raises
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                raise ConfigError(f"can't reach {key}={path} ({reason}); check the machine's network and "
                                  "credentials, or point it at a reachable folder") from None
            finally:
                quiet.setLevel(level)


def _prepare_data(config: Config) -> None:
    from trainer.data.prepare import ensure_prepared

    if jax.process_index() == 0:
        ensure_prepared(config.data)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("data prepared")


def _check_run_dir(config: Config) -> None:
    """Refuse to resume a run folder written with a different model (its checkpoints could not be restored)."""
    path = storage.join(config.run.dir, "config.yaml")
    if not storage.exists(path):
        return
    previous = checkpoint.read_run_config(config.run.dir)
    if previous.model != config.model:
        raise ConfigError(f"{config.run.dir} holds a run of a different model; use a new run.dir or the same model.*")


def _copy_tokenizer(config: Config) -> None:
    from trainer.data import mixture

    source = mixture.plan(config.data)[0].components[0].path
    target = storage.join(config.run.dir, "tokenizer")
    for name in ("tokenizer.model", "tokenizer"):
        src = storage.join(source, name)
        if storage.exists(src) and not storage.isdir(src):
            storage.write_bytes_atomic(storage.join(target, name), storage.read_bytes(src))
        elif storage.isdir(src):
            for file in storage.listdir(src):
                storage.write_bytes_atomic(storage.join(target, file), storage.read_bytes(storage.join(src, file)))


def _initial_state(config: Config, trainer: Trainer, ckpt: checkpoint.Checkpointer, data_iter: Any,
                   log: MetricsLogger) -> TrainState:
    latest = ckpt.latest_step()
    if latest is not None:
        log.say(f"resuming from {ckpt.directory}/{latest}")
        return ckpt.restore(latest, trainer.abstract_state, data_iter)
    state = trainer.init(jax.random.key(config.train.seed))
    if config.checkpoint.restore_from:
        reference = config.checkpoint.restore_from
        if config.checkpoint.restore_params_only:
            params, step = checkpoint.restore_params_from(reference, trainer.abstract_state.params)
            state = state.replace(params=params)
        else:
            run_dir, step = checkpoint.parse_reference(reference)
            other = checkpoint.Checkpointer(run_dir, config.checkpoint)
            step = step if step is not None else other.latest_step()
            if step is None:
                raise checkpoint.CheckpointError(f"no complete checkpoint in {run_dir}")
            state = other.manager.restore(step, args=checkpoint.ocp.args.Composite(
                state=checkpoint.ocp.args.StandardRestore(trainer.abstract_state)))["state"]
            other.close()
        what = "params only" if config.checkpoint.restore_params_only else "whole state"
        log.say(f"started from {reference} (step {step}, {what})")
    return state


def evaluate(config: Config, trainer: Trainer, params: Any) -> dict[str, float]:
    """Validation loss and perplexity over `eval.batches` deterministic batches of the held-out split."""
    from trainer.data.pipeline import make_eval_iterator

    batches = make_eval_iterator(config.data, seq_len=config.train.seq_len,
                                 global_batch_size=config.train.global_batch_size,
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 num_batches=config.eval.batches)
    nll, tokens = 0.0, 0.0
    for local in batches:
        out = jax.device_get(trainer.eval_step(params, _global_batch(trainer, local)))
        nll += float(out["nll_sum"])
        tokens += float(out["tokens"])
    loss = nll / max(tokens, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


def run(config: Config) -> int:
    """Run the job described by `config` to `train.steps`; returns the process exit code."""
    _check_reachable(config)
    distributed.initialize(config.distributed)
    check_available(config.model.attention)
    mesh = sharding.make_mesh(config.mesh)
    mesh_shape = dict(mesh.shape)
    sharding.check_batch_divisible(config, mesh_shape, jax.process_count())
    is_main = jax.process_index() == 0
    log = MetricsLogger(config.run.dir, enabled=is_main, tensorboard=config.log.tensorboard)

    _prepare_data(config)
    from trainer.data import pipeline

    vocab = pipeline.dataset_vocab_size(config.data)
    if vocab is not None and vocab > config.model.vocab_size:
        raise ConfigError(f"the data's tokenizer has {vocab} ids but model.vocab_size={config.model.vocab_size}; "
                          f"set model.vocab_size={vocab} or more")
    _check_run_dir(config)
    if is_main:
        storage.makedirs(config.run.dir)
        checkpoint.write_run_config(config.run.dir, config)
        _copy_tokenizer(config)
        log.say(pipeline.describe(config.data))

    pipeline.make_eval_iterator(  # fail now, not at the first evaluation, when there is no validation split
        config.data, seq_len=config.train.seq_len, global_batch_size=config.train.global_batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(), num_batches=1).close()
    trainer = make_trainer(config, mesh)
    data_iter = pipeline.make_train_iterator(
        config.data, seq_len=config.train.seq_len, global_batch_size=config.train.global_batch_size,
        seed=config.train.seed, process_index=jax.process_index(), process_count=jax.process_count())
    ckpt = checkpoint.Checkpointer(config.run.dir, config.checkpoint)
    state = _initial_state(config, trainer, ckpt, data_iter, log)
    stop = StopRequest()
    try:
        return _train(config, trainer, ckpt, data_iter, state, stop, log)
    finally:
        stop.restore()
        ckpt.close()
        data_iter.close()
        log.close()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _train(config: Config, trainer: Trainer, ckpt: checkpoint.Checkpointer, data_iter: Any, state: TrainState,
           stop: StopRequest, log: MetricsLogger) -> int:
    t = config.train
    step = int(jax.device_get(state.step))
    tokens_per_step = t.global_batch_size * t.seq_len
    speed = Speedometer(tokens_per_step, flops.flops_per_token(config.model, t.seq_len), jax.device_count(),
                        flops.peak_tflops(jax.devices()[0].device_kind, t.peak_tflops))
    poisoned, stop_at, crash_at = _hook_steps("poison"), _hook_steps("stop"), _hook_steps("crash")
    log.say(f"training {config.run.dir}: steps {step} → {t.steps}, {tokens_per_step:,} tokens/step, "
            f"{jax.device_count()} device(s) {jax.devices()[0].device_kind}, mesh {dict(trainer.mesh.shape)}")

    def save(at: int, force: bool = False) -> None:
        if not bool(_all_finite(state.params)):
            log.say(f"step {at}: parameters are not finite; not saving (the last good checkpoint stays)")
            return
        if ckpt.save(at, state, data_iter, config, force=force):
            log.flush()

    first_step = step
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
        state, metrics = trainer.train_step(state, _global_batch(trainer, local))
        step += 1
        window_steps += 1
        if step in stop_at:
            stop.signal = signal.SIGTERM
        if step in crash_at:
            os._exit(1)
        if pending is not None and too_many_nonfinite(*pending):
            return 3
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
            result = evaluate(config, trainer, state.params)
            log.log({"step": step, **result})
            log.say(f"step {step:>6}/{t.steps} eval_loss {result['eval_loss']:.4f} "
                    f"perplexity {result['eval_perplexity']:.2f}")
            window_start, window_steps = time.perf_counter(), 0
        if stop.agreed():
            if too_many_nonfinite(*pending):
                return 3
            save(step, force=True)
            ckpt.wait()
            log.flush(plot=True)
            log.say(f"stopped at step {step} on request; checkpoint saved — run the same command to continue")
            return EXIT_SIGNAL.get(stop.signal, 143)
        if step % config.checkpoint.every_steps == 0 or step == t.steps:
            if too_many_nonfinite(*pending):
                return 3
            pending = None
            save(step)
    ckpt.wait()
    log.flush(plot=True)
    log.say(f"done: {step} steps in {_duration(time.perf_counter() - started)}; run folder {config.run.dir}")
    _print_sample(config, trainer, state.params, log)
    return 0


@dataclasses.dataclass(frozen=True)
class Speedometer:
    """Turns steps and seconds into tokens/s, TFLOP/s per device, MFU and an ETA."""

    tokens_per_step: int
    flops_per_token: float
    devices: int
    peak_tflops: float | None

    def row(self, steps: int, seconds: float, remaining_steps: int) -> tuple[dict[str, float], str]:
        """Throughput fields for metrics.jsonl and their text for the step line."""
        tokens_per_s = self.tokens_per_step * steps / seconds
        row = {"tokens_per_s": tokens_per_s,
               "tflops_per_device": tokens_per_s * self.flops_per_token / self.devices / 1e12}
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


def _print_sample(config: Config, trainer: Trainer, params: Any, log: MetricsLogger) -> None:
    if config.log.sample_tokens <= 0:
        return
    from trainer.data.tokenizer import load_tokenizer
    from trainer.sample import greedy

    tokenizer = load_tokenizer(storage.join(config.run.dir, "tokenizer"))
    text = "import os\n"
    prompt = tokenizer.encode(text)
    tokens = greedy(config, trainer.mesh, params, prompt, config.log.sample_tokens)
    log.say("sample (greedy):\n" + text + tokenizer.decode(tokens[len(prompt):]))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
