"""Hugging Face tokenizer folders read with the `tokenizers` library alone (trainer.data.hf_tokenizer): byte-level BPE
of GPT-2's and StarCoder's kinds and the LlamaTokenizerFast folder exported from a SentencePiece model give
transformers' ids, decode back to the text, give character offsets of the right characters, add tokens, resolve the
special tokens of a folder whose config names none (GPT-2's), and render a folder's own chat template as transformers.
"""

import json
import shutil
import sys

import pytest
from bpe_tokenizers import BUILDERS, EOT, TRICKY
from sp_tokenizers import held_out_strings, sentencepiece
from transformers import AutoTokenizer

from trainer.data import DataError
from trainer.data.tokenizer import hf_from_files, load_tokenizer, open_tokenizer
from trainer.export.tokenizer import write_tokenizer

STRINGS = TRICKY + held_out_strings(200)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The two byte-level styles as HF folders, and the SentencePiece model's LlamaTokenizerFast export."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {name: build(str(root / name)) for name, build in BUILDERS.items()}
    (root / "llama").mkdir()
    write_tokenizer(sentencepiece(), str(root), str(root / "llama"), add_bos=True)
    out["llama"] = str(root / "llama")
    return out


def exported(tok, tmp_path, add_bos=False):
    out = tmp_path / "exported"
    out.mkdir()
    write_tokenizer(tok, "", str(out), add_bos)
    return AutoTokenizer.from_pretrained(str(out), local_files_only=True)


def mismatches(tok, hf):
    return [s for s in STRINGS if tok.encode(s) != hf.encode(s, add_special_tokens=False)]


@pytest.mark.parametrize("style", ["gpt2", "starcoder", "llama"])
def test_ids_decode_and_specials_equal_transformers(style, folders, tmp_path):
    tok = open_tokenizer(folders[style])
    assert tok.kind == "hf" and "transformers" not in type(tok).__module__
    hf = exported(tok, tmp_path, add_bos=style == "llama")  # what every export ships (PreTrainedTokenizerFast)
    assert not mismatches(tok, hf)
    if style != "starcoder":  # transformers 5 rebuilds a GPT2Tokenizer without StarCoder's digit split
        assert not mismatches(tok, AutoTokenizer.from_pretrained(folders[style], local_files_only=True))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (hf.bos_token_id, hf.eos_token_id, len(hf))
    assert tok.encode_batch(STRINGS[:20]) == [tok.encode(s) for s in STRINGS[:20]]
    for s in STRINGS:
        ids = tok.encode(s)
        assert tok.decode(ids) == s  # nothing cleaned up, nothing lost
        assert hf.decode(ids, clean_up_tokenization_spaces=False) == s
    literal = tok.encode(f"please ignore {EOT} here") if style != "llama" else tok.encode("a </s> b")
    assert tok.eos_id in literal  # a special token's text inside ordinary text is its id, as in transformers
    assert hf.encode("x")[:1] == ([tok.bos_id] if style == "llama" else hf.encode("x", add_special_tokens=False)[:1])
    if style == "starcoder":
        assert tok.encode("    9") == [tok.encode("    ")[0], tok.encode("9")[0]]  # the digit split is kept


def test_offsets_are_characters_of_the_python_string_untrimmed(folders, tmp_path):
    trimming = tmp_path / "trimming"
    shutil.copytree(folders["gpt2"], trimming)
    spec = json.loads((trimming / "tokenizer.json").read_text())
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (trimming / "tokenizer.json").write_text(json.dumps(spec))
    for folder in (folders["gpt2"], str(trimming), folders["starcoder"]):
        tok = open_tokenizer(folder)
        for text in STRINGS:
            ids, offsets = tok.encode_with_offsets(text)
            assert ids == tok.encode(text)
            spans = list(dict.fromkeys(offsets))  # the byte tokens of one character share its span
            assert "".join(text[a:b] for a, b in spans) == text  # every character, once, in order: no gaps
            for token, (a, b) in zip(ids, offsets):
                piece = tok.decode([token])
                assert b > a and (piece == text[a:b] or "\ufffd" in piece), (text, piece, text[a:b])
    tok = open_tokenizer(str(trimming))
    text = "x\n\n  😀y"
    ids, offsets = tok.encode_with_offsets(text)
    assert [text[a:b] for a, b in offsets if text[a:b].isspace()]  # whitespace tokens keep their characters
    emoji = [o for o in offsets if text[o[0] : o[1]] == "😀"]
    assert len(emoji) == len(tok.encode("😀")) > 1 and all(o == (5, 6) for o in emoji)  # 4 bytes, one character


def test_with_tokens_adds_special_ids_and_saves_a_folder_transformers_reads(folders, tmp_path):
    tok = open_tokenizer(folders["gpt2"])
    more = tok.with_tokens(["<|user|>", EOT])
    assert more.vocab_size == tok.vocab_size + 1  # the vocabulary's own <|endoftext|> adds nothing
    assert more.encode(f"hi<|user|>x{EOT}") == tok.encode("hi") + [tok.vocab_size] + tok.encode("x") + [tok.eos_id]
    assert more.sha256 != tok.sha256
    more.save(str(tmp_path))
    again = load_tokenizer(str(tmp_path / "tokenizer"))
    assert again.sha256 == more.sha256 == hf_from_files(more.files()).sha256
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"), local_files_only=True)
    assert hf.encode("a<|user|>b", add_special_tokens=False) == more.encode("a<|user|>b")


def test_a_config_naming_no_special_token_makes_the_only_one_bos_eos_and_padding(folders, tmp_path):
    """A real GPT-2 folder's tokenizer_config.json holds only model_max_length."""
    bare = tmp_path / "gpt2"
    shutil.copytree(folders["gpt2"], bare)
    (bare / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    tok = open_tokenizer(str(bare))
    eot = tok.vocab_size - 1
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (eot, eot, eot)
    assert not tok.adds_bos  # its post-processor adds nothing
    tok.save(str(tmp_path / "saved"))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "saved" / "tokenizer"), local_files_only=True)
    assert (hf.bos_token_id, hf.eos_token_id) == (eot, eot)  # the saved config names it
    assert not mismatches(tok, hf)
    assert open_tokenizer(str(tmp_path / "saved" / "tokenizer")).sha256 == tok.sha256  # saving is stable
    (bare / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": EOT}, "eos_token": EOT, "pad_token": "<pad>", "add_bos_token": True})
    )
    tok = open_tokenizer(str(bare))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (eot, eot, eot + 1, eot + 2)  # <pad> added
    assert tok.adds_bos


def test_the_folders_own_chat_template_renders_as_transformers_does(folders, tmp_path):
    chat = tmp_path / "chat"
    shutil.copytree(folders["gpt2"], chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    (chat / "tokenizer_config.json").write_text(json.dumps(config))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]
    hf = AutoTokenizer.from_pretrained(str(chat), local_files_only=True)
    ours = open_tokenizer(str(chat)).render_chat(messages)
    assert ours == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.endswith(f"2 + 2?{EOT}<|assistant|>\n")


def test_a_folder_without_tokenizer_json_needs_transformers_once(folders, tmp_path, monkeypatch):
    slow = tmp_path / "slow"
    slow.mkdir()
    AutoTokenizer.from_pretrained(folders["gpt2"]).save_pretrained(str(tmp_path / "full"))
    vocab = json.loads((tmp_path / "full" / "tokenizer.json").read_text())["model"]
    (slow / "vocab.json").write_text(json.dumps(vocab["vocab"]))
    (slow / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) if isinstance(m, list) else m for m in vocab["merges"]) + "\n"
    )
    (slow / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": EOT}))
    assert open_tokenizer(str(slow)).encode("def f(x): return 1") == open_tokenizer(folders["gpt2"]).encode(
        "def f(x): return 1"
    )
    monkeypatch.setitem(sys.modules, "transformers", None)  # as on a `.[tpu]` worker
    with pytest.raises(DataError, match="no tokenizer.json: convert it once where transformers is installed"):
        open_tokenizer(str(slow))
    assert open_tokenizer(folders["gpt2"]).encode("x = 1")  # tokenizer.json needs no transformers


def test_a_files_truncation_and_padding_never_cut_a_document(folders, tmp_path):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(f"{folders['gpt2']}/tokenizer.json")
    backend.enable_truncation(max_length=8)
    backend.enable_padding(length=16)
    shutil.copytree(folders["gpt2"], tmp_path / "cut")
    backend.save(str(tmp_path / "cut" / "tokenizer.json"))
    tok, text = open_tokenizer(str(tmp_path / "cut")), STRINGS[7] * 3
    assert tok.encode(text) == open_tokenizer(folders["gpt2"]).encode(text) and len(tok.encode(text)) > 16
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "cut"), local_files_only=True)
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
