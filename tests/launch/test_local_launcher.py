"""Tests of launch/local.py: environment, prefixed streaming, fail-fast, signals, real 2-process JAX."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launch.local import child_env, run_local, xla_flags_with_device_count  # noqa: E402

SCRIPT = REPO / "launch" / "local.py"
PY = sys.executable


def _cli(args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, **kw)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def test_xla_flags_replaces_device_count_and_keeps_others() -> None:
    assert xla_flags_with_device_count(None, 4) == "--xla_force_host_platform_device_count=4"
    got = xla_flags_with_device_count("--xla_a=1 --xla_force_host_platform_device_count=8 --xla_b", 2)
    assert got == "--xla_a=1 --xla_b --xla_force_host_platform_device_count=2"


def test_child_env_cpu_and_gpu() -> None:
    env = child_env({"XLA_FLAGS": "--x=1", "KEEP": "y"}, 1, 3, 4, "127.0.0.1:1234")
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == ("3", "1", "cpu")
    assert env["XLA_FLAGS"] == "--x=1 --xla_force_host_platform_device_count=4"
    assert env["KEEP"] == "y"
    gpu = child_env({}, 1, 2, 2, "127.0.0.1:1", platform="gpu")
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and gpu["JAX_PLATFORMS"] == "cuda"
    assert "XLA_FLAGS" not in gpu


def test_children_get_env_and_prefixed_output() -> None:
    code = (
        "import os, sys; e = os.environ; "
        "print(e['JAX_PROCESS_ID'], e['JAX_NUM_PROCESSES'], e['JAX_COORDINATOR_ADDRESS'], "
        "e['JAX_PLATFORMS'], e['XLA_FLAGS'], sep='|'); "
        "print('to-stderr', file=sys.stderr)"
    )
    out, err = io.StringIO(), io.StringIO()
    base = dict(os.environ, XLA_FLAGS="--xla_foo=1 --xla_force_host_platform_device_count=8")
    rc = run_local([PY, "-c", code], 2, 4, port=12345, env=base, stdout=out, stderr=err, timeout_s=60)
    assert rc == 0
    lines = sorted(out.getvalue().splitlines())
    assert lines == [
        f"[{i}] {i}|2|127.0.0.1:12345|cpu|--xla_foo=1 --xla_force_host_platform_device_count=4" for i in (0, 1)
    ]
    assert sorted(err.getvalue().splitlines()) == ["[0] to-stderr", "[1] to-stderr"]


def test_fail_fast_kills_the_others_and_returns_the_code(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid0"
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        if os.environ['JAX_PROCESS_ID'] == '1':
            time.sleep(0.3)
            sys.exit(3)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # forces the SIGKILL escalation
        open({str(pidfile)!r}, 'w').write(str(os.getpid()))
        time.sleep(120)
        """
    )
    t0 = time.monotonic()
    rc = run_local([PY, "-c", code], 2, 1, grace_s=0.5, timeout_s=60, stdout=io.StringIO(), stderr=io.StringIO())
    assert rc == 3
    assert time.monotonic() - t0 < 20
    assert not _pid_alive(int(pidfile.read_text()))


def test_timeout_stops_everything() -> None:
    rc = run_local(
        [PY, "-c", "import time; time.sleep(60)"],
        2,
        1,
        grace_s=0.5,
        timeout_s=1.0,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert rc == 124


def test_cli_success_and_exit_code() -> None:
    r = _cli(["--processes", "2", "--", PY, "-c", "print('hi')"])
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] hi", "[1] hi"]
    r = _cli(
        [
            "-n",
            "2",
            "--grace",
            "0.5",
            "--",
            PY,
            "-c",
            "import os,sys,time; i=os.environ['JAX_PROCESS_ID']; time.sleep(30 if i=='0' else 0); sys.exit(5)",
        ]
    )
    assert r.returncode == 5


def test_cli_requires_a_command() -> None:
    r = _cli(["--processes", "2"])
    assert r.returncode == 2 and "missing command" in r.stderr


def test_cli_forwards_sigint_to_children() -> None:
    code = "import sys, time; print('ready', flush=True); time.sleep(60)"
    with subprocess.Popen(  # the block closes the pipes
        [PY, str(SCRIPT), "-n", "2", "--grace", "1", "--", PY, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as p:
        try:
            seen = 0
            deadline = time.monotonic() + 30
            while seen < 2 and time.monotonic() < deadline:  # both children started
                line = p.stdout.readline()
                seen += line.endswith("ready\n")
            assert seen == 2
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            rc = p.wait(timeout=20)
            assert time.monotonic() - t0 < 10
            assert rc == 128 + signal.SIGINT  # children died of the forwarded SIGINT
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


JAX_CHILD = textwrap.dedent(
    """
    import os
    import jax
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
        initialization_timeout=60,
    )
    print(f"devices={jax.device_count()} local={jax.local_device_count()} procs={jax.process_count()} "
          f"me={jax.process_index()}", flush=True)
    jax.distributed.shutdown()
    """
)


def test_real_two_process_jax(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(JAX_CHILD)
    out, err = io.StringIO(), io.StringIO()
    rc = run_local([PY, str(script)], 2, 4, stdout=out, stderr=err, grace_s=2, timeout_s=120)
    assert rc == 0, err.getvalue()[-3000:]
    lines = sorted(line for line in out.getvalue().splitlines() if "devices=" in line)
    assert lines == [f"[{i}] devices=8 local=4 procs=2 me={i}" for i in (0, 1)], out.getvalue()
