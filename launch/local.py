"""Run one command as N cooperating JAX processes on this machine.

    python launch/local.py --processes 2 --devices-per-process 4 -- \\
        python -m trainer.main configs/303m.yml train.steps=100

Every child gets the environment the trainer reads for `jax.distributed.initialize`
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) plus the device setup:
on CPU (the default) `JAX_PLATFORMS=cpu` and `--xla_force_host_platform_device_count=K`
in `XLA_FLAGS`, so 2 processes x 4 devices behave like two 4-device hosts; with
`--platform gpu` each child sees its own K GPUs through `CUDA_VISIBLE_DEVICES`.

Output lines are prefixed with `[i] `. The launcher fails fast: the first child that
exits non-zero makes it stop the others (SIGTERM, then SIGKILL after a grace period)
and exit with that child's code. SIGINT/SIGTERM sent to the launcher go to the children.
Also usable as a library: `run_local(command, processes, devices_per_process)`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

from trainer import cli_args

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def xla_flags_with_device_count(existing: str | None, count: int) -> str:
    """Return XLA_FLAGS with the host device-count flag set to `count`.

    Any earlier value of that flag is dropped (the last one would win anyway, but a
    single flag keeps logs unambiguous); every other flag is kept in order.
    """
    kept = [f for f in (existing or "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])


def child_env(
    base: Mapping[str, str],
    process_id: int,
    processes: int,
    devices_per_process: int,
    coordinator: str,
    platform: str = "cpu",
) -> dict[str, str]:
    """Build the environment of child `process_id`: coordinator variables plus devices.

    Pure function (no side effects) so the exact environment can be unit-tested.
    """
    env = dict(base)
    env["JAX_COORDINATOR_ADDRESS"] = coordinator
    env["JAX_NUM_PROCESSES"] = str(processes)
    env["JAX_PROCESS_ID"] = str(process_id)
    env["PYTHONUNBUFFERED"] = "1"  # live, line-by-line output through the pipes
    if platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = xla_flags_with_device_count(base.get("XLA_FLAGS"), devices_per_process)
    elif platform == "gpu":
        env["JAX_PLATFORMS"] = "cuda"
        first = process_id * devices_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + d) for d in range(devices_per_process))
    else:
        raise ValueError(f"unknown platform {platform!r} (expected cpu or gpu)")
    return env


def _pump(stream: IO[bytes], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    """Copy `stream` line by line to `out`, prefixing each line; runs in a thread."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        with lock:
            out.write(f"{prefix}{line}\n")
            out.flush()
    stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the child's process group (the child and anything it spawned)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_code(returncode: int) -> int:
    """Map a Popen return code to a shell-style exit code (signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _stop_all(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every running child, wait up to `grace_s`, then SIGKILL the rest."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        _signal_group(p, signal.SIGKILL)
    for p in procs:
        p.wait()


def run_local(
    command: Sequence[str],
    processes: int,
    devices_per_process: int,
    *,
    port: int | None = None,
    platform: str = "cpu",
    env: Mapping[str, str] | None = None,
    grace_s: float = 10.0,
    timeout_s: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run `command` as `processes` JAX processes on this machine; return the exit code.

    What: starts the children with coordinator 127.0.0.1:`port` (a free port from
    portpicker when None), streams their prefixed output to `stdout`/`stderr`, and
    returns 0 when all succeed, else the code of the first child that failed (the
    others are stopped: SIGTERM, then SIGKILL after `grace_s`). After `timeout_s`
    seconds (if given) all children are stopped and 124 is returned, like timeout(1).
    Why: one-machine multi-process runs exercise the same distributed code path as a
    multi-host TPU/GPU job, for tests and debugging.
    """
    if not command:
        raise ValueError("empty command")
    if processes < 1 or devices_per_process < 1:
        raise ValueError("processes and devices_per_process must be >= 1")
    if port is None:
        import portpicker

        port = portpicker.pick_unused_port()
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    base = dict(os.environ if env is None else env)
    coordinator = f"127.0.0.1:{port}"
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    signals_seen: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        signals_seen.append(signum)
        # First signal: pass it on; a second one means "now": kill everything.
        sig = signum if len(signals_seen) == 1 else signal.SIGKILL
        for p in procs:
            _signal_group(p, sig)

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, forward)
    try:
        for i in range(processes):
            p = subprocess.Popen(
                list(command),
                env=child_env(base, i, processes, devices_per_process, coordinator, platform),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group: we decide who gets signals
            )
            procs.append(p)
            for stream, sink in ((p.stdout, out), (p.stderr, err)):
                t = threading.Thread(target=_pump, args=(stream, f"[{i}] ", sink, lock), daemon=True)
                t.start()
                pumps.append(t)
        code = 0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                code = _exit_code(failed[0])
                _stop_all(procs, grace_s)
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                with lock:
                    err.write(f"local launcher: timed out after {timeout_s:g}s, stopping all processes\n")
                _stop_all(procs, grace_s)
                code = 124
                break
            time.sleep(0.05)
        if code == 0 and signals_seen:
            code = 128 + signals_seen[0]  # interrupted, even if the children exited cleanly
    except BaseException:
        _stop_all(procs, 0.0)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5.0)
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: parse `[options] -- command ...` and call `run_local`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        cut = args.index("--")
        opts, command = args[:cut], args[cut + 1 :]
    else:
        opts, command = args, []
    parser = cli_args.ArgumentParser(
        prog="launch/local.py",
        description="Run a command as N JAX processes on this machine (coordinator on 127.0.0.1).",
        usage="%(prog)s --processes N --devices-per-process K [--port P] [--platform cpu|gpu] -- COMMAND ...",
    )
    parser.add_argument("--processes", "-n", type=int, required=True, help="number of processes")
    parser.add_argument(
        "--devices-per-process",
        "-d",
        type=int,
        default=1,
        help="CPU devices (or GPUs with --platform gpu) per process (default 1)",
    )
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    parser.add_argument(
        "--platform",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: virtual CPU devices (default); gpu: K GPUs per process",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop everything and exit 124 after this many seconds"
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL when stopping children"
    )
    ns = parser.parse_args(opts)
    if not command:
        parser.error("missing command after --")
    if ns.processes < 1 or ns.devices_per_process < 1:
        parser.error("--processes and --devices-per-process must be >= 1")
    try:
        return run_local(
            command,
            ns.processes,
            ns.devices_per_process,
            port=ns.port,
            platform=ns.platform,
            grace_s=ns.grace,
            timeout_s=ns.timeout,
        )
    except FileNotFoundError as e:
        print(f"error: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
