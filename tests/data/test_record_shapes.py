"""Structured records: instruction shapes recognised without flags, field maps and row templates in both modes."""

import gzip
import json

import pytest
from bpe_tokenizers import EOT, gpt2_style

from trainer.data import DataError
from trainer.data.chat_prepare import prepare_chat
from trainer.data.prepare import main
from trainer.data.shards import decode_chat_record, decode_record, read_manifest
from trainer.data.text_prepare import prepare
from trainer.data.tokenizer import load_tokenizer

SHAPES = {
    "alpaca.jsonl.gz": lambda i: {"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"},
    "completion.jsonl": lambda i: {"prompt": f"Say {i}.", "completion": f"{i}!"},
    "math.jsonl": lambda i: {"problem": f"What is {i} squared?", "solution": f"{i * i}"},
}
REPLIES = {
    "alpaca.jsonl.gz": lambda i: f"{i + 1}",
    "completion.jsonl": lambda i: f"{i}!",
    "math.jsonl": lambda i: f"{i * i}",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style(str(tmp_path_factory.mktemp("tok") / "gpt2"))


def _write(path, rows):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _records(folder):
    from array_record.python.array_record_module import ArrayRecordReader

    manifest = read_manifest(str(folder))
    out = []
    for path in manifest.shard_paths("train") + manifest.shard_paths("val"):
        reader = ArrayRecordReader(path)
        out += [reader.read() for _ in range(reader.num_records())]
        reader.close()
    return manifest, out


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_instruction_shapes_prepare_without_flags_masking_replies_only(tmp_path, tokenizer, name):
    _write(tmp_path / name, [SHAPES[name](i) for i in range(20)])
    prepare_chat(
        [str(tmp_path / name)], str(tmp_path / "out"), tokenizer=tokenizer, template="smallcoder", verbose=False
    )
    manifest, records = _records(tmp_path / "out")
    tok = load_tokenizer(str(tmp_path / "out"))
    replies = {REPLIES[name](i) + EOT for i in range(20)}
    seen = set()
    for record in records:
        ids, mask = decode_chat_record(record, manifest.dtype)
        seen.add(tok.decode([int(i) for i in ids[mask == 1]]).lstrip())  # a byte-level token carries the space
        assert tok.decode([int(i) for i in ids[mask == 0]]).startswith("User: ")
    assert seen == replies


def test_parquet_records_in_chat_mode(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": f"What is {i} squared?", "solution": f"{i * i}", "level": i} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math.parquet")
    kwargs = dict(tokenizer=tokenizer, template="smallcoder", val_fraction=0.0, verbose=False)
    shaped = prepare_chat([str(tmp_path / "math.parquet")], str(tmp_path / "shape"), **kwargs)
    mapped = prepare_chat(
        [str(tmp_path / "math.parquet")],
        str(tmp_path / "map"),
        fields=("solution",),
        row_template="{{ problem }} (level {{ level }})",
        **kwargs,
    )
    assert shaped.totals()["all"]["documents"] == mapped.totals()["all"]["documents"] == 8
    manifest, records = _records(tmp_path / "map")
    ids, _ = decode_chat_record(records[0], manifest.dtype)
    assert (
        load_tokenizer(str(tmp_path / "map")).decode([int(i) for i in ids])
        == f"User: What is 0 squared? (level 0)\nAssistant: 0{EOT}"
    )


def test_unknown_shape_is_refused_naming_its_keys(tmp_path, tokenizer):
    _write(tmp_path / "odd.jsonl", [{"question": "q", "answer_text": "a"}])
    with pytest.raises(DataError, match=r"odd.jsonl:1: not a conversation.*keys found: answer_text, question"):
        prepare_chat([str(tmp_path / "odd.jsonl")], str(tmp_path / "out"), tokenizer=tokenizer, verbose=False)


def test_fields_and_template_in_chat_mode(tmp_path, tokenizer):
    _write(tmp_path / "qa.jsonl", [{"question": f"q{i}", "context": f"c{i}", "answer_text": f"a{i}"} for i in range(5)])
    kwargs = dict(tokenizer=tokenizer, template="smallcoder", val_fraction=0.0, verbose=False)
    prepare_chat(
        [str(tmp_path / "qa.jsonl")], str(tmp_path / "f"), fields=("question", "context", "answer_text"), **kwargs
    )
    prepare_chat(
        [str(tmp_path / "qa.jsonl")],
        str(tmp_path / "t"),
        fields=("answer_text",),
        row_template="{{ context }}\n\n{{ question }}",
        **kwargs,
    )
    tok = load_tokenizer(str(tmp_path / "f"))
    for folder, prompt in (("f", "q0\n\nc0"), ("t", "c0\n\nq0")):
        manifest, records = _records(tmp_path / folder)
        ids, mask = decode_chat_record(records[0], manifest.dtype)
        assert tok.decode([int(i) for i in ids]) == f"User: {prompt}\nAssistant: a0{EOT}"
        assert tok.decode([int(i) for i in ids[mask == 1]]).lstrip() == f"a0{EOT}"


def test_fields_and_template_in_text_mode(tmp_path, tokenizer, capsys):
    rows = [{"instruction": f"do {i}", "input": "" if i % 2 else f"with {i}", "output": f"done {i}"} for i in range(6)]
    _write(tmp_path / "in.jsonl", rows)
    kwargs = dict(tokenizer=tokenizer, val_fraction=0.0, progress=False, verbose=False)
    prepare([str(tmp_path / "in.jsonl")], str(tmp_path / "f"), fields=("instruction", "input", "output"), **kwargs)
    prepare(
        [str(tmp_path / "in.jsonl")], str(tmp_path / "t"), template="Q: {{ instruction }}\nA: {{ output }}", **kwargs
    )
    tok = load_tokenizer(str(tmp_path / "f"))
    for folder, want in (
        ("f", lambda r: "\n\n".join(v for v in r.values() if v)),
        ("t", lambda r: f"Q: {r['instruction']}\nA: {r['output']}"),
    ):
        manifest, records = _records(tmp_path / folder)
        texts = sorted(tok.decode([int(i) for i in decode_record(r, manifest.dtype)[:-1]]) for r in records)
        assert texts == sorted(want(r) for r in rows)
        assert all(int(decode_record(r, manifest.dtype)[-1]) == tok.eos_id for r in records)
    # the CLI: a field the records lack, and a broken template, are one line each
    out = str(tmp_path / "cli")
    assert main(["--input", str(tmp_path / "in.jsonl"), "--out", out, "--tokenizer", tokenizer, "--fields", "a,b"]) == 2
    assert "in.jsonl:1 has no field 'a' (keys: input, instruction, output)" in capsys.readouterr().err
    assert (
        main(["--input", str(tmp_path / "in.jsonl"), "--out", out, "--template", "{{ x", "--tokenizer", tokenizer]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--template is not a valid Jinja template" in err[0]
