"""Compressed inputs read as streams, and one large JSONL file cut into byte ranges for every worker."""

import bz2
import glob
import gzip
import json
import lzma
import os

import pytest
import zstandard
from bpe_tokenizers import gpt2_style

from trainer import storage
from trainer.data import DataError
from trainer.data.shards import read_manifest
from trainer.data.text_prepare import prepare

COMPRESS = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".zst": zstandard.ZstdCompressor().compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style(str(tmp_path_factory.mktemp("tok") / "gpt2"))


def _documents(n: int) -> bytes:
    body = "def f(x):\n    return x * {}  # ünïcode\n"
    rows = [{"text": f"document {i}: " + body.format(i) * (i % 5 + 1)} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _shard_bytes(folder: str) -> dict[str, bytes]:
    manifest = read_manifest(folder)
    return {s.file: storage.read_bytes(os.path.join(folder, s.file)) for s in manifest.shards}


def test_jsonl_plain_gz_zst_bz2_xz_give_identical_shards(tmp_path, tokenizer):
    data = _documents(300)
    shards = {}
    for suffix, compress in COMPRESS.items():
        folder = tmp_path / f"in{suffix or '-plain'}"
        folder.mkdir()
        (folder / f"docs.jsonl{suffix}").write_bytes(compress(data))
        out = str(tmp_path / f"out{suffix or '-plain'}")
        manifest = prepare([str(folder)], out, tokenizer=tokenizer, val_fraction=0.1, progress=False, verbose=False)
        assert manifest.totals()["all"]["documents"] == 300 and manifest.totals()["val"]["documents"] > 0
        shards[suffix] = _shard_bytes(out)
    assert all(got == shards[""] for got in shards.values())


def test_compressed_text_file_is_one_document(tmp_path, tokenizer):
    text = "print('hello')\n" * 50
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.py.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    manifest = prepare(
        [str(tmp_path / "in")], str(tmp_path / "out"), tokenizer=tokenizer, progress=False, verbose=False
    )
    assert manifest.totals()["all"]["documents"] == 1


def test_damaged_compressed_file_is_one_line(tmp_path, tokenizer):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl.gz").write_bytes(gzip.compress(_documents(50))[:-30])
    with pytest.raises(DataError, match=r"docs.jsonl.gz is not a readable .gz file"):
        prepare([str(tmp_path / "in")], str(tmp_path / "out"), tokenizer=tokenizer, progress=False, verbose=False)


def test_one_large_file_is_cut_into_units_and_workers_agree(tmp_path, tokenizer):
    data = _documents(2000)
    (tmp_path / "big.jsonl").write_bytes(data)
    outs = {}
    for name, workers, unit_bytes in (("one", 1, 64 << 10), ("two", 2, 64 << 10), ("whole", 1, 1 << 30)):
        outs[name] = str(tmp_path / name)
        prepare(
            [str(tmp_path / "big.jsonl")],
            outs[name],
            tokenizer=tokenizer,
            workers=workers,
            unit_bytes=unit_bytes,
            val_fraction=0.05,
            progress=False,
            verbose=False,
        )
    parts = len(glob.glob(os.path.join(outs["one"], "part-*.json")))
    assert parts == -(-len(data) // (64 << 10)) > 4
    assert _shard_bytes(outs["one"]) == _shard_bytes(outs["two"])
    # the cut points lose and repeat no line: the same documents and tokens as the file read whole, in order
    one, whole = read_manifest(outs["one"]).totals(), read_manifest(outs["whole"]).totals()
    assert one == whole and one["all"]["documents"] == 2000


def test_compressed_jsonl_from_gcs(tmp_path, tokenizer):
    from gcs_emulator import gcs_emulator

    data = _documents(100)
    with gcs_emulator() as gcs:
        storage.write_bytes_atomic(gcs.url("in/docs.jsonl.zst"), zstandard.ZstdCompressor().compress(data))
        manifest = prepare([gcs.url("in/docs.jsonl.zst")], str(tmp_path / "out"), tokenizer=tokenizer, progress=False)
    assert manifest.totals()["all"]["documents"] == 100
