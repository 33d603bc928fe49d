"""gs:// end to end on a real gcp-storage-emulator: prepare straight into a bucket, stream it like local disk."""

import os
import subprocess
import sys

import numpy as np
from gcs_emulator import gcs_emulator

from trainer import storage
from trainer.config import DataConfig
from trainer.data.pipeline import make_eval_iterator, make_train_iterator
from trainer.data.shards import read_manifest
from trainer.data.text_prepare import prepare
from trainer.data.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def batches(path, packing, n=4):
    it = make_train_iterator(
        DataConfig(path=path, packing=packing),
        seq_len=24,
        global_batch_size=4,
        seed=3,
        process_index=0,
        process_count=1,
    )
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()  # before the emulator stops: no read may be left in flight


def test_prepare_into_gcs_and_stream_the_same_batches_as_local(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for i in range(30):
        (tmp_path / "in" / f"{i}.txt").write_text(f"file {i} ✓ " + "def f(x):\n    return x + 1\n" * (i % 7 + 1))
    local_dir = str(tmp_path / "local")
    local = prepare(
        inputs=[str(tmp_path / "in")],
        out=local_dir,
        vocab_size=300,
        val_fraction=0.2,
        workers=1,
        progress=False,
        verbose=False,
    )
    model = os.path.join(local_dir, "tokenizer.model")
    saved_env = os.environ.get("STORAGE_EMULATOR_HOST")
    with gcs_emulator() as gcs:
        url = gcs.url("data/small")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer.data.prepare",
                "--input",
                str(tmp_path / "in"),
                "--out",
                url,
                "--tokenizer",
                model,
                "--val-fraction",
                "0.2",
                "--workers",
                "2",
                "--no-progress",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
        )
        assert result.returncode == 0, result.stderr
        remote = read_manifest(url)
        assert remote.shards == local.shards  # byte-identical shards (same sha256)
        assert {"manifest.json", "tokenizer.model"} <= set(storage.listdir(url))
        assert load_tokenizer(url).sha256 == load_tokenizer(local_dir).sha256

        # Same data, same seed: the same stream from the bucket as from disk.
        for packing in (False, True):
            for a, b in zip(batches(local_dir, packing), batches(url, packing)):
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key])
        kwargs = dict(seq_len=24, global_batch_size=4, process_index=0, process_count=1, num_batches=2)
        for a, b in zip(
            make_eval_iterator(DataConfig(path=local_dir), **kwargs), make_eval_iterator(DataConfig(path=url), **kwargs)
        ):
            np.testing.assert_array_equal(a["inputs"], b["inputs"])

        # A re-run verifies every shard in the bucket (sha256 against its sidecar) and rewrites nothing.
        capsys.readouterr()
        again = prepare(
            inputs=[str(tmp_path / "in")], out=url, tokenizer=model, val_fraction=0.2, workers=1, progress=False
        )
        assert "already complete and verified" in capsys.readouterr().out
        assert again.shards == remote.shards
    assert os.environ.get("STORAGE_EMULATOR_HOST") == saved_env  # the helper restored the environment
