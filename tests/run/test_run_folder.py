"""The run API (trainer.run_folder): a LoRA run opened merged and unmerged gives the same logits, on the devices here
and on the host; a run whose mesh is larger than the devices present falls back to fsdp over all of them with one
note; the step is fixed when the run is opened; a missing tokenizer/ folder and a missing step are one line."""

import dataclasses
import os

import jax
import numpy as np
import pytest
from bpe_tokenizers import gpt2_style
from hf_models import SMALL_MODEL as MODEL
from hf_models import random_params

from trainer import checkpoint, sharding
from trainer.config import Config, LoraConfig, MeshConfig
from trainer.data.bos import record_bos
from trainer.errors import CheckpointError
from trainer.infer.cli import main as generate
from trainer.model import lora
from trainer.model.transformer import Transformer
from trainer.run_folder import load_run, open_run

ADAPTED = dataclasses.replace(MODEL, lora=LoraConfig(rank=4, alpha=8.0, targets=["query", "value", "down"]))
TOKENS = np.random.default_rng(3).integers(0, MODEL.vocab_size, (2, 16)).astype(np.int32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base run (steps 2 and 5, a GPT-2-style tokenizer, BOS recorded) and a LoRA run on its step 5 whose
    adapters are random (a fresh adapter's B is zero and would change nothing)."""
    root = tmp_path_factory.mktemp("runs")
    base, tuned = str(root / "base"), str(root / "lora")
    full = random_params(ADAPTED, seed=1)
    base_params, adapters = lora.split(full)
    checkpoint.save_params(base, Config(model=MODEL), random_params(MODEL, seed=9), step=2)
    checkpoint.save_params(base, Config(model=MODEL), base_params, step=5)
    config = Config(model=ADAPTED, mesh=MeshConfig(data=2, fsdp=4))
    config = dataclasses.replace(config, checkpoint=dataclasses.replace(config.checkpoint, restore_from=f"{base}:5"))
    checkpoint.save_params(tuned, config, adapters, step=3)
    for run in (base, tuned):
        gpt2_style(os.path.join(run, "tokenizer"))
        record_bos(run, False, source="the test")
    return {"base": base, "lora": tuned, "full": full}


def logits(loaded) -> np.ndarray:
    with sharding.activate(loaded.mesh, loaded.config):
        out = jax.jit(lambda p: Transformer(loaded.config.model).apply({"params": p}, TOKENS))(loaded.params)
    return np.asarray(out)


def test_a_lora_run_opened_merged_and_unmerged_gives_the_same_logits(runs):
    unmerged, merged = load_run(runs["lora"]), load_run(runs["lora"], merged=True)
    assert unmerged.config.model.lora.rank == 4 and merged.config.model.lora.rank == 0
    assert "lora_a" in str(jax.tree_util.tree_structure(unmerged.params))
    assert "lora_a" not in str(jax.tree_util.tree_structure(merged.params))
    np.testing.assert_allclose(logits(merged), logits(unmerged), atol=1e-4, rtol=1e-4)
    # ... the model training applied (the same base + adapters), and not the base alone
    expected = np.asarray(Transformer(ADAPTED).apply({"params": runs["full"]}, TOKENS))
    np.testing.assert_allclose(logits(unmerged), expected, atol=1e-4, rtol=1e-4)
    assert not np.allclose(logits(load_run(f"{runs['base']}:5")), expected, atol=1e-3)
    # on the host (exporters): the same trees
    config, host = open_run(runs["lora"]).host_params(merged=False)
    np.testing.assert_array_equal(host["embed"]["embedding"], runs["full"]["embed"]["embedding"])
    plain_config, plain = open_run(runs["lora"]).host_params()
    assert plain_config.model.lora.rank == 0
    np.testing.assert_allclose(
        np.asarray(Transformer(plain_config.model).apply({"params": plain}, TOKENS)), expected, atol=1e-4, rtol=1e-4
    )


def test_the_step_is_fixed_when_a_run_is_opened_and_its_facts_come_with_it(runs):
    run = open_run(runs["base"])
    assert (run.step, run.reference) == (5, f"{runs['base']}:5") and not run.lora and run.base() is None
    assert open_run(f"{runs['base']}:2").step == 2
    tuned = open_run(runs["lora"])
    assert tuned.lora and tuned.base() == f"{runs['base']}:5" and tuned.adds_bos() is False
    assert tuned.tokenizer().vocab_size == 512
    with pytest.raises(CheckpointError, match="step 4 is not among the checkpoints"):
        open_run(f"{runs['base']}:4")


def test_a_mesh_larger_than_the_devices_falls_back_to_fsdp_with_one_note(runs, tmp_path, capsys):
    big = str(tmp_path / "big")
    checkpoint.save_params(
        big, Config(model=MODEL, mesh=MeshConfig(data=4, fsdp=4, dcn_data=2)), random_params(MODEL, seed=2)
    )
    gpt2_style(os.path.join(big, "tokenizer"))
    loaded = load_run(big)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "does not fit the 8 devices here; using fsdp over all of them" in err
    assert dict(loaded.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert (loaded.config.mesh.dcn_data, loaded.config.mesh.fsdp) == (1, -1)
    assert loaded.config.mesh.rules == MeshConfig().rules  # the run's axis rules are kept
    fits = load_run(runs["lora"])  # data=2 × fsdp=4: the run's own mesh, silently
    assert dict(fits.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1} and "note:" not in capsys.readouterr().err


def test_a_missing_tokenizer_folder_is_one_line(tmp_path, capsys):
    bare = str(tmp_path / "bare")
    checkpoint.save_params(bare, Config(model=MODEL), random_params(MODEL))
    with pytest.raises(CheckpointError, match=f"no tokenizer in {bare}/tokenizer: a run folder keeps"):
        load_run(bare)
    assert generate(["--checkpoint", bare, "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no tokenizer in") and err.count("\n") == 1, err
