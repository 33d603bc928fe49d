"""Preparation: text/JSONL/Parquet → tokenizer + shards + manifest, decoded back exactly; resume; HF tokenizer, CLI."""

import json
import os
import pathlib
import random
import subprocess
import sys

import grain
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import storage
from trainer.config import DataConfig
from trainer.data import shards as shards_lib
from trainer.data.prepare import ensure_prepared
from trainer.data.text_prepare import prepare
from trainer.data.tokenizer import load_tokenizer
from trainer.data.units import is_validation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "alpha beta gamma delta def return self import class for while None True False print value".split()


def make_text_corpus(folder, n_docs=40, seed=0):
    """Unique documents of varied length, one per file, with non-ASCII text and one file of invalid UTF-8."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    texts = {}
    for i in range(n_docs):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 300)))
        text = f"doc {i}:\n    {body}\n\tünïcödé — 日本語 🙂 {i}\n"
        path = os.path.join(folder, f"doc{i:03d}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        texts[path] = text
    bad = os.path.join(folder, "latin1.txt")
    with open(bad, "wb") as f:
        f.write(b"caf\xe9 na\xefve \xff end\n")  # three invalid UTF-8 bytes
    texts[bad] = "caf\ufffd na\ufffdve \ufffd end\n"
    with open(os.path.join(folder, "empty.txt"), "w"):
        pass
    return texts


def read_split(manifest, split):
    """Every document of a split, decoded from the shards: list of int lists."""
    paths = manifest.shard_paths(split)
    if not paths:
        return []
    source = grain.sources.ArrayRecordDataSource(paths)
    return [shards_lib.decode_record(source[i], manifest.dtype).tolist() for i in range(len(source))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    texts = make_text_corpus(str(root / "txt"))
    out = str(root / "prepared")
    manifest = prepare(
        inputs=[str(root / "txt" / "*.txt")],
        out=out,
        vocab_size=320,
        val_fraction=0.2,
        workers=1,
        progress=False,
        verbose=False,
    )
    return texts, out, manifest


def test_shards_decode_back_to_the_input_documents(corpus):
    texts, out, manifest = corpus
    tok = load_tokenizer(out)
    assert (tok.kind, tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == ("sentencepiece", 320, 0, 2, 3)
    assert manifest.dtype == "uint16" and manifest.tokenizer["sha256"] == tok.sha256
    decoded = []
    for split in ("train", "val"):
        for ids in read_split(manifest, split):
            assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
            decoded.append(tok.decode(ids[:-1]))
    assert sorted(decoded) == sorted(texts.values())  # exact text back, incl. non-ASCII; the empty file skipped
    assert manifest.empty_documents_skipped == 1
    bad = manifest.replacement_chars
    assert bad["total"] == 3 and bad["documents"] == 1 and bad["by_input"] == {"latin1.txt": 3}


def test_validation_split_is_held_out_by_document_and_deterministic(corpus):
    texts, out, manifest = corpus
    tok = load_tokenizer(out)
    val = {tok.decode(ids[:-1]) for ids in read_split(manifest, "val")}
    # Documents are keyed by their path relative to the inputs' common folder, so moving the corpus keeps the split.
    expected = {text for path, text in texts.items() if is_validation(os.path.basename(path), 0, 0.2)}
    assert val == expected and 0 < len(val) < len(texts)
    totals = json.loads(pathlib.Path(out, "manifest.json").read_text())["totals"]
    assert totals["val"]["documents"] == len(val)
    assert totals["all"]["documents"] == len(texts)
    assert totals["all"]["tokens"] == sum(s.tokens for s in manifest.shards)


def test_rerun_skips_verified_units_and_redoes_a_corrupted_shard(corpus, tmp_path):
    texts, out, manifest = corpus
    folder = os.path.dirname(next(iter(texts)))
    out2 = str(tmp_path / "again")
    first = prepare(
        inputs=[folder],
        out=out2,
        tokenizer=os.path.join(out, "tokenizer.model"),
        val_fraction=0.2,
        workers=1,
        unit_bytes=8 << 10,
        progress=False,
        verbose=False,
    )
    assert len(first.shards) > 2
    shard = os.path.join(out2, first.shards[0].file)
    with open(shard, "ab") as f:
        f.write(b"garbage")
    untouched = os.path.join(out2, first.shards[-1].file)
    mtime = os.stat(untouched).st_mtime_ns
    second = prepare(
        inputs=[folder],
        out=out2,
        tokenizer=os.path.join(out, "tokenizer.model"),
        val_fraction=0.2,
        workers=1,
        unit_bytes=8 << 10,
        progress=False,
        verbose=False,
    )
    assert second.shards == first.shards  # same content, same hashes: the corrupted shard was rewritten
    assert storage.sha256(shard) == first.shards[0].sha256
    assert os.stat(untouched).st_mtime_ns == mtime  # its unit was verified and skipped


def test_ensure_prepared_leaves_a_prepared_folder_alone(corpus):
    _, out, _ = corpus
    assert ensure_prepared(DataConfig(path=out, prepare_corpus="stdlib")) is None
    assert ensure_prepared(DataConfig(path="/nonexistent/never-prepared")) is None  # no prepare_corpus: nothing to do


def test_jsonl_and_parquet_inputs_with_bos(corpus, tmp_path):
    _, out, _ = corpus
    docs = [f"record {i} ünï 🙂 " + "x" * i for i in range(1, 30)]
    with open(tmp_path / "a.jsonl", "w", encoding="utf-8") as f:
        for d in docs[:15]:
            f.write(json.dumps({"body": d, "id": 1}) + "\n")
    pq.write_table(pa.table({"body": docs[15:], "n": list(range(15, 29))}), tmp_path / "b.parquet")
    manifest = prepare(
        inputs=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")],
        out=str(tmp_path / "p"),
        tokenizer=os.path.join(out, "tokenizer.model"),
        text_field="body",
        bos=True,
        val_fraction=0.0,
        workers=1,
        progress=False,
        verbose=False,
    )
    tok = load_tokenizer(str(tmp_path / "p"))
    ids = read_split(manifest, "train")
    assert all(x[0] == tok.bos_id and x[-1] == tok.eos_id for x in ids)
    assert sorted(tok.decode(x[1:-1]) for x in ids) == sorted(docs)
    assert manifest.bos and not manifest.shards_of("val")


def test_hugging_face_tokenizer_folder_is_stored_and_loaded(corpus, tmp_path):
    """An HF tokenizer folder (made from the SentencePiece model as docs/pitfalls.md describes) drives preparation."""
    texts, out, _ = corpus
    from transformers import LlamaTokenizerFast

    sp_dir = tmp_path / "sp"
    sp_dir.mkdir()
    (sp_dir / "tokenizer.model").write_bytes(pathlib.Path(out, "tokenizer.model").read_bytes())
    hf = LlamaTokenizerFast.from_pretrained(
        str(sp_dir), local_files_only=True, add_bos_token=True, add_prefix_space=False
    )
    hf.save_pretrained(str(tmp_path / "hf"))
    folder = os.path.dirname(next(iter(texts)))
    manifest = prepare(
        inputs=[os.path.join(folder, "doc00*.txt")],
        out=str(tmp_path / "p"),
        tokenizer=str(tmp_path / "hf"),
        val_fraction=0.0,
        workers=1,
        progress=False,
        verbose=False,
    )
    assert manifest.tokenizer["kind"] == "hf" and manifest.tokenizer["file"] == "tokenizer"
    assert os.path.exists(tmp_path / "p" / "tokenizer" / "tokenizer.json")
    tok = load_tokenizer(str(tmp_path / "p"))
    assert tok.kind == "hf" and tok.eos_id == 3
    decoded = sorted(tok.decode(ids[:-1]) for ids in read_split(manifest, "train"))
    assert decoded == sorted(t for p, t in texts.items() if os.path.basename(p).startswith("doc00"))


def test_cli_end_to_end_on_part_of_the_stdlib(tmp_path):
    out = tmp_path / "stdlib"
    cmd = [
        sys.executable,
        "-m",
        "trainer.data.prepare",
        "--corpus",
        "stdlib",
        "--max-files",
        "50",
        "--vocab-size",
        "512",
        "--workers",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prepared" in result.stdout and "tokens/s" in result.stdout
    manifest = shards_lib.read_manifest(str(out))
    assert manifest.source.startswith("stdlib: 50 .py files")
    assert manifest.command.startswith("python -m trainer.data.prepare --corpus stdlib")
    assert len({s.file for s in manifest.shards_of("train")}) >= 2  # several work units ran in the pool
    for shard in manifest.shards:
        assert shard.sha256 == storage.sha256(str(out / shard.file))
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already complete and verified" in again.stdout
