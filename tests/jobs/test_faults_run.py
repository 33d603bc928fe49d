"""Faults met when a job starts or resumes.

A checkpoint damaged after it was committed (files truncated by a disk or a bad copy) costs that checkpoint, not the
run: training resumes from the previous one bitwise as if the damaged one had never been written, which is kept
aside in RUN/damaged_checkpoints/; the exporter names the damaged step and the RUN:STEP to use instead. A resume the
job refuses, or a data folder without its tokenizer, is refused before anything is written to the run folder.

The jobs run in this process (`trainer.main.main(argv)`): the same code path as the CLI without a second start-up.
"""

import os
import shutil

import pytest
from runs import assert_params_equal, final_params, losses, prepare_corpus, write_config

from trainer import main as trainer_main
from trainer.export import command as convert_to_hf


def truncate_files(folder: str) -> None:
    """What a failed copy leaves: every file of the folder cut to half its size."""
    for root, _, names in os.walk(folder):
        for name in names:
            truncate_file(os.path.join(root, name))


def truncate_file(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def snapshot(folder: str) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            stat = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), folder)] = (stat.st_size, stat.st_mtime_ns)
    return out


def stderr_lines(capfd) -> list[str]:
    """What the job printed on stderr, library log records (absl) aside."""
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.strip().splitlines() if line and not line.startswith(("WARNING:absl", "ERROR:absl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-step run (checkpoints at 2, 4, 6, 8): its config, folder, losses, final params, data."""
    base = tmp_path_factory.mktemp("faults-ckpt")
    corpus = prepare_corpus(str(base / "corpus"))
    run_dir = str(base / "reference")
    config = write_config(str(base / "c.yml"), corpus, run_dir, log={"sample_tokens": 0})
    assert trainer_main.main([config]) == 0
    return config, run_dir, losses(run_dir), final_params(run_dir), corpus


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one_bitwise(reference, tmp_path, capfd):
    config, ref_dir, ref_losses, ref_params, _ = reference
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    damaged = os.path.join(run_dir, "checkpoints", "8")
    truncate_files(damaged)
    capfd.readouterr()

    # the exporter names the damaged step and the one to use instead
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", str(tmp_path / "hf"), "--no-verify"]) == 2
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: checkpoint step 8 of {run_dir} is damaged") and f"{run_dir}:6" in line
    assert not os.path.exists(tmp_path / "hf")

    # the job resumes from step 6, re-trains 7 and 8, and ends where the uninterrupted run ended
    sizes = {name: os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(damaged) for name in names}
    assert trainer_main.main([config, f"run.dir={run_dir}"]) == 0
    out = capfd.readouterr()
    assert "resuming from " + os.path.join(run_dir, "checkpoints", "6") in out.out
    (warning,) = [line for line in out.err.strip().splitlines() if not line.startswith(("WARNING:absl", "ERROR:absl"))]
    aside = os.path.join(run_dir, "damaged_checkpoints", "8")
    assert warning.startswith(f"warning: checkpoint {damaged} is damaged (") and f"moved it to {aside}" in warning
    assert losses(run_dir) == ref_losses
    assert_params_equal(final_params(run_dir), ref_params)
    # kept aside, unchanged, out of the checkpoint manager's view
    assert {
        name: os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(aside) for name in names
    } == sizes
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "4", "6", "8"]


def test_when_no_checkpoint_restores_nothing_is_moved(reference, tmp_path, capfd):
    config, ref_dir, _, _, corpus = reference
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    for step in ("2", "4", "6", "8"):
        truncate_files(os.path.join(run_dir, "checkpoints", step))
    before = sorted(os.listdir(run_dir))
    capfd.readouterr()
    assert trainer_main.main([config, f"run.dir={run_dir}"]) == 2
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: no checkpoint of {os.path.join(run_dir, 'checkpoints')} can be restored")
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "4", "6", "8"]
    assert sorted(os.listdir(run_dir)) == before


def test_a_refused_resume_writes_nothing_into_the_old_run_folder(reference, tmp_path, capfd):
    config, ref_dir, _, _, corpus = reference
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    before = snapshot(run_dir)
    capfd.readouterr()
    assert trainer_main.main([config, f"run.dir={run_dir}", "model.num_layers=3"]) == 2
    (line,) = stderr_lines(capfd)
    assert "holds a run of a different model" in line
    assert snapshot(run_dir) == before  # no new TensorBoard events file, config.yaml unchanged


@pytest.mark.parametrize("damage", ["tokenizer", "shard"])
def test_a_damaged_data_folder_is_refused_before_anything_is_written(reference, tmp_path, capfd, damage):
    """No tokenizer (sampling and exports need it), or a truncated train shard: refused at start, not after training."""
    config, ref_dir, _, _, corpus = reference
    data = str(tmp_path / "data")
    shutil.copytree(corpus, data)
    if damage == "tokenizer":
        bad = os.path.join(data, "tokenizer.model")
        os.remove(bad)
    else:
        bad = os.path.join(data, "train-00001.array_record")
        truncate_file(bad)
    run_dir = str(tmp_path / "run")
    capfd.readouterr()
    assert trainer_main.main([config, f"run.dir={run_dir}", f"data.path={data}"]) == 2
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: {bad} is missing" if damage == "tokenizer" else f"error: shard {bad} is damaged")
    assert not os.path.exists(run_dir)
