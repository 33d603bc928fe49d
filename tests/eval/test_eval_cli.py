"""Evaluation of a trained run: lm-eval tasks during training (logged like the loss), `python -m trainer.eval` on its
checkpoints (the harness's table, lm-eval's JSON schema, the card table, text-file perplexity), the `trainer` model
name in the harness's registry, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")

from eval_data import write_task_files
from runs import REPO, prepare_corpus, train, trainer_env, write_config

from trainer.eval.__main__ import main

TASKS = ["arc_easy", "lambada_openai"]


def read_json(*parts: str) -> dict:
    with open(os.path.join(*parts)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """8 steps of the micro model with two tasks scored every 4 steps (3 documents each)."""
    root = tmp_path_factory.mktemp("trained")
    data, run, task_dir = (str(root / name) for name in ("data", "run", "tasks"))
    prepare_corpus(data)
    write_task_files(task_dir)
    config = write_config(
        str(root / "c.yml"),
        data,
        run,
        eval={"every_steps": 8, "tasks": TASKS, "tasks_every_steps": 4, "tasks_data_dir": task_dir, "tasks_limit": 3},
        checkpoint={"every_steps": 4},
        log={"every_steps": 4, "sample_tokens": 0},
    )
    output = train(config)
    return {"run": run, "tasks": task_dir, "output": output, "root": root}


def test_training_logs_task_scores_like_the_loss(trained):
    with open(os.path.join(trained["run"], "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    scored = {row["step"]: row for row in rows if "arc_easy/acc" in row}
    assert sorted(scored) == [4, 8]
    for row in scored.values():
        assert 0.0 <= row["arc_easy/acc_norm"] <= 1.0 and row["lambada_openai/perplexity"] > 1.0
    assert "step      8/8 arc_easy/acc" in trained["output"]
    saved = read_json(trained["run"], "eval", "step_8.json")
    assert saved["n-samples"]["arc_easy"]["effective"] == 3 and "acc_norm,none" in saved["results"]["arc_easy"]


def test_cli_prints_the_table_and_writes_lm_eval_json(trained, tmp_path):
    out = tmp_path / "results.json"
    text = tmp_path / "notes.txt"
    text.write_text("The river runs past the old stone house.\nIt never stops. " * 20)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.eval",
            "--checkpoint",
            f"{trained['run']}:4",
            "--tasks",
            "winogrande,boolq",
            "--data-dir",
            trained["tasks"],
            "--text",
            str(text),
            "--limit",
            "4",
            "--output",
            str(out),
            "--markdown",
        ],
        capture_output=True,
        text=True,
        env=trainer_env(),
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    assert "|winogrande" in result.stdout and "word_perplexity" in result.stdout
    assert "| WinoGrande |" in result.stdout and "**Average** of 2 (acc_norm, else acc) | **" in result.stdout
    written = json.loads(out.read_text())
    assert set(written["results"]) == {"winogrande", "boolq", "text_perplexity"}
    assert {"acc,none", "acc_stderr,none"} <= set(written["results"]["boolq"])
    assert written["results"]["text_perplexity"]["byte_perplexity,none"] > 1.0
    assert written["config"]["step"] == 4 and "samples" not in written
    # the run folder's file for step 4 keeps what training scored and adds the new tasks
    merged = read_json(trained["run"], "eval", "step_4.json")
    assert set(TASKS + ["winogrande", "boolq"]) <= set(merged["results"])


def test_the_harness_finds_the_trainer_model_by_name(trained, tmp_path):
    """What `lm_eval --model trainer --model_args checkpoint=RUN` does, offline through our task YAMLs."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import trainer.eval.harness  # noqa: F401  (registers `trainer`)
    from trainer.eval import tasks

    tasks.write_include_path(tmp_path, ["piqa"], trained["tasks"])
    results = lm_eval.simple_evaluate(
        model="trainer",
        model_args=f"checkpoint={trained['run']}",
        tasks=["piqa"],
        batch_size=4,
        limit=2,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    assert results["results"]["piqa"]["acc,none"] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_tasks", "nothing to evaluate"),
        ("no_data_dir", "--tasks read their documents from --data-dir"),
        ("missing_file", "no file for task piqa"),
        ("missing_step", "step 7 is not among the checkpoints"),
        ("not_a_run", "not a run folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, message, trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {
        "no_tasks": ["--checkpoint", trained["run"]],
        "no_data_dir": ["--checkpoint", trained["run"], "--tasks", "piqa"],
        "missing_file": ["--checkpoint", trained["run"], "--tasks", "piqa", "--data-dir", str(empty)],
        "missing_step": ["--checkpoint", f"{trained['run']}:7", "--tasks", "piqa", "--data-dir", trained["tasks"]],
        "not_a_run": ["--checkpoint", str(empty), "--tasks", "piqa", "--data-dir", trained["tasks"]],
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
