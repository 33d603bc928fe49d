"""Running untrusted programs (a model's code, a task's tests) contained: each in a child process of its own with a
wall-time and CPU limit, an address-space cap, no file bytes written, a temporary working directory, a scrubbed
environment and, where Linux user namespaces work (`unshare` of util-linux), no network.

Why a child per program and not `exec` in-process with builtins removed: a program that loops, crashes the
interpreter, allocates without bound or forks can only be stopped from outside; resource limits are enforced by the
kernel, and killing the child's process group ends whatever it started. The limits are set by the child itself
(a few lines before the program runs) rather than in a `preexec_fn`, which is unsafe in a multithreaded parent such
as a JAX process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

# Run in the child before the program: the limits, then the program as __main__ (argv: limits, program path).
CHILD = """
import resource, sys
cpu, memory = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
path = sys.argv[3]
sys.argv = [path]
source = open(path).read()
code = compile(source, path, "exec")
del resource, cpu, memory, path, source
exec(code, {"__name__": "__main__"})
"""
SAFE_ENV = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")


@dataclass(frozen=True)
class Limits:
    """What one program may use: seconds of wall time and of CPU, bytes of address space."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 2 << 30


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Outcome:
    """How a program ended: `passed` when it exited 0 within its limits; `reason` says why not otherwise."""

    passed: bool
    reason: str  # "passed", "failed: exit N", "killed: SIGNAME", "timed out"


@lru_cache(maxsize=1)
def network_isolation() -> tuple[str, ...]:
    """The command prefix that runs a child without network (`unshare --user --map-root-user --net`), or () where
    user namespaces are unavailable (checked once by running `true` under it)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--user", "--map-root-user", "--net")
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if done.returncode == 0 else ()


def isolation_line() -> str:
    """One line for start-up: how programs are contained here."""
    base = "code execution: each program in a child process with time, CPU, memory and file-size limits"
    if network_isolation():
        return base + ", in a network namespace (no network)"
    return base + "; Linux user namespaces are unavailable here (unshare failed), so programs CAN reach the network"


def run_program(source: str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """Run `source` as a Python program under `limits` (see the module docstring); never raises on its behaviour."""
    workdir = tempfile.mkdtemp(prefix="trainer-exec-")
    try:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as f:
            f.write(source)
        env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        command = [
            *network_isolation(),
            sys.executable,
            "-I",
            "-c",
            CHILD,
            str(max(1, int(limits.cpu_s))),
            str(int(limits.memory_bytes)),
            path,
        ]
        child = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a timeout kills whatever it forked too
        )
        try:
            code = child.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            return Outcome(False, "timed out")
        _kill_group(child)  # anything it left running in the background
        if code == 0:
            return Outcome(True, "passed")
        if code < 0:
            return Outcome(False, f"killed: {signal.Signals(-code).name}")
        return Outcome(False, f"failed: exit {code}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL the child's process group (a no-op once it is gone), then reap the child."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()
