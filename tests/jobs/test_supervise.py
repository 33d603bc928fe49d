"""The supervisor's restart accounting, on a small stand-in job (a Python one-liner) instead of the trainer."""

import sys

from trainer.run.supervise import supervise


def _job(counter, crashes: int, seconds: float) -> list[str]:
    """A job that, on each of its first `crashes` runs, lives `seconds` and exits 1; afterwards it exits 0."""
    code = (
        f"import pathlib, sys, time; p = pathlib.Path({str(counter)!r}); n = int(p.read_text() or 0) "
        f"if p.exists() else 0; p.write_text(str(n + 1)); time.sleep({seconds}); "
        f"sys.exit(1 if n < {crashes} else 0)"
    )
    return [sys.executable, "-c", code]


def test_crashes_in_a_row_exhaust_the_restarts(tmp_path):
    counter = tmp_path / "runs"
    assert supervise(_job(counter, crashes=3, seconds=0), max_restarts=1, backoff=0.01, healthy_after=60) == 1
    assert counter.read_text() == "2"  # the first run and one restart


def test_a_healthy_stretch_resets_the_count(tmp_path):
    counter = tmp_path / "runs"
    assert supervise(_job(counter, crashes=3, seconds=0.3), max_restarts=1, backoff=0.01, healthy_after=0.2) == 0
    assert counter.read_text() == "4"  # three crashes, each after a healthy stretch, then success
