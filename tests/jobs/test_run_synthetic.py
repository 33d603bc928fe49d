"""Synthetic data runs like real data (bitwise resume), and what a run lets you see: a profile trace of the chosen
steps, the same rows in W&B (offline) as in metrics.jsonl, a titled loss curve."""

from __future__ import annotations

import glob
import gzip
import json
import os
import struct

import pytest
from runs import assert_params_equal, final_params, losses, train, write_config

STEPS = 8
PROFILE = [3, 4]


def _config(tmp_path, name: str, observe: bool) -> tuple[str, str]:
    """A synthetic-data run; `observe` adds a profile window and offline W&B (neither changes a number)."""
    run_dir = str(tmp_path / name)
    log = {"profile_steps": PROFILE, "wandb": {"project": "synthetic-test", "mode": "offline"}} if observe else {}
    # data.path is the placeholder bucket: synthetic data reads no shards, so it is never touched.
    config = write_config(
        str(tmp_path / f"{name}.yml"), "gs://YOUR_BUCKET/none", run_dir, data={"synthetic": True}, log=log
    )
    return config, run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted synthetic run: its output, run folder, per-step losses and final params."""
    config, run_dir = _config(tmp_path_factory.mktemp("synthetic"), "reference", observe=True)
    out = train(config, WANDB_SILENT="true")
    return out, run_dir, losses(run_dir), final_params(run_dir)


def test_synthetic_run_trains_evaluates_and_skips_the_sample(reference):
    out, run_dir, ref_losses, _ = reference
    assert sorted(ref_losses) == list(range(1, STEPS + 1))
    assert "data: synthetic" in out and "no sample: synthetic data has no tokenizer" in out
    assert "% of Chinchilla-optimal" in out and "eval_loss" in out
    assert not os.path.exists(os.path.join(run_dir, "tokenizer"))
    assert all(5.5 < loss < 7.0 for loss in ref_losses.values())  # random tokens: about ln(512) = 6.24


def test_synthetic_batches_depend_on_seed_and_step_only_not_on_hosts():
    import numpy as np

    from trainer.data import synthetic

    shape = {"vocab_size": 97, "seq_len": 16, "global_batch_size": 8, "seed": 5}
    one = synthetic.make_train_iterator(**shape, process_index=0, process_count=1)
    halves = [synthetic.make_train_iterator(**shape, process_index=i, process_count=2) for i in range(2)]
    first = [next(one) for _ in range(3)]
    for batch in first:
        parts = [next(h) for h in halves]
        for key in batch:
            assert np.array_equal(batch[key], np.concatenate([p[key] for p in parts]))
    assert batch["inputs"].shape == (8, 16) and 0 <= batch["inputs"].min() and batch["inputs"].max() < 97
    assert np.array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    resumed = synthetic.make_train_iterator(**shape, process_index=0, process_count=1)
    resumed.set_state(json.loads(json.dumps(one.get_state())))
    fresh = synthetic.make_train_iterator(**shape, process_index=0, process_count=1)
    later = [next(fresh) for _ in range(4)][-1]
    assert np.array_equal(next(resumed)["inputs"], later["inputs"])
    assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])


def test_a_synthetic_run_folder_is_not_continued_on_real_data(reference):
    import dataclasses

    from trainer.checkpoint import read_run_config
    from trainer.errors import ConfigError
    from trainer.run.job import _check_run_dir

    _, run_dir, _, _ = reference
    config = read_run_config(run_dir)
    _check_run_dir(config)
    with pytest.raises(ConfigError, match="synthetic data; use a new run.dir"):
        _check_run_dir(dataclasses.replace(config, data=dataclasses.replace(config.data, synthetic=False)))


def test_synthetic_stop_and_resume_is_bitwise_identical(reference, tmp_path):
    _, _, ref_losses, ref_params = reference
    config, run_dir = _config(tmp_path, "resumed", observe=False)
    assert "stopped at step 3" in train(config, expect=143, TRAINER_TEST_STOP_AT="3")
    train(config)
    assert losses(run_dir) == ref_losses
    assert_params_equal(final_params(run_dir), ref_params)


def _traced_steps(run_dir: str) -> list[list[int]]:
    """For each trace in run_dir/profile: the numbers of the `train` steps it holds (from the Perfetto JSON)."""
    out = []
    pattern = os.path.join(run_dir, "profile", "plugins", "profile", "*", "perfetto_trace.json.gz")
    for path in sorted(glob.glob(pattern)):
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
        out.append(
            sorted(
                {
                    int(e["args"]["step_num"])
                    for e in events
                    if e.get("name") == "train" and "step_num" in e.get("args", {})
                }
            )
        )
    return out


def test_profile_holds_a_trace_of_the_chosen_steps(reference):
    out, run_dir, _, _ = reference
    assert _traced_steps(run_dir) == [PROFILE]
    trace_dir = glob.glob(os.path.join(run_dir, "profile", "plugins", "profile", "*"))[0]
    assert glob.glob(os.path.join(trace_dir, "*.xplane.pb"))  # what TensorBoard's profile plugin reads
    assert "profile of steps 3..4 written" in out


def _wandb_history(raw: bytes) -> list[dict]:
    """The history rows of an offline W&B run file's bytes.

    wandb 0.31 ships no Python reader for its run files (`wandb sync` needs the network), so this reads the format
    directly: a 7-byte header, then LevelDB-log records (crc32, length, type) in 32 KiB blocks, each a protobuf Record.
    """
    from wandb.proto import wandb_internal_pb2

    assert raw[:4] == b":W&B"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:
            break
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                rows.append({k: v for k, v in items.items() if not k.startswith("_")})
    return rows


def test_wandb_offline_history_equals_metrics_jsonl(reference):
    _, run_dir, _, _ = reference
    run_files = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(run_files) == 1
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(run_files[0], "rb") as f:
        assert len(rows) > STEPS and _wandb_history(f.read()) == rows
    with open(os.path.join(run_dir, "wandb_id")) as f:
        assert run_files[0].endswith(f"run-{f.read().strip()}.wandb")


def test_wandb_offline_files_reach_a_gs_run_folder(monkeypatch):
    """A gs:// run folder gets the W&B files too, complete: copied up again after the W&B run finished."""
    from gcs_emulator import gcs_emulator

    from trainer import storage
    from trainer.config import WandbConfig
    from trainer.run.metrics import MetricsLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    rows = [{"step": 1, "loss": 2.5}, {"step": 1, "eval_loss": 2.75}, {"step": 2, "loss": 2.25}]
    with gcs_emulator() as gcs:
        run_dir = gcs.url("runs/wandb")
        log = MetricsLogger(
            run_dir,
            enabled=True,
            tensorboard=False,
            wandb=WandbConfig(project="gcs-test", mode="offline"),
            config={"train": {"steps": 2}},
        )
        for row in rows:
            log.log(row)
        log.flush(plot=True)
        log.close()
        fs, root = storage.filesystem(run_dir)
        run_files = fs.glob(root + "/wandb/offline-run-*/run-*.wandb")
        assert len(run_files) == 1 and storage.exists(storage.join(run_dir, "wandb_id"))
        assert _wandb_history(fs.cat_file(run_files[0])) == rows


def test_loss_curve_title_names_run_size_and_tokens(tmp_path):
    from trainer.run.metrics import MetricsLogger

    log = MetricsLogger(str(tmp_path / "my-run"), enabled=True, tensorboard=False)
    log.describe_run(str(tmp_path / "my-run"), 1_269_209_088, 524_288)
    log.log({"step": 3128, "loss": 3.0})
    log.log({"step": 3128, "eval_loss": 3.1})
    assert log.title() == "my-run: 1.27B parameters, 1.64B tokens seen"
    log.flush(plot=True)
    assert os.path.getsize(tmp_path / "my-run" / "loss.png") > 0
