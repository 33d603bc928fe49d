"""The exported tokenizer: a SentencePiece BPE becomes an HF tokenizer that encodes 1,000 held-out strings exactly like
SentencePiece; special ids, BOS and a chat template come along."""

from sp_tokenizers import TEMPLATE, held_out_strings, sentencepiece
from transformers import AutoTokenizer

from trainer.data.tokenizer import (
    open_tokenizer,
)
from trainer.export.tokenizer import check_tokenizer, write_tokenizer


def test_exported_sentencepiece_tokenizer_encodes_exactly_like_sentencepiece(tmp_path):
    tok = sentencepiece()
    source = tmp_path / "run_tokenizer"
    tok.save(str(source))
    (source / "chat_template.jinja").write_text(TEMPLATE)
    out = tmp_path / "hf"
    out.mkdir()
    write_tokenizer(tok, str(source), str(out), add_bos=True)

    hf = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    strings = held_out_strings()
    assert len(strings) == 1000
    mismatches = [s for s in strings if hf.encode(s, add_special_tokens=False) != tok.encode(s)]
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[0]!r}"
    assert all(hf.decode(tok.encode(s)) == s for s in strings[:100])
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert hf.encode("x = 1")[0] == tok.bos_id  # add_bos_token (the data's --bos) is honoured
    rendered = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|user|>hi\n"
    assert (out / "tokenizer.model").read_bytes() == tok.model_proto
    check_tokenizer(tok, str(out))  # the CLI's own check agrees


def test_hf_tokenizer_folders_are_copied_as_they_are(tmp_path):
    sp_out = tmp_path / "first"
    sp_out.mkdir()
    write_tokenizer(sentencepiece(), str(tmp_path), str(sp_out), add_bos=False)
    hf_tok = open_tokenizer(str(sp_out))  # tokenizer.json wins over tokenizer.model
    assert hf_tok.kind == "hf"
    out = tmp_path / "second"
    out.mkdir()
    write_tokenizer(hf_tok, str(sp_out), str(out), add_bos=True)
    again = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert again.encode("def f(x):\n    return x", add_special_tokens=False) == hf_tok.encode("def f(x):\n    return x")
    assert again.encode("x")[0] == hf_tok.bos_id  # BOS: the run's fact (the argument), not the folder's
