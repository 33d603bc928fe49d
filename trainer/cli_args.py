"""The argument parser of every command: a wrong argument costs one line and exit code 2, not argparse's usage.

argparse answers a bad flag value with the whole usage text (a dozen lines) before the error. Every command builds
its parser from `ArgumentParser` here instead, which prints only `error: <what argparse found>; see --help` (the
flag, the value given and, for flags with choices, the values allowed) and exits with `ExitCode.USAGE`.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from trainer.errors import ExitCode


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line on stderr and exit code 2 (subcommand parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        """Print `message` as one line ending in a pointer to `--help`, and exit 2: the usage text would bury it."""
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr, flush=True)
        sys.exit(int(ExitCode.USAGE))
