"""The README's "How a token travels" is true: every module it names exists, and a tiny prepare → train → export
imports each module the diagram puts on that path (read from `python -X importtime`, in the real processes)."""

import os
import pathlib
import re
import subprocess
import sys

from runs import REPO, trainer_env, write_config

README = os.path.join(REPO, "README.md")
# Named by the diagram but off the path a plain-text training run and its HF export take: the other branches.
OTHER_BRANCHES = {
    "trainer.data.chat_prepare",  # conversations instead of text
    "trainer.export.import_hf",  # the way back, HF → a run folder
    "trainer.infer",  # generation and evaluation read a run folder too
    "trainer.eval",
    "launch.local",  # launchers start the same command on many processes
    "launch.tpu_vm",
}


def diagram_modules() -> list[str]:
    """Every module of the diagram as a dotted name, in order; a bare file name is in the folder named last."""
    text = pathlib.Path(README).read_text()
    block = text.split("## How a token travels", 1)[1].split("```", 2)[1]
    names, folder = [], "trainer"
    for token in re.findall(r"(?:trainer|launch)/[\w/]*\w(?:\.py)?/?|\b\w+\.py\b", block):
        if "/" in token:
            path = token.rstrip("/")
            folder = os.path.dirname(path) if path.endswith(".py") else path
        else:
            path = f"{folder}/{token}"
        assert os.path.exists(os.path.join(REPO, path)), f"the README's diagram names {path}, which does not exist"
        names.append(path.removesuffix(".py").replace("/", "."))
    return list(dict.fromkeys(names))


def imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """The modules a command imports (its `-X importtime` report); the command must succeed."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def test_the_modules_of_how_a_token_travels_exist_and_a_tiny_job_imports_them(tmp_path):
    named = diagram_modules()
    assert len(named) >= 15, named
    env = trainer_env()
    data, run, out = str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "hf")
    prepare = [
        "-m",
        "trainer.data.prepare",
        "--corpus",
        "stdlib",
        "--max-files",
        "20",
        "--vocab-size",
        "512",
        "--val-fraction",
        "0.1",
    ]
    seen = imported([*prepare, "--out", data, "--workers", "1"], env)
    config = write_config(str(tmp_path / "c.yml"), data, run, train={"steps": 2}, eval={"every_steps": 2})
    seen |= imported(["-m", "trainer.main", config], env)
    seen |= imported(["-m", "trainer.convert_to_hf", "--checkpoint", run, "--out", out], env)
    seen |= {"trainer.data.prepare", "trainer.main", "trainer.convert_to_hf"}  # run as __main__, not imported
    missing = [
        name
        for name in named
        if name not in seen
        and not any(name == other or name.startswith(other + ".") for other in OTHER_BRANCHES)
        and not any(module.startswith(name + ".") for module in seen)  # a package: one of its modules
    ]
    assert not missing, f"the README says a token passes through {missing}, but prepare → train → export never imports"
