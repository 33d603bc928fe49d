"""Errors a person can act on, the exit codes every command uses, and the wrapper that turns one into the other.

Every user-facing mistake (a config value, a path, a corrupt file, an export that can't be written) raises a subclass
of `ConfigError` (exit 2) whose message is one line saying what to change; a store that can't be reached now is a
`StorageError` (exit 4: a later restart may work) and an export that fails its own check a `ParityError` (exit 1). All
three are `TrainerError`s: `cli` runs a command's `main`, prints such an error as `error: <message>` on stderr and
returns its exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Callable
from typing import Any


class ExitCode(enum.IntEnum):
    """Process exit codes of every command (the supervisor decides on restarts from them)."""

    OK = 0
    FAILURE = 1  # a crash, or a check that ran and failed (e.g. export parity)
    USAGE = 2  # a config, argument, path or file a person must fix; restarting won't help
    NONFINITE = 3  # training stopped after too many non-finite steps in a row
    UNREACHABLE = 4  # a gs:// store (or the network) can't be reached; a later restart may work
    INTERRUPTED = 130  # Ctrl-C (SIGINT); a checkpoint was saved
    TERMINATED = 143  # SIGTERM (preemption); a checkpoint was saved


class TrainerError(ValueError):
    """An error every command reports as one actionable line with its exit code (`cli`): the project's errors'
    common base, so a caller can catch them all and a command never prints a traceback for one."""

    exit_code = ExitCode.FAILURE


class ConfigError(TrainerError):
    """Input a person must change (config, argument, path, file); the message is one actionable line."""

    exit_code = ExitCode.USAGE


class DataError(ConfigError):
    """Input data or a prepared dataset the pipeline can't use."""


class CheckpointError(ConfigError):
    """A checkpoint that can't be found, read or restored."""


class StorageError(TrainerError):
    """A remote store that can't be reached now (network, DNS, endpoint down): unlike the other errors, trying again
    later may succeed, so its exit code lets a supervisor restart the job with back-off."""

    exit_code = ExitCode.UNREACHABLE


class MappingError(ConfigError):
    """Parameters or an HF config that don't match the LLaMA layout the exporters map."""


class ConversionError(ConfigError):
    """Input the exporters can't use (output folder, tokenizer, dtype range)."""


class ParityError(TrainerError):
    """An export whose weights, logits or tokenizer differ from the run's beyond tolerance."""

    exit_code = ExitCode.FAILURE


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of a library's error message (its type name when empty), at most `limit` characters: the part
    of a many-line error worth putting inside one of ours."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


def report(error: TrainerError) -> int:
    """Print `error` as one line on stderr; return its exit code."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return int(error.exit_code)


def cli(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command's `main(argv)`: a `TrainerError` becomes one line and its exit code, Ctrl-C exit 130."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return int(main(*args, **kwargs))
        except TrainerError as e:
            return report(e)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr, flush=True)
            return int(ExitCode.INTERRUPTED)

    return wrapped
