"""Chat preparation on the work-unit engine: bounded memory, kill and resume, late bad records, byte ranges."""

import glob
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from bpe_tokenizers import gpt2_style

from trainer.data import DataError
from trainer.data.chat_prepare import prepare_chat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Runs a command and prints the peak RSS (KiB) of the largest process it started (itself or a worker).
PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style(str(tmp_path_factory.mktemp("tok") / "gpt2"))


def _conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {i} + {i % 7}?"},
            {"role": "assistant", "content": f"It is {i + i % 7}."},
        ]
    }


def _write_set(folder, count: int, files: int) -> None:
    folder.mkdir()
    per = count // files
    for f in range(files):
        rows = (json.dumps(_conversation(i)) + "\n" for i in range(f * per, (f + 1) * per))
        (folder / f"part{f}.jsonl.gz").write_bytes(gzip.compress("".join(rows).encode()))


def _command(tokenizer: str, inputs: str, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer.data.prepare",
        "--format",
        "chat",
        "--input",
        inputs,
        "--tokenizer",
        tokenizer,
        "--chat-template",
        "smallcoder",
        "--out",
        out,
        "--workers",
        "2",
        "--unit-bytes",
        "1",
        "--no-progress",
    ]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO)


def _peak_rss(command: list[str], cwd) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


def test_memory_bounded_and_killed_run_resumes_identically(tmp_path, tokenizer):
    _write_set(tmp_path / "c10k", 10_000, 2)
    _write_set(tmp_path / "c40k", 40_000, 8)
    for name in ("small", "full", "killed"):
        (tmp_path / name).mkdir()
    small = _peak_rss(_command(tokenizer, "../c10k", "data"), tmp_path / "small")
    full = _peak_rss(_command(tokenizer, "../c40k", "data"), tmp_path / "full")
    assert abs(full - small) <= 0.25 * small, (small, full)

    # killed after three of its eight units (the whole process group: no worker outlives it), then run again
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(tokenizer, "../c40k", "data"),
        cwd=killed,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while len(glob.glob(str(killed / "data" / "part-*.json"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "finished before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "data" / "manifest.json").exists()
    again = subprocess.run(
        _command(tokenizer, "../c40k", "data"), cwd=killed, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    resumed = int(again.stdout.split("resuming: ")[1].split(" of 8")[0])
    assert 3 <= resumed < 8
    manifest = (tmp_path / "full" / "data" / "manifest.json").read_bytes()
    assert (killed / "data" / "manifest.json").read_bytes() == manifest
    assert json.loads(manifest)["totals"]["all"]["documents"] == 40_000


def test_a_late_bad_record_names_its_line_and_the_fixed_input_resumes(tmp_path, tokenizer, capsys):
    (tmp_path / "in").mkdir()
    rows = [json.dumps(_conversation(i)) for i in range(30)]
    for f in range(3):
        (tmp_path / "in" / f"p{f}.jsonl.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
    broken = rows[:4] + ['{"messages": [{"role": "user", "content": "no reply"}]}'] + rows[5:]
    (tmp_path / "in" / "p2.jsonl.gz").write_bytes(gzip.compress("\n".join(broken).encode()))
    out = str(tmp_path / "out")
    kwargs = dict(tokenizer=tokenizer, template="smallcoder", workers=1, unit_bytes=1)
    with pytest.raises(DataError, match=r"p2.jsonl.gz:5: the assistant mask is all zero"):
        prepare_chat([str(tmp_path / "in")], out, **kwargs)
    assert sorted(n for n in os.listdir(out) if n.startswith("part-")) == ["part-00000.json", "part-00001.json"]
    (tmp_path / "in" / "p2.jsonl.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
    capsys.readouterr()
    manifest = prepare_chat([str(tmp_path / "in")], out, **kwargs)
    assert "resuming: 2 of 3 work units" in capsys.readouterr().out
    assert manifest.totals()["all"]["documents"] == 90


def test_large_chat_file_is_cut_at_lines_and_errors_name_the_line(tmp_path, tokenizer):
    rows = [json.dumps(_conversation(i)) for i in range(600)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(rows) + "\n")
    kwargs = dict(tokenizer=tokenizer, template="smallcoder", workers=1, unit_bytes=8 << 10, verbose=False)
    cut = prepare_chat([str(path)], str(tmp_path / "cut"), **kwargs)
    whole = prepare_chat([str(path)], str(tmp_path / "whole"), **dict(kwargs, unit_bytes=1 << 30))
    assert len([n for n in os.listdir(tmp_path / "cut") if n.startswith("part-")]) > 3
    assert cut.totals() == whole.totals() and cut.totals()["all"]["documents"] == 600
    rows[450] = '{"messages": [{"role": "user", "content": "no reply"}]}'
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"big.jsonl:451: the assistant mask is all zero"):
        prepare_chat([str(path)], str(tmp_path / "bad"), **kwargs)


def test_flat_openassistant_file_stays_one_unit(tmp_path, tokenizer):
    rows = []
    for t in range(200):
        rows.append({"message_id": f"q{t}", "parent_id": None, "role": "prompter", "text": f"question {t}?"})
        rows.append({"message_id": f"a{t}", "parent_id": f"q{t}", "role": "assistant", "text": f"answer {t}."})
    rows.sort(key=lambda r: r["role"])  # replies after all prompts: a tree spans the whole file
    path = tmp_path / "oasst.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = prepare_chat(
        [str(path)],
        str(tmp_path / "out"),
        tokenizer=tokenizer,
        template="smallcoder",
        unit_bytes=4 << 10,
        verbose=False,
    )
    assert manifest.totals()["all"]["documents"] == 200
    assert [n for n in os.listdir(tmp_path / "out") if n.startswith("part-")] == ["part-00000.json"]
