"""`hf:` inputs in the `datasets` library's streaming mode: one unit per data file, the same shards as downloaded."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bpe_tokenizers import gpt2_style

from trainer import storage
from trainer.data.chat_prepare import prepare_chat
from trainer.data.shards import read_manifest
from trainer.data.text_prepare import prepare

pytest.importorskip("datasets")
TEXTS = [f"row {i}: " + f"x = {i}\n" * (i % 4 + 1) for i in range(120)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style(str(tmp_path_factory.mktemp("tok") / "gpt2"))


def _shards(folder: str) -> dict[str, bytes]:
    return {s.file: storage.read_bytes(os.path.join(folder, s.file)) for s in read_manifest(folder).shards}


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_streamed_and_downloaded_folders_give_identical_shards(tmp_path, tokenizer, kind):
    folder = tmp_path / "ds"
    folder.mkdir()
    if kind == "json":
        (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    else:
        pq.write_table(pa.table({"text": TEXTS}), folder / "train.parquet")
    kwargs = dict(tokenizer=tokenizer, val_fraction=0.1, progress=False, verbose=False)
    downloaded = prepare([f"hf:{folder}"], str(tmp_path / "down"), **kwargs)
    streamed = prepare([f"hf:{folder}"], str(tmp_path / "stream"), stream=True, **kwargs)
    assert downloaded.totals() == streamed.totals() and streamed.totals()["all"]["documents"] == len(TEXTS)
    assert _shards(str(tmp_path / "down")) == _shards(str(tmp_path / "stream"))


def test_one_unit_per_data_file_and_chat_records(tmp_path, tokenizer):
    folder = tmp_path / "ds"
    folder.mkdir()
    for f in range(3):
        rows = [{"prompt": f"say {f}-{i}", "completion": f"{f}-{i}"} for i in range(10)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{f}.parquet")
    manifest = prepare(
        [f"hf:{folder}"],
        str(tmp_path / "text"),
        tokenizer=tokenizer,
        template="{{ prompt }} -> {{ completion }}",
        stream=True,
        workers=1,
        progress=False,
        verbose=False,
    )
    assert manifest.totals()["all"]["documents"] == 30
    assert sorted(n for n in os.listdir(tmp_path / "text") if n.startswith("part-")) == [
        "part-00000.json",
        "part-00001.json",
        "part-00002.json",
    ]
    chat = prepare_chat(
        [f"hf:{folder}"], str(tmp_path / "chat"), tokenizer=tokenizer, stream=True, workers=1, verbose=False
    )
    assert chat.totals()["all"]["documents"] == 30 and chat.kind == "chat"
    downloaded = prepare_chat([f"hf:{folder}"], str(tmp_path / "chat-down"), tokenizer=tokenizer, verbose=False)
    assert downloaded.totals()["all"]["documents"] == 30
