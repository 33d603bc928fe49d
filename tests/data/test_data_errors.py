"""Every bad input gets one actionable line: DataError from the API, `error: ...` + exit 2 from the CLI, no manifest."""

import os
import subprocess
import sys

import pytest
from sentencepiece import sentencepiece_model_pb2

from trainer.config import ConfigError, DataConfig, MixtureComponent
from trainer.data import DataError
from trainer.data.pipeline import make_eval_iterator, make_train_iterator
from trainer.data.shards import choose_dtype
from trainer.data.text_prepare import prepare

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = dict(workers=1, progress=False, verbose=False)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.data.prepare", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny prepared folder (vocab 300) and its input folder."""
    root = tmp_path_factory.mktemp("small")
    (root / "in").mkdir()
    for i in range(12):
        (root / "in" / f"{i}.txt").write_text(f"document {i} " + "lorem ipsum dolor sit amet " * (i + 3))
    prepare(inputs=[str(root / "in")], out=str(root / "out"), vocab_size=300, val_fraction=0.0, **QUIET)
    return root


def test_data_error_is_a_config_error_for_the_trainers_exit_code_2():
    assert issubclass(DataError, ConfigError)


def test_no_matching_files_cli(tmp_path):
    result = run_cli("--input", str(tmp_path / "nothing*.txt"), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "no input files match", "nothing*.txt")
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_only_empty_documents(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.jsonl").write_text('{"text": ""}\n\n')
    with pytest.raises(DataError, match="no documents in the input"):
        prepare(inputs=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], out=str(tmp_path / "out"), **QUIET)
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_unreadable_input_file(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    os.symlink(tmp_path / "gone.txt", tmp_path / "broken.txt")
    with pytest.raises(DataError, match="cannot read input file .*broken.txt"):
        prepare(inputs=[str(tmp_path / "*.txt")], out=str(tmp_path / "out"), **QUIET)


def test_jsonl_without_the_text_field(small, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:1 has no field 'text' \(choose one with --text-field\)"):
        prepare(
            inputs=[str(tmp_path / "a.jsonl")],
            out=str(tmp_path / "out"),
            tokenizer=str(small / "out" / "tokenizer.model"),
            **QUIET,
        )


def test_invalid_utf8_is_a_counted_warning_not_an_error(small, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bytes")
    result = run_cli(
        "--input",
        str(tmp_path / "bad.txt"),
        "--out",
        str(tmp_path / "out"),
        "--tokenizer",
        str(small / "out" / "tokenizer.model"),
    )
    assert result.returncode == 0, result.stderr
    assert "warning: 2 invalid UTF-8 sequences replaced with U+FFFD in 1 document(s)" in result.stderr


def test_vocab_that_does_not_fit_the_dtype():
    assert choose_dtype(65536) == "uint16" and choose_dtype(65537) == "uint32"
    with pytest.raises(DataError, match="does not fit uint32"):
        choose_dtype(2**32 + 1)
    with pytest.raises(DataError, match="does not fit uint16"):
        choose_dtype(70000, "uint16")


def test_forced_uint16_with_a_large_vocab_cli(small, tmp_path):
    """A real SentencePiece model grown to 70,000 pieces: uint32 by default, an error when uint16 is forced."""
    USER_DEFINED = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((small / "out" / "tokenizer.model").read_bytes())
    for i in range(70000 - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"<extra{i}>", -1e6, USER_DEFINED
    big = tmp_path / "big.model"
    big.write_bytes(proto.SerializeToString())
    result = run_cli(
        "--input", str(small / "in"), "--out", str(tmp_path / "out"), "--tokenizer", str(big), "--dtype", "uint16"
    )
    assert_one_line_error(result, "70,000 ids does not fit uint16")
    manifest = prepare(inputs=[str(small / "in")], out=str(tmp_path / "out32"), tokenizer=str(big), **QUIET)
    assert manifest.dtype == "uint32" and manifest.tokenizer["vocab_size"] == 70000


def test_output_folder_of_another_tokenizer_cli(small, tmp_path):
    other = prepare(inputs=[str(small / "in")], out=str(tmp_path / "other"), vocab_size=310, **QUIET)
    result = run_cli(
        "--input",
        str(small / "in"),
        "--out",
        str(tmp_path / "other"),
        "--tokenizer",
        str(small / "out" / "tokenizer.model"),
    )
    assert_one_line_error(result, "already holds shards of another tokenizer", "fresh --out")
    again = prepare(inputs=[str(small / "in")], out=str(tmp_path / "other"), vocab_size=310, **QUIET)
    assert again.shards == other.shards  # the folder is intact


def test_missing_data_path_names_the_prepare_command(tmp_path):
    for path in (str(tmp_path / "absent"), str(tmp_path)):
        with pytest.raises(DataError, match=f"data path {path} .*python -m trainer.data.prepare"):
            make_train_iterator(
                DataConfig(path=path), seq_len=8, global_batch_size=2, seed=0, process_index=0, process_count=1
            )
    with pytest.raises(DataError, match="no training data configured"):
        make_train_iterator(DataConfig(), seq_len=8, global_batch_size=2, seed=0, process_index=0, process_count=1)


def test_batch_not_divisible_and_missing_validation_split(small):
    data = DataConfig(path=str(small / "out"))
    with pytest.raises(DataError, match="global_batch_size=3 must be a positive multiple of the process count"):
        make_train_iterator(data, seq_len=8, global_batch_size=3, seed=0, process_index=0, process_count=2)
    with pytest.raises(DataError, match="holds no val documents"):
        make_eval_iterator(data, seq_len=8, global_batch_size=2, process_index=0, process_count=1, num_batches=1)


def test_mixture_components_must_share_a_tokenizer(small, tmp_path):
    prepare(inputs=[str(small / "in")], out=str(tmp_path / "other"), vocab_size=310, **QUIET)
    mixture = [MixtureComponent(str(small / "out"), 0.5), MixtureComponent(str(tmp_path / "other"), 0.5)]
    with pytest.raises(DataError, match="different tokenizers"):
        make_train_iterator(
            DataConfig(mixture=mixture), seq_len=8, global_batch_size=2, seed=0, process_index=0, process_count=1
        )
