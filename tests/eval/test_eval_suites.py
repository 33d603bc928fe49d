"""Task specs and presets as the command line reads them, the task files each needs, and one-line errors before
any checkpoint is loaded."""

import os

import pytest

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")

from eval_data import write_fewshot_files

from trainer.errors import ConfigError
from trainer.eval import tasks
from trainer.eval.__main__ import main, parse_args, task_list
from trainer.eval.suites import SUITES, TaskSpec, parse_specs


def test_specs_shots_and_presets(tmp_path):
    assert parse_specs("arc_challenge:25, hellaswag:10,mmlu") == [
        TaskSpec("arc_challenge", 25),
        TaskSpec("hellaswag", 10),
        TaskSpec("mmlu"),
    ]
    args = parse_args(["--checkpoint", "r", "--tasks", "arc_easy,gsm8k:5", "--num-fewshot", "3", "--data-dir", "d"])
    assert [str(s) for s in task_list(args)] == ["arc_easy", "gsm8k:5"]  # --num-fewshot: per task, below
    humaneval, mbpp, arc = (tasks.builtin_config(t) for t in ("humaneval", "mbpp", "arc_easy"))
    assert [tasks.default_shots(c, 5) for c in (humaneval, mbpp, arc)] == [0, 5, 5]  # the harness's rule
    assert [tasks.default_shots(c, None) for c in (humaneval, mbpp, arc)] == [0, 3, 0]
    write_fewshot_files(str(tmp_path))
    shots = [
        tasks.task_yaml(TaskSpec(t, n), str(tmp_path), 4).get("num_fewshot")
        for t, n in [("arc_easy", None), ("arc_easy", 1), ("humaneval", None), ("mbpp", None)]
    ]
    assert shots == [4, 1, 0, 4]
    board = task_list(parse_args(["--checkpoint", "r", "--suite", "leaderboard-v1"]))
    assert [(s.name, s.shots, s.metric) for s in board][:3] == [
        ("arc_challenge", 25, "acc_norm"),
        ("hellaswag", 10, "acc_norm"),
        ("mmlu", 5, "acc"),
    ]
    assert [str(s) for s in SUITES["smallcoder"]][:3] == ["humaneval:0", "mbpp:3", "gsm8k:0"]
    for bad in ("arc_easy:x", "arc_easy,arc_easy:5", ":3"):
        with pytest.raises(ConfigError):
            parse_specs(bad)


def test_every_preset_task_has_a_builtin_yaml():
    """The presets name tasks this harness has (groups read from folders aside), so `--suite` never fails on a name."""
    for specs in SUITES.values():
        for spec in specs:
            if spec.name != "mmlu":
                assert tasks.builtin_yaml(spec.name).is_file(), spec.name


def test_split_files_and_groups_in_one_file(tmp_path):
    write_fewshot_files(str(tmp_path))
    assert [str(s) for s in tasks.check_tasks(["arc_easy:5", "gsm8k:5", "mmlu:5", "mbpp:3"], str(tmp_path))]
    os.remove(tmp_path / "gsm8k.train.jsonl")
    tasks.check_tasks(["gsm8k:0"], str(tmp_path))  # zero-shot needs no training split
    with pytest.raises(ConfigError, match=r"gsm8k\.train\.jsonl"):
        tasks.check_tasks(["gsm8k:5"], str(tmp_path))
    with pytest.raises(ConfigError, match=r"gsm8k\.train\.jsonl"):
        tasks.check_tasks(["gsm8k"], str(tmp_path), num_fewshot=2)
    # MMLU as one file per split with a `subject` column
    one = tmp_path / "one"
    one.mkdir()
    rows = [(tmp_path / "mmlu" / f).read_text() for f in sorted(os.listdir(tmp_path / "mmlu")) if ".test." in f]
    (one / "mmlu.test.jsonl").write_text("".join(rows))
    tasks.check_tasks(["mmlu:0"], str(one))
    with pytest.raises(ConfigError, match="mmlu"):
        tasks.check_tasks(["mmlu:0"], str(tmp_path / "one" / "missing"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "humaneval"], "pass --allow-code-execution"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--tasks", "gsm8k:5", "--fewshot-as-multiturn"], "--fewshot-as-multiturn needs --apply-chat-template"),
        (["--tasks", "arc_easy:2,arc_easy"], "appears twice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra, message, tmp_path, capsys):
    write_fewshot_files(str(tmp_path))
    assert main(["--checkpoint", str(tmp_path / "no-run"), "--data-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
