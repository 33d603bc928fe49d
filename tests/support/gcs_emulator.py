"""A real GCS for tests: `gcp-storage-emulator` on a free loopback port, with a fresh bucket, stopped at the end.

Usage (any test that needs gs://):

    from gcs_emulator import gcs_emulator

    def test_something(tmp_path):
        with gcs_emulator() as gcs:          # starts in ~1 s, bounded by `start_timeout`
            url = gcs.url("runs/a")          # gs://<fresh bucket>/runs/a
            ...                              # gcsfs, array_record, tensorstore/Orbax all talk to the emulator

or as a pytest fixture: `from gcs_emulator import gcs  # noqa: F401` and take `gcs` as an argument.

The environment variables are those docs/pitfalls.md lists; they are set for the duration of the block and restored
afterwards. `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` is read by gcsfs at import time, so this module sets it on import
(before a test imports gcsfs); it only disables an experimental gcsfs feature that stalls against the emulator.
Each block gets its own bucket, because the emulator ignores list offsets and a ranged delete wipes a whole bucket.
The server runs through tests/support/gcs_emulator_main.py, which adds the generation headers tensorstore needs.
Close data iterators inside the block: a read still in flight when the emulator stops blocks in the GCS client's
retries for minutes (`TrainIterator.close()` waits for in-flight reads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import portpicker
import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@dataclasses.dataclass(frozen=True)
class Emulator:
    """A running emulator: its endpoint and the fresh bucket made for this block."""

    endpoint: str
    bucket: str

    def url(self, path: str = "") -> str:
        """gs:// URL of `path` inside the fresh bucket."""
        return f"gs://{self.bucket}/{path.lstrip('/')}".rstrip("/")


def _env(endpoint: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": endpoint,  # gcsfs, etils.epath
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else gcsfs stalls 60 s per call
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,  # array_record's own GCS reader; else gs:// reads hang
        "TENSORSTORE_GCS_HTTP_URL": endpoint,  # Orbax / tensorstore
        "GCE_METADATA_ROOT": "127.0.0.1:1",  # no metadata-server probing for credentials
    }


def _wait_ready(endpoint: str, proc: subprocess.Popen, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gcp-storage-emulator did not answer on {endpoint} in time") from None
            time.sleep(0.05)


def _create_bucket(endpoint: str, bucket: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test",
        data=f'{{"name": "{bucket}"}}'.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _reset_client_caches() -> None:
    """Forget gcsfs instances made for an earlier endpoint (gcsfs caches them per constructor arguments)."""
    if "gcsfs" in sys.modules:
        sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
    if "trainer.storage" in sys.modules:
        sys.modules["trainer.storage"].clear_cache()


@contextlib.contextmanager
def gcs_emulator(start_timeout: float = 30.0, bucket: str | None = None) -> Iterator[Emulator]:
    """Start the emulator (in memory) on a free loopback port with a fresh bucket and the env vars; stop it at the
    end."""
    port = portpicker.pick_unused_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = bucket or f"test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_main.py"),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {key: os.environ.get(key) for key in _env(endpoint)}
    try:
        _wait_ready(endpoint, proc, time.monotonic() + start_timeout)
        _create_bucket(endpoint, bucket)
        os.environ.update(_env(endpoint))
        _reset_client_caches()
        yield Emulator(endpoint=endpoint, bucket=bucket)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_client_caches()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def gcs() -> Iterator[Emulator]:
    """Pytest fixture form of `gcs_emulator()`: a running emulator and a fresh bucket for one test."""
    with gcs_emulator() as emulator:
        yield emulator
