"""Files damaged after they were written: a prepared folder (manifest, shards), Parquet input, a Hugging Face folder.

Each ends in one line naming the bad file and what to do, a non-zero exit, no traceback; `prepare --verify` finds
damaged shards and re-running the same prepare command repairs them.
"""

import json
import os
import shutil

import pytest

from trainer.config import DataConfig
from trainer.data import DataError
from trainer.data import prepare as prepare_cli
from trainer.data.pipeline import make_train_iterator
from trainer.data.shards import read_manifest
from trainer.data.text_prepare import prepare

QUIET = dict(workers=1, progress=False, verbose=False)


def one_error_line(capsys_or_fd) -> str:
    """The single `error: ...` line a command printed on stderr (fails on anything more, or a traceback)."""
    err = capsys_or_fd.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("WARNING:absl", "ERROR:absl"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small prepared folder (3 units, so 3 train shards) and the arguments that made it."""
    root = tmp_path_factory.mktemp("faults-data")
    (root / "in").mkdir()
    for i in range(30):
        (root / "in" / f"{i:02d}.txt").write_text(f"document {i} " + "lorem ipsum dolor sit amet " * (20 + i))
    args = dict(inputs=[str(root / "in")], vocab_size=300, val_fraction=0.0, unit_bytes=2000, **QUIET)
    prepare(out=str(root / "data"), **args)
    return root, args


@pytest.fixture
def data(prepared, tmp_path):
    """A fresh copy of the prepared folder to damage."""
    root, args = prepared
    shutil.copytree(root / "data", tmp_path / "data")
    return str(tmp_path / "data"), args


def _iterate(path: str, batches: int = 40) -> None:
    it = make_train_iterator(
        DataConfig(path=path), seq_len=16, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    try:
        for _ in range(batches):
            next(it)
    finally:
        it.close()


def _shard(path: str, index: int = 1) -> str:
    return os.path.join(path, read_manifest(path).shards_of("train")[index].file)


def test_corrupt_manifest_names_the_file_and_the_repair(data):
    path, _ = data
    with open(os.path.join(path, "manifest.json"), "r+") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"manifest.json is damaged \(not valid JSON.*same --out"):
        _iterate(path)


def test_truncated_or_missing_shard_is_named_at_start(data):
    path, _ = data
    shard = _shard(path)
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError, match=rf"shard {shard} is damaged: it is truncated or corrupt"):
        _iterate(path, batches=0)
    os.remove(shard)
    with pytest.raises(DataError, match=rf"shard {shard} is damaged: the file is missing"):
        _iterate(path, batches=0)


def test_corrupt_record_is_named_when_read(data):
    """Bytes flipped inside a record: the footer is intact, so it only shows when that record is read."""
    path, _ = data
    shard = _shard(path)
    with open(shard, "r+b") as f:
        f.seek(200)
        chunk = f.read(20)
        f.seek(200)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.raises(DataError, match=rf"shard {shard} is damaged: record \d+ can't be read \(Corrupted Riegeli"):
        _iterate(path, batches=400)


def test_verify_lists_damaged_shards_and_the_same_prepare_command_repairs_them(data, capsys):
    path, args = data
    assert prepare_cli.main(["--verify", path, "--no-progress"]) == 0
    assert "record counts and sha256 match manifest.json" in capsys.readouterr().out
    flipped, gone = _shard(path, 0), _shard(path, 2)
    with open(flipped, "r+b") as f:
        f.seek(300)
        f.write(b"\x00" * 8)
    os.remove(gone)
    assert prepare_cli.main(["--verify", path, "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert f"damaged: {os.path.basename(flipped)}: its sha256 is" in out
    assert f"damaged: {os.path.basename(gone)}: the file is missing" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 of ") and "same --out" in lines[0]
    prepare(out=path, **args)  # the same command again: verified parts are kept, damaged ones rewritten
    assert prepare_cli.main(["--verify", path, "--no-progress"]) == 0
    _iterate(path, batches=2)


def test_prepare_repairs_a_folder_whose_manifest_is_damaged(data):
    path, args = data
    before = read_manifest(path).shards
    with open(os.path.join(path, "manifest.json"), "w") as f:
        f.write('{"format_version": 1, "tok')
    prepare(out=path, **args)
    assert read_manifest(path).shards == before


def test_garbage_parquet_names_the_file(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    (tmp_path / "bad.parquet").write_bytes(os.urandom(3000))
    out = tmp_path / "out"
    assert prepare_cli.main(["--input", str(tmp_path / "bad.parquet"), "--out", str(out), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'bad.parquet'} is not a readable Parquet file" in line


# ---------------------------------------------------------------------------------------------- convert_from_hf


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small Hugging Face LLaMA folder written by our exporter (config.json + model.safetensors)."""
    from hf_models import random_params

    from trainer.config import ModelConfig
    from trainer.export import hf

    model = ModelConfig(
        vocab_size=300,
        embed_dim=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        mlp_dim=64,
        max_seq_len=32,
        compute_dtype="float32",
        remat_policy="none",
        tie_embeddings=False,
    )
    folder = str(tmp_path_factory.mktemp("hf"))
    hf.write_weights(folder, model, random_params(model), "float32", 1 << 30)
    config = {
        "model_type": "llama",
        "vocab_size": 300,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 32,
        "tie_word_embeddings": False,
    }  # what LlamaConfig writes, in short
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return folder


@pytest.mark.parametrize("damage", ["config.json", "model.safetensors"])
def test_convert_from_hf_names_the_damaged_file(hf_folder, tmp_path, capsys, damage):
    from trainer.export import import_hf

    folder = str(tmp_path / "hf")
    shutil.copytree(hf_folder, folder)
    path = os.path.join(folder, damage)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    out = str(tmp_path / "run")
    assert import_hf.main(["--hf", folder, "--out", out, "--no-verify"]) == 2
    line = one_error_line(capsys)
    assert path in line and "damaged" in line and "re-download or re-save" in line
    assert not os.path.exists(out)
