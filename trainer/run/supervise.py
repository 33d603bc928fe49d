"""`python -m trainer.supervise [--max-restarts N] [--backoff S] -- python -m trainer.main CONFIG ...`

Restarts a crashed training job with exponential back-off; each restart resumes from the run's latest checkpoint
(the trainer does that by itself; its goodput ledger is told the restart's number, back-off and the previous exit
code). Stops on success, on a stop request (SIGTERM/SIGINT, forwarded to the job),
and on errors a restart can't fix: a bad config (exit code 2) or repeated non-finite losses (exit code 3).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from trainer import cli_args
from trainer.errors import ConfigError, ExitCode, cli

# What a restarted job is told (its goodput ledger, trainer.run.goodput, records them).
RESTART_ENV, BACKOFF_ENV, PREVIOUS_EXIT_ENV = "TRAINER_RESTART", "TRAINER_BACKOFF_S", "TRAINER_PREVIOUS_EXIT"

FINAL_EXIT_CODES = {
    ExitCode.OK: "finished",
    ExitCode.USAGE: "configuration error",
    ExitCode.NONFINITE: "non-finite losses",
    ExitCode.INTERRUPTED: "interrupted",
    ExitCode.TERMINATED: "stopped by SIGTERM",
}


def supervise(
    command: list[str], max_restarts: int, backoff: float, max_backoff: float = 300.0, healthy_after: float = 3600.0
) -> int:
    """Run `command` until it succeeds or fails in a way a restart can't fix; returns the last exit code.

    `max_restarts` counts crashes in a row: a job that ran `healthy_after` seconds or more before crashing made
    progress, so the count and the back-off start again (a week-long run may meet many unrelated crashes).
    """
    child: subprocess.Popen | None = None
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        restarts = 0
        told: dict[str, str] = {}  # what a restarted job's goodput ledger is told (trainer.run.goodput)
        while True:
            started = time.monotonic()
            try:
                child = subprocess.Popen(command, env={**os.environ, **told})
            except OSError as e:  # no such program, not executable: a restart can't help
                raise ConfigError(
                    f"can't start {command[0]!r}: {e.strerror or e}; check the command after --"
                ) from None
            code = child.wait()
            if time.monotonic() - started >= healthy_after and restarts:
                print(
                    f"supervise: the job ran {time.monotonic() - started:.0f}s before exiting: restart count reset",
                    file=sys.stderr,
                    flush=True,
                )
                restarts = 0
            if code in FINAL_EXIT_CODES or stopping:
                why = FINAL_EXIT_CODES.get(code, "stop requested")
                print(f"supervise: job exited with code {code} ({why}); not restarting", file=sys.stderr, flush=True)
                return code
            if restarts >= max_restarts:
                print(
                    f"supervise: job exited with code {code}; giving up after {restarts} restart(s)",
                    file=sys.stderr,
                    flush=True,
                )
                return code
            delay = min(backoff * 2**restarts, max_backoff)
            restarts += 1
            print(
                f"supervise: job exited with code {code}; restart {restarts}/{max_restarts} in {delay:.1f}s "
                "(resuming from the latest checkpoint)",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(delay)
            told = {RESTART_ENV: str(restarts), BACKOFF_ENV: f"{delay:.3f}", PREVIOUS_EXIT_ENV: str(code)}
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@cli
def main(argv: list[str] | None = None) -> int:
    """Parse `[options] -- command ...` and supervise the command."""
    parser = cli_args.ArgumentParser(prog="python -m trainer.supervise", description=__doc__.split("\n\n")[1])
    parser.add_argument("--max-restarts", type=int, default=10, help="restarts in a row before giving up (default 10)")
    parser.add_argument("--backoff", type=float, default=5.0, help="first delay in seconds, doubled each time")
    parser.add_argument(
        "--healthy-after",
        type=float,
        default=3600.0,
        help="a job that ran this many seconds before crashing resets the restart count (default 3600)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- followed by the job's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ConfigError("give the job's command after --, e.g. -- python -m trainer.main configs/tiny.yml")
    return supervise(command, args.max_restarts, args.backoff, healthy_after=args.healthy_after)


if __name__ == "__main__":
    sys.exit(main())
