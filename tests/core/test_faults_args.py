"""Arguments that can't be right end in one line and exit code 2 before any work: a device count below one, a
program the supervisor can't start, an output folder that can't be written, random bytes given as a text corpus."""

import os
import re
import subprocess
import sys

from runs import REPO, trainer_env

from trainer import main as trainer_main
from trainer.data import prepare as prepare_cli


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_dry_run_device_count_below_one(capsys):
    for devices in ("0", "-4"):
        assert trainer_main.main(["configs/tiny.yml", "--dry-run", "--devices", devices]) == 2
        assert f"--devices {devices}: plan for at least 1 device" in one_error_line(capsys)


def test_supervisor_with_a_program_that_does_not_exist():
    result = subprocess.run(
        [sys.executable, "-m", "trainer.supervise", "--", "no-such-program-4821", "x"],
        cwd=REPO,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: can't start 'no-such-program-4821': No such file or directory; check the command after --"
    )


def test_prepare_into_an_unwritable_folder_fails_before_training_a_tokenizer(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: use a mount nobody may write
        out = "/sys/trainer-test-out/data"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = str(locked / "data")
    assert prepare_cli.main(["--corpus", "stdlib", "--out", out, "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --out {out} can't be written (") and "choose another folder" in line
    assert not os.path.exists(out)


def test_random_bytes_are_refused_as_a_text_corpus(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "in" / name).write_bytes(os.urandom(100_000))
    (tmp_path / "in" / "readme.txt").write_text("a little real text " * 50)
    out = tmp_path / "out"
    assert prepare_cli.main(["--input", str(tmp_path / "in"), "--out", str(out), "--no-progress"]) == 2
    line = one_error_line(capsys)
    share = int(re.search(r"not UTF-8 text: (\d+)% of a", line).group(1))
    assert 30 <= share <= 50 and "U+FFFD" in line and "refused above 20%" in line
    assert not out.exists()
