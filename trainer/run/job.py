"""The job around the step loop: checks that fail fast, data preparation, the run folder, and the state to start
from (this run's latest checkpoint, another run's, or fresh).

A stopped run (SIGTERM, Ctrl-C, a crash) started again with the same run folder continues exactly as if it had
never stopped: the train state and every process's data iterator come back from the latest complete checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from trainer import checkpoint, distributed, sharding, storage
from trainer.config import Config
from trainer.data import mixture, pipeline, synthetic
from trainer.data.bos import check_same_bos, data_adds_bos, record_bos
from trainer.data.mixture import Stage, tokenizer_manifest
from trainer.data.prepare import ensure_prepared
from trainer.data.shards import prepare_hint
from trainer.errors import ConfigError, DataError
from trainer.model import flops
from trainer.model.attention import check_available
from trainer.run import branch, budget, extend, finetune, goodput
from trainer.run.loop import StopRequest, train
from trainer.run.metrics import MetricsLogger
from trainer.run.profile import StepProfiler
from trainer.run.timer import Timer
from trainer.step import StepFunctions, TrainState, make_step_functions
from trainer.target import padding

PLACEHOLDER = "YOUR_BUCKET"


def _data_paths(config: Config) -> list[str]:
    d = config.data
    if d.synthetic:
        return []  # no shards are read
    paths = [d.path] if d.path else []
    paths += [c.path for c in d.mixture] + [c.path for s in d.stages for c in s.mixture]
    return paths


def check_reachable(config: Config, reach: bool = True) -> None:
    """Fail in one line, before any work, on a placeholder bucket or (with `reach`) a path this machine can't reach."""
    for key, path in [("run.dir", config.run.dir)] + [("data.path", p) for p in _data_paths(config)]:
        if PLACEHOLDER in path:
            raise ConfigError(
                f"{key}={path} is the example placeholder: prepare your shards with "
                f"`{prepare_hint('gs://<bucket>/<name>/data')}` and override data.path=gs://<bucket>/... "
                "and run.dir=gs://<bucket>/... (docs/data.md)"
            )
        if reach:
            storage.check_reachable(path, key)  # seconds and one line, not the storage client's minute of retries


def _prepare_data(config: Config) -> None:
    if jax.process_index() == 0:
        ensure_prepared(config.data, tokenizer=finetune.base_tokenizer(config))
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
    if previous.data.synthetic != config.data.synthetic:
        kind = "synthetic" if previous.data.synthetic else "real"
        raise ConfigError(f"{config.run.dir} holds a run on {kind} data; use a new run.dir to switch data.synthetic")


def _check_tokenizer(stages: Sequence[Stage]) -> None:
    """Refuse, before any work, a data folder whose tokenizer is gone: sampling and every export need it."""
    manifest = tokenizer_manifest(stages)
    path = storage.join(manifest.location, manifest.tokenizer.get("file") or "tokenizer.model")
    if not storage.exists(path):
        raise DataError(
            f"{path} is missing: the tokenizer named by {manifest.location}/manifest.json (sampling and "
            "exports need it); copy it back, or prepare the data again into a new folder"
        )


def _copy_tokenizer(config: Config, stages: Sequence[Stage]) -> None:
    source = stages[0].components[0].path
    target = storage.join(config.run.dir, "tokenizer")
    for name in ("tokenizer.model", "tokenizer", "chat_template.json"):
        src = storage.join(source, name)
        if storage.exists(src) and not storage.isdir(src):
            storage.write_bytes_atomic(storage.join(target, name), storage.read_bytes(src))
        elif storage.isdir(src):
            for file in storage.listdir(src):
                storage.write_bytes_atomic(storage.join(target, file), storage.read_bytes(storage.join(src, file)))


def _train_iterator(config: Config, stages: Sequence[Stage]) -> Any:
    """This process's training batches: the Grain pipeline over the shards, or synthetic tokens."""
    shape = dict(
        seq_len=config.train.seq_len,
        global_batch_size=config.train.global_batch_size,
        seed=config.train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if config.data.synthetic:
        return synthetic.make_train_iterator(vocab_size=config.model.vocab_size, **shape)
    return pipeline.make_train_iterator(config.data, stages=stages, **shape)


def _initial_state(
    config: Config, step_fns: StepFunctions, ckpt: checkpoint.Checkpointer, restored: Any, log: MetricsLogger
) -> TrainState:
    if restored is not None:
        state, step = restored
        log.say(f"resuming from {ckpt.step_dir(step)}")
        return state
    state = step_fns.init(jax.random.key(config.train.seed))
    if config.checkpoint.restore_from:
        reference = finetune.pin_base(config)
        if step_fns.lora_base is not None:  # LoRA: fresh adapters (B = 0) on the frozen base attached before
            return state
        if config.checkpoint.restore_params_only:
            params, step = finetune.start_params(config, step_fns.abstract_state.params, reference)
            state = state.replace(params=params)
        else:
            state, step = checkpoint.restore_state_from(reference, step_fns.abstract_state)
        what = "params only" if config.checkpoint.restore_params_only else "whole state"
        log.say(f"started from {reference} (step {step}, {what})")
    return state


def run(config: Config, cpu_line: str | None = None) -> int:
    """Run the job described by `config` to `train.steps`; returns the process exit code.

    `cpu_line` (from trainer.cpu_tuning) is printed at start-up when the job runs on the CPU backend.
    """
    timer = Timer()  # from here until the first step: start-up
    check_reachable(config)
    distributed.initialize(config.distributed)
    check_available(config.model.attention)
    mesh = sharding.make_mesh(config.mesh)
    mesh_shape = dict(mesh.shape)
    sharding.check_batch_divisible(config, mesh_shape, jax.process_count())
    padding.check(config, mesh_shape)  # an axis split over more devices than it has elements
    is_main = jax.process_index() == 0

    real_data = not config.data.synthetic
    if real_data:
        _prepare_data(config)
        config = budget.with_epochs(config)  # train.epochs → train.steps, from the prepared data's tokens
    stages = mixture.read_stages(config.data) if real_data else []  # every manifest read once, passed down
    vocab = int(tokenizer_manifest(stages).tokenizer["vocab_size"]) if real_data else None
    if vocab is not None and vocab > config.model.vocab_size:
        raise ConfigError(
            f"the data's tokenizer has {vocab} ids but model.vocab_size={config.model.vocab_size}; "
            f"set model.vocab_size={vocab} or more"
        )
    _check_run_dir(config)
    extend.check_start(config)  # a WSD run extended or branched keeps the learning rates it trained with
    if real_data:
        _check_tokenizer(stages)
        finetune.check_chat_data(config, stages)
        bos = data_adds_bos(config)  # every folder of a mixture/stages agrees, or one line now
        check_same_bos(config.run.dir, bos)
        pipeline.make_eval_iterator(  # fail now, not at the first evaluation, when there is no validation split
            config.data,
            seq_len=config.train.seq_len,
            global_batch_size=config.train.global_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            num_batches=1,
            stages=stages,
        ).close()
    data_iter = _train_iterator(config, stages)  # opens every train shard: a damaged one is named now, before any write
    step_fns = make_step_functions(config, mesh)
    ckpt = checkpoint.Checkpointer(config.run.dir, config.checkpoint)
    try:
        restored = ckpt.restore_latest(step_fns.abstract_state, data_iter)  # a damaged newest step: the one before
    except BaseException:
        ckpt.close()
        raise
    # Every check above passed: only now does anything get written to the run folder (a refused resume leaves
    # the old folder as it was).
    log = MetricsLogger(
        config.run.dir,
        enabled=is_main,
        tensorboard=config.log.tensorboard,
        wandb=config.log.wandb,
        config=config.to_dict(),
    )
    log.describe_run(
        config.run.dir, flops.param_count(config.model), config.train.global_batch_size * config.train.seq_len
    )
    if is_main:
        storage.makedirs(config.run.dir)
        checkpoint.write_run_config(config.run.dir, config)
        if real_data:
            _copy_tokenizer(config, stages)
            record_bos(config.run.dir, bos, source="data manifest")  # read by generation, evaluation, exports
            log.say(pipeline.describe(config.data, stages))
        else:
            log.say(
                f"data: synthetic, uniformly random tokens 0..{config.model.vocab_size - 1} from train.seed "
                "(no shards, no tokenizer; the loss stays near ln(vocab))"
            )
        log.say(budget.run_line(config))
        if cpu_line and jax.default_backend() == "cpu":
            log.say(cpu_line)

    finetune.attach_base(config, step_fns, log.say)  # LoRA: the frozen base, at every start
    state = _initial_state(config, step_fns, ckpt, restored, log)
    if restored is None:  # a cooldown branch reads on from its main run's data position
        branch.begin(config, int(jax.device_get(state.step)), data_iter, log.say, is_main)
    ledger = goodput.Ledger(config.run.dir, timer, int(jax.device_get(state.step)), enabled=is_main)
    stop = StopRequest()
    profiler = StepProfiler(config.log.profile_steps, config.run.dir, enabled=is_main, say=log.say)
    code = 1  # an exception's exit code
    try:
        code = train(config, step_fns, ckpt, data_iter, state, stop, log, profiler, timer, stages, ledger)
        cooldown = branch.cooldown(config.run.dir, config, config.train.steps) if code == 0 and is_main else None
        if cooldown is not None:
            log.say(cooldown.line())
        return code
    finally:
        profiler.stop()
        stop.restore()
        ckpt.close()
        log.say(ledger.close(code))
        data_iter.close()
        log.close()
