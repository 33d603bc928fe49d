"""A GPT-2-style byte-level BPE run end to end where transformers and torch cannot be imported (a `.[tpu]`
worker: prepare → train → the end-of-run sample → `trainer.generate`, each exit 0), and the run's BOS fact: recorded
in the run folder when training starts, read by the exports for a run whose data lives on gs:// (no BOS the data never
had), never guessed for a run without the record whose data can't be read, one for all the data folders."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from bpe_tokenizers import gpt2_style
from gcs_emulator import gcs_emulator
from runs import REPO, train, trainer_env, write_config
from transformers import AutoTokenizer

from trainer import storage
from trainer.checkpoint import read_run_config
from trainer.config import ConfigError, from_dict
from trainer.data.bos import BOS_FILE, check_same_bos, data_adds_bos, record_bos, run_adds_bos
from trainer.data.text_prepare import prepare
from trainer.export import command as convert_to_hf

SHORT = {
    "train": {"steps": 2},
    "checkpoint": {"every_steps": 2},
    "eval": {"every_steps": 2, "batches": 1},
    "log": {"sample_tokens": 6, "sample_prompt": "def main("},
}
BLOCKER = """import sys
# A `.[tpu]` worker: neither installed (an entry of None makes `import` raise ImportError and find_spec answer None).
sys.modules["transformers"] = None
sys.modules["torch"] = None
"""


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return gpt2_style(str(tmp_path_factory.mktemp("gpt2") / "tok"))


def test_a_byte_level_run_trains_samples_and_generates_without_transformers(tokenizer_folder, tmp_path):
    blocker = tmp_path / "no_transformers"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = trainer_env(PYTHONPATH=os.pathsep.join([str(blocker), REPO]))
    probe = subprocess.run([sys.executable, "-c", "import transformers"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr

    data = str(tmp_path / "data")
    prepared = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.data.prepare",
            "--corpus",
            "stdlib",
            "--max-files",
            "40",
            "--tokenizer",
            tokenizer_folder,
            "--out",
            data,
            "--val-fraction",
            "0.1",
            "--workers",
            "1",
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    manifest = json.loads(pathlib.Path(data, "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 512 and manifest["bos"] is False

    run_dir = str(tmp_path / "run")
    out = train(write_config(str(tmp_path / "c.yaml"), data, run_dir, **SHORT), PYTHONPATH=env["PYTHONPATH"])
    assert "sample (greedy):\ndef main(" in out
    assert json.loads(pathlib.Path(run_dir, BOS_FILE).read_text())["bos"] is False

    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.generate",
            "--checkpoint",
            run_dir,
            "--prompt",
            "In 2024 it's 😀",
            "--max-new-tokens",
            "6",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.startswith("In 2024 it's 😀")


def test_a_run_on_gcs_data_exports_no_bos_its_data_never_had(tokenizer_folder, tmp_path):
    with open(os.path.join(tokenizer_folder, "tokenizer_config.json")) as f:
        config = json.load(f)
    folder = tmp_path / "tok"  # a tokenizer that would add BOS by itself, were it asked
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(pathlib.Path(tokenizer_folder, "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    with gcs_emulator() as gcs:
        data = gcs.url("data/gpt2")
        prepare(
            corpus="stdlib",
            out=data,
            tokenizer=str(folder),
            max_files=30,
            val_fraction=0.1,
            workers=1,
            progress=False,
            verbose=False,
        )  # documents without BOS (no --bos)
        train(write_config(str(tmp_path / "c.yaml"), data, run_dir, **SHORT))
        assert convert_to_hf.main(["--checkpoint", run_dir, "--out", out]) == 0
        hf = AutoTokenizer.from_pretrained(out, local_files_only=True)
        assert hf.encode("def f(x):") == hf.encode("def f(x):", add_special_tokens=False)  # no <|endoftext|> first
        assert json.loads(pathlib.Path(out, "tokenizer_config.json").read_text())["add_bos_token"] is False

        # The fact comes from the run folder, not from the data (nor from the tokenizer, which would add BOS).
        storage.remove(storage.join(data, "manifest.json"))
        config = read_run_config(run_dir)
        assert run_adds_bos(run_dir, config) is False
        os.remove(os.path.join(run_dir, BOS_FILE))  # a run older than the record, its data unreadable: no guess
        with pytest.raises(ConfigError, match=f"does not record whether its documents began with BOS.*{BOS_FILE}"):
            run_adds_bos(run_dir, config)


def test_data_folders_that_disagree_on_bos_are_refused_in_one_line(tokenizer_folder, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
    paths = {}
    for bos in (True, False):
        paths[bos] = str(tmp_path / f"bos_{bos}")
        prepare(
            inputs=[str(tmp_path / "in")],
            out=paths[bos],
            tokenizer=tokenizer_folder,
            bos=bos,
            workers=1,
            val_fraction=0.0,
            progress=False,
            verbose=False,
        )
    assert data_adds_bos(from_dict({"data": {"path": paths[True]}})) is True
    mixed = from_dict({"data": {"mixture": [{"path": paths[True], "weight": 1}, {"path": paths[False], "weight": 1}]}})
    with pytest.raises(ConfigError, match="data folders disagree on BOS"):
        data_adds_bos(mixed)
    record_bos(str(tmp_path / "run"), False, source="data manifest")
    with pytest.raises(ConfigError, match="trained on documents without BOS, the data now has them starting with"):
        check_same_bos(str(tmp_path / "run"), True)
