"""A gs:// path this machine can't reach (no network, the store down) ends in one line within seconds, after two
bounded retries that each say what they wait for, instead of the storage client's minute of logged retries.

The store is an endpoint on loopback where nothing listens (what a stopped emulator leaves)."""

import subprocess
import sys

import portpicker
import pytest
from runs import REPO, trainer_env, write_config

from trainer import main as trainer_main
from trainer import storage
from trainer.errors import ExitCode, StorageError
from trainer.export import command as convert_to_hf


@pytest.fixture
def dead_store(monkeypatch):
    """The GCS client environment of the test emulator, pointed at a port nothing listens on."""
    endpoint = f"http://127.0.0.1:{portpicker.pick_unused_port()}"
    env = {
        "STORAGE_EMULATOR_HOST": endpoint,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "GCE_METADATA_ROOT": "127.0.0.1:1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage.clear_cache()
    yield endpoint.split("//")[1]
    storage.clear_cache()


def assert_retried_then_failed(err: str, host_port: str, url: str, what: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 3, err
    for attempt, line in enumerate(lines[:2], start=1):
        assert line.startswith(
            f"waiting for {host_port} to reach {url} ({what}): Connection refused; retry {attempt}/2 in "
        ), line
    assert lines[2] == (
        f"error: can't reach {url} ({what}): {host_port} Connection refused after 3 attempts; "
        "check the machine's network, or use a local folder"
    )


def test_bounded_retries_say_what_they_wait_for(dead_store, capsys):
    with pytest.raises(StorageError, match=f"can't reach gs://bucket/x \\(run.dir\\): {dead_store} Connection refused"):
        storage.check_reachable("gs://bucket/x", "run.dir", attempts=4, first_wait=0.01)
    waits = capsys.readouterr().err.strip().splitlines()
    assert [w.split("; ")[-1] for w in waits] == ["retry 1/3 in 0s", "retry 2/3 in 0s", "retry 3/3 in 0s"]


def test_prepare_to_an_unreachable_bucket_cli(dead_store, tmp_path):
    env = trainer_env()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.data.prepare",
            "--corpus",
            "stdlib",
            "--out",
            "gs://bucket/data",
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == ExitCode.UNREACHABLE == 4  # a supervisor restarts it with back-off
    assert_retried_then_failed(result.stderr, dead_store, "gs://bucket/data", "--out")


def test_convert_and_train_from_an_unreachable_bucket(dead_store, tmp_path, capsys):
    out = tmp_path / "hf"
    assert convert_to_hf.main(["--checkpoint", "gs://bucket/run", "--out", str(out)]) == ExitCode.UNREACHABLE
    assert_retried_then_failed(capsys.readouterr().err, dead_store, "gs://bucket/run", "the run folder")
    assert not out.exists()
    config = write_config(str(tmp_path / "c.yml"), str(tmp_path / "data"), "gs://bucket/run")
    assert trainer_main.main([config]) == ExitCode.UNREACHABLE
    assert_retried_then_failed(capsys.readouterr().err, dead_store, "gs://bucket/run", "run.dir")
