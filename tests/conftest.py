"""Test-wide setup: 8 virtual CPU devices (before jax is imported) and parsed absl flags for Grain workers."""

import os
import sys

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=", "--ignored=")
    + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Every test process (and the trainer subprocesses they start) shares compiled executables: a 20 s compile
# becomes a 2 s load, which keeps the many short training runs of the suite affordable on 2 cores.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "trainer-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import flags  # noqa: E402

flags.FLAGS(sys.argv[:1], known_only=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT = os.path.join(REPO, "tests", "support")  # the tests' helper modules: `from runs import train`
for path in (SUPPORT, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)


def pytest_collection_modifyitems(config, items):
    """Whole training runs (tests/jobs/) are `slow`: `-m "not slow"` is the fast loop while editing."""
    jobs = os.path.join(REPO, "tests", "jobs") + os.sep
    for item in items:
        if str(item.path).startswith(jobs):
            item.add_marker(pytest.mark.slow)
