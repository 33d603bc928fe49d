"""Every command answers a wrong argument in one line and exit code 2: the flag, the value given, what is allowed (for
flags with choices) and a pointer to --help, never argparse's usage text. The parsers run in this process."""

from __future__ import annotations

import importlib

import pytest

# command module, arguments with one bad value, (flag, value given or None, a value allowed or None)
CASES = [
    ("trainer.main", ["configs/tiny.yml", "--devices", "eight"], ("--devices", "eight", None)),
    ("trainer.data.prepare", ["--dtype", "uint8"], ("--dtype", "uint8", "uint16")),
    ("trainer.export.command", ["--checkpoint", "r", "--dtype", "float8"], ("--dtype", "float8", "bfloat16")),
    ("trainer.export.import_hf", ["--hf", "h"], ("--out", None, None)),
    ("trainer.run.supervise", ["--max-restarts", "many", "--", "x"], ("--max-restarts", "many", None)),
    ("trainer.infer.cli", ["--checkpoint", "r", "--output", "xml"], ("--output", "xml", "json")),
    ("trainer.plan", ["--mfu", "half"], ("--mfu", "half", None)),
    ("trainer.eval.__main__", ["--checkpoint", "r", "--limit", "all"], ("--limit", "all", None)),
    ("launch.tpu_vm", ["--zone", "z", "--ship", "zip"], ("--ship", "zip", "wheel")),
    ("launch.local", ["--processes", "2", "--platform", "tpu", "--", "x"], ("--platform", "tpu", "gpu")),
]
# the arguments before an unknown flag that each command needs to get that far
REQUIRED = {
    "trainer.main": ["configs/tiny.yml"],
    "trainer.data.prepare": ["--corpus", "stdlib", "--out", "o"],
    "trainer.export.command": ["--checkpoint", "r", "--out", "o"],
    "trainer.export.import_hf": ["--hf", "h", "--out", "o"],
    "trainer.run.supervise": [],
    "trainer.infer.cli": ["--checkpoint", "r", "--prompt", "hi"],
    "trainer.plan": [],
    "trainer.eval.__main__": ["--checkpoint", "r"],
    "launch.tpu_vm": ["--zone", "z"],
    "launch.local": ["--processes", "2"],
}


def one_line_exit_2(module: str, argv: list[str], capsys) -> str:
    """Run `module.main(argv)`; assert it exits 2 with exactly one line on stderr, and return that line."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    assert lines[0].startswith("error: ") and lines[0].endswith("--help"), lines[0]
    return lines[0]


@pytest.mark.parametrize("module, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_costs_one_line(module, argv, expected, capsys):
    line = one_line_exit_2(module, argv, capsys)
    flag, given, allowed = expected
    assert flag in line
    if given is not None:
        assert f"'{given}'" in line
    if allowed is not None:
        assert f"'{allowed}'" in line  # the values allowed are listed


@pytest.mark.parametrize("module", list(REQUIRED))
def test_an_unknown_flag_costs_one_line(module, capsys):
    line = one_line_exit_2(module, [*REQUIRED[module], "--no-such-flag"], capsys)
    assert "--no-such-flag" in line
