"""A checkpoint damaged after it was committed — data files truncated, a data file removed, one byte of a tensor file
flipped — is caught by its digest before any of it is read: the run resumes from the previous step bitwise as if the
damaged one had never been written, or, when it was the only one, refuses in one line and leaves the run folder as
it was; the exporter refuses it in one line. The jobs run in this process (`trainer.main.main(argv)`).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from gcs_emulator import gcs  # noqa: F401 (a fixture)
from runs import assert_params_equal, final_params, losses, prepare_corpus, write_config

from trainer import checkpoint_digest
from trainer import main as trainer_main
from trainer.export import command as convert_to_hf

DAMAGES = ("truncated", "removed", "flipped")


def data_files(step_dir: str) -> list[str]:
    """The tensor data files of a step (Orbax's OCDBT `d/` folders), largest first."""
    found = [
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        if os.path.basename(root) == "d"
        for name in names
    ]
    assert found, f"no tensor data files under {step_dir}"
    return sorted(found, key=os.path.getsize, reverse=True)


def damage(step_dir: str, how: str) -> None:
    """Damage a committed step as a disk or a bad copy would."""
    files = data_files(step_dir)
    if how == "truncated":
        for path in files:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    elif how == "removed":
        os.remove(files[0])
    else:  # one flipped byte in the middle of the largest tensor file: same size, different content
        with open(files[0], "r+b") as f:
            f.seek(os.path.getsize(files[0]) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))


def folder_bytes(folder: str) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def job_stderr(capfd) -> tuple[str, list[str]]:
    """The job's stdout and its stderr lines (library log records aside); no traceback of any kind on stderr."""
    out = capfd.readouterr()
    assert "Traceback" not in out.err and "Exception ignored" not in out.err, out.err
    lines = [line for line in out.err.strip().splitlines() if line and not line.startswith(("WARNING:", "ERROR:absl"))]
    return out.out, lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-step run checkpointed at 2 and 4, and the same run resumed from an undamaged step 2 (step 4 removed)."""
    base = tmp_path_factory.mktemp("damage")
    corpus = prepare_corpus(str(base / "corpus"))
    run_dir = str(base / "reference")
    config = write_config(
        str(base / "c.yml"), corpus, run_dir, train={"steps": 4}, eval={"every_steps": 4}, log={"sample_tokens": 0}
    )
    assert trainer_main.main([config]) == 0
    resumed = str(base / "resumed")
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    assert trainer_main.main([config, f"run.dir={resumed}"]) == 0
    return config, run_dir, losses(resumed), final_params(resumed)


def test_every_step_records_the_digest_of_its_files(runs):
    _, run_dir, _, _ = runs
    for step in ("2", "4"):
        step_dir = os.path.join(run_dir, "checkpoints", step)
        assert checkpoint_digest.has_digest(step_dir)
        assert checkpoint_digest.damage(step_dir) is None
        assert checkpoint_digest.compute(step_dir) == checkpoint_digest.compute(step_dir)  # stable, not time-based


@pytest.mark.parametrize("how", ["truncated"] * 5 + ["removed", "flipped"])
def test_a_damaged_newest_step_costs_that_step_and_one_line(runs, tmp_path, capfd, how):
    config, ref_dir, resumed_losses, resumed_params = runs
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    damaged = os.path.join(run_dir, "checkpoints", "4")
    damage(damaged, how)
    capfd.readouterr()
    assert trainer_main.main([config, f"run.dir={run_dir}"]) == 0
    out, lines = job_stderr(capfd)
    assert "resuming from " + os.path.join(run_dir, "checkpoints", "2") in out
    aside = os.path.join(run_dir, "damaged_checkpoints", "4")
    (warning,) = lines
    assert warning.startswith(f"warning: checkpoint {damaged} is damaged (") and f"moved it to {aside}" in warning
    assert losses(run_dir) == resumed_losses  # bitwise: the same floats as an undamaged resume from step 2
    assert_params_equal(final_params(run_dir), resumed_params)


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_only_step_is_refused_in_one_line_and_the_folder_is_unchanged(runs, tmp_path, capfd, how):
    config, ref_dir, _, _ = runs
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(os.path.join(run_dir, "checkpoints", "2"))
    damage(os.path.join(run_dir, "checkpoints", "4"), how)
    before = folder_bytes(run_dir)
    capfd.readouterr()
    assert trainer_main.main([config, f"run.dir={run_dir}", "train.steps=6"]) == 2
    _, lines = job_stderr(capfd)
    (line,) = lines
    assert line.startswith(f"error: no checkpoint of {os.path.join(run_dir, 'checkpoints')} can be restored")
    assert folder_bytes(run_dir) == before


def test_the_exporter_refuses_a_flipped_byte_in_one_line(runs, tmp_path, capfd):
    _, ref_dir, _, _ = runs
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    damage(os.path.join(run_dir, "checkpoints", "4"), "flipped")
    capfd.readouterr()
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", str(tmp_path / "hf"), "--no-verify"]) == 2
    _, lines = job_stderr(capfd)
    (line,) = lines
    assert line.startswith(f"error: checkpoint step 4 of {run_dir} is damaged (") and "SHA-256" in line
    assert f"{run_dir}:2" in line
    assert not os.path.exists(tmp_path / "hf")


def test_a_step_from_before_digests_still_restores(runs, tmp_path, capfd):
    config, ref_dir, _, _ = runs
    run_dir = str(tmp_path / "run")
    shutil.copytree(ref_dir, run_dir)
    for step in ("2", "4"):
        os.remove(os.path.join(run_dir, "checkpoints", step, checkpoint_digest.DIGEST_FILE))
    capfd.readouterr()
    assert trainer_main.main([config, f"run.dir={run_dir}"]) == 0
    out, lines = job_stderr(capfd)
    assert "resuming from " + os.path.join(run_dir, "checkpoints", "4") in out and lines == []


class _Stream:
    """The data-iterator part of a checkpoint: a tiny JSON state, as the real pipeline's."""

    def get_state(self) -> dict:
        return {"step": 0, "stage": 0, "streams": {}}

    def set_state(self, state: dict) -> None:
        pass


def test_digests_on_gcs_catch_a_flipped_byte_before_the_restore(gcs):  # noqa: F811 (the fixture)
    """gs://: the digest is written after the commit; a flipped byte makes the step refused before any read, and
    the step before it still restores."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from trainer import storage
    from trainer.checkpoint import Checkpointer, restore_params_from
    from trainer.config import CheckpointConfig, Config
    from trainer.errors import CheckpointError

    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec("d"))
    params = {step: {"w": jax.device_put(np.full((64, 8), step, np.float32), sharding)} for step in (1, 2)}
    run = gcs.url("run")
    ckpt = Checkpointer(run, CheckpointConfig(keep=5, async_save=True))
    for step, tree in params.items():
        ckpt.save(step, {"params": tree}, _Stream(), Config(), force=True)
    ckpt.close()
    step_dir = f"{run}/checkpoints/2"
    assert checkpoint_digest.has_digest(step_dir) and checkpoint_digest.damage(step_dir) is None

    fs, root = storage.filesystem(step_dir)
    sizes = {path: info["size"] for path, info in fs.find(f"{root}/state", detail=True).items() if "/d/" in path}
    largest = max(sizes, key=sizes.get)
    data = bytearray(fs.cat_file(largest))
    data[len(data) // 2] ^= 0x01
    fs.pipe_file(largest, bytes(data))

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params[1])
    with pytest.raises(CheckpointError, match=r"checkpoint step 2 of .* is damaged \(.* differs from its recorded"):
        restore_params_from(f"{run}:2", abstract)
    restored, step = restore_params_from(f"{run}:1", abstract)
    assert step == 1 and np.array_equal(np.asarray(restored["w"]), np.asarray(params[1]["w"]))
