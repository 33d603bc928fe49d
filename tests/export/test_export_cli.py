"""`python -m trainer.convert_to_hf` end to end on a checkpoint written with `save_params`, and every bad input's
one-line message and exit code (2; no traceback)."""

import dataclasses
import os
import subprocess
import sys

import pytest
from hf_models import SMALL_MODEL as MODEL
from hf_models import random_params
from sp_tokenizers import TEMPLATE, sentencepiece
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer import checkpoint
from trainer.config import Config
from trainer.data.bos import record_bos
from trainer.export import command as convert_to_hf
from trainer.export import hf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it: config.yaml, a checkpoint at step 5, tokenizer/ with a chat template."""
    run = str(tmp_path_factory.mktemp("run"))
    config = Config(model=MODEL)
    checkpoint.save_params(run, config, random_params(MODEL), step=5)
    record_bos(run, False, source="data without --bos")  # as training records it
    sentencepiece().save(os.path.join(run, "tokenizer"))
    with open(os.path.join(run, "tokenizer", "chat_template.jinja"), "w") as f:
        f.write(TEMPLATE)
    return run


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    return subprocess.run(
        [sys.executable, "-m", "trainer.convert_to_hf", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_cli_exports_a_folder_transformers_loads_and_checks_parity(run_dir, tmp_path):
    out = str(tmp_path / "hf")
    result = run_cli("--checkpoint", f"{run_dir}:5", "--out", out, "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "parity ok" in result.stdout and "step 5" in result.stdout
    print(result.stdout)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert str(model.dtype) == "torch.bfloat16" and model.config.num_key_value_heads == 2
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.encode("def f():", add_special_tokens=False) == sentencepiece().encode("def f():")
    assert tok.chat_template == TEMPLATE
    assert sorted(os.listdir(out)) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]


def test_cli_writes_gguf(run_dir, tmp_path, capsys):
    pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate (the hf extra)")
    out = str(tmp_path / "gguf")
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", out, "--format", "gguf", "--gguf-type", "q8_0"]) == 0
    assert "parity ok" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["Modelfile", "README.md", "model-q8_0.gguf"]


def test_force_overwrites_and_verify_can_be_skipped(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "model-00001-of-00009.safetensors").write_text("stale")
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", str(out), "--force", "--no-verify"]) == 0
    assert "parity" not in capsys.readouterr().out
    assert not (out / "model-00001-of-00009.safetensors").exists()


def test_a_converter_bug_fails_parity_with_exit_1(run_dir, tmp_path, capsys, monkeypatch):
    """A config.json with the wrong RoPE θ loads fine and holds the right weights: only the logits can tell."""
    real = hf.write_metadata

    def wrong_theta(out, model, tokenizer, dtype):
        real(out, dataclasses.replace(model, rope_theta=model.rope_theta * 2), tokenizer, dtype)

    monkeypatch.setattr(hf, "write_metadata", wrong_theta)
    assert convert_to_hf.main(["--checkpoint", run_dir, "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: parity failed: the exported model's logits differ") and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """A run whose config.yaml says embed 32 while its params have embed 64, and a run without a tokenizer."""
    mismatched, untokenized = str(tmp_path_factory.mktemp("bad")), str(tmp_path_factory.mktemp("bare"))
    checkpoint.save_params(mismatched, Config(model=dataclasses.replace(MODEL, embed_dim=32)), random_params(MODEL))
    checkpoint.save_params(untokenized, Config(model=MODEL), random_params(MODEL))
    return {"mismatch": mismatched, "no_tokenizer": untokenized}


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_checkpoint", "not a run folder"),
        ("missing_step", "step 7 is not among the checkpoints"),
        ("mismatch", "does not match its params"),
        ("existing_out", "already exists and is not empty: pass --force"),
        ("no_tokenizer", "no tokenizer in"),
        ("bad_tokenizer", "tokenizer not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, message, run_dir, bad_runs, tmp_path, capsys):
    out = tmp_path / "out"
    checkpoint_arg = {"no_checkpoint": str(tmp_path / "nothing"), "missing_step": f"{run_dir}:7", **bad_runs}.get(
        case, run_dir
    )
    extra = []
    if case == "existing_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "bad_tokenizer":
        extra = ["--tokenizer", str(tmp_path / "missing.model")]
    assert convert_to_hf.main(["--checkpoint", checkpoint_arg, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_bad_input_in_a_real_process_has_no_traceback(run_dir, tmp_path):
    result = run_cli("--checkpoint", f"{run_dir}:7", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: step 7 is not among the checkpoints")
