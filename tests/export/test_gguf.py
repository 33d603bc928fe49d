"""GGUF export: F16 and Q8_0 files read back within the quantisation's bound, transformers' GGUF loader reproduces our
logits on the stored weights, and the tokenizer metadata is the SentencePiece vocabulary (llama.cpp's `llama` model)
or a byte-level BPE under the pre-tokenizer name of its own splitting rules. A tokenizer llama.cpp can't reproduce,
and a K-quant without llama.cpp's quantizer, are refused in one line; the Ollama Modelfile carries the chat format
and the stop strings. (llama.cpp itself runs the files in test_llama_cpp.py.)"""

import importlib.util
import json
import os

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from bpe_tokenizers import BUILDERS, EOT, training_texts
from hf_models import HAS_ACCELERATE, random_params
from sp_tokenizers import held_out_strings, sentencepiece
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from trainer.config import ModelConfig
from trainer.data import chat
from trainer.data.tokenizer import SentencePieceTokenizer, load_tokenizer
from trainer.errors import ConversionError
from trainer.export import command as convert_to_hf
from trainer.export import gguf as gguf_export
from trainer.export import mapping, modelfile
from trainer.export.tokenizer import write_tokenizer

# down_proj rows are 80 wide: not a multiple of Q8_0's 32-blocks, so they stay F16 as in llama.cpp's converter
MODEL = ModelConfig(
    vocab_size=520,
    embed_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=80,
    max_seq_len=64,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(sentencepiece(), str(folder), str(folder), add_bos=True)
    return str(folder)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_0"])
def test_gguf_reads_back_within_quantisation_tolerance(gguf_type, tokenizer_dir, tmp_path, capsys):
    params = random_params(MODEL)
    tok = sentencepiece()
    name = f"model-{gguf_type}.gguf"
    size = gguf_export.write_gguf(str(tmp_path / name), MODEL, params, tokenizer_dir, tok, gguf_type)
    assert size == os.path.getsize(tmp_path / name)

    gguf_export.check_gguf_weights(str(tmp_path / name), MODEL, params)  # read back, within the quantisation bound
    if HAS_ACCELERATE:  # and transformers' GGUF loader gives our logits on the stored weights
        report = gguf_export.verify_gguf(str(tmp_path), name, MODEL, params, gguf_type)
        print(report)
        assert report.startswith("parity ok")

    _, types = gguf_export.read_gguf(str(tmp_path / name), MODEL)
    assert types["model.norm.weight"] == "F32"
    assert types["model.layers.0.self_attn.q_proj.weight"] == gguf_type.upper()
    assert types["model.layers.0.mlp.down_proj.weight"] == "F16"  # in an F16 file, and as the Q8_0 fallback

    reader = gguf.GGUFReader(str(tmp_path / name))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    sp = spm.SentencePieceProcessor(model_proto=tok.model_proto)
    assert field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.tokens")[:512] == [sp.id_to_piece(i) for i in range(512)]
    assert field("tokenizer.ggml.tokens")[512:] == [f"[PAD{i}]" for i in range(512, 520)]
    assert np.allclose(field("tokenizer.ggml.scores")[:512], [sp.get_score(i) for i in range(512)])
    types = field("tokenizer.ggml.token_type")
    assert types[tok.eos_id] == gguf.TokenType.CONTROL and types[sp.piece_to_id("<0x41>")] == gguf.TokenType.BYTE
    assert field("tokenizer.ggml.add_space_prefix") is False
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (tok.bos_id, tok.eos_id)
    # written explicitly: without the key llama.cpp prepends a BOS (write_gguf's default: the data had BOS)
    assert field("tokenizer.ggml.add_bos_token") is True and field("tokenizer.ggml.add_eos_token") is False
    assert field("llama.rope.freq_base") == MODEL.rope_theta and field("llama.attention.head_count_kv") == 2

    # transformers rebuilds the tokenizer from these tokens and scores; it ignores add_space_prefix=False (it always
    # prepends "▁"), so compare on text that already starts with a space, where both agree
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=name)
    strings = [" " + s for s in held_out_strings(300)]
    assert [hf_tok.encode(s, add_special_tokens=False) for s in strings] == [tok.encode(s) for s in strings]


def test_qk_rows_are_stored_in_llama_cpp_order(tmp_path, tokenizer_dir):
    params = random_params(MODEL)
    path = str(tmp_path / "m.gguf")
    gguf_export.write_gguf(path, MODEL, params, tokenizer_dir, sentencepiece(), "f16")
    stored = {t.name: np.asarray(t.data, np.float32) for t in gguf.GGUFReader(path).tensors}
    hf = dict(mapping.to_hf(params, MODEL))
    k = hf["model.layers.1.self_attn.k_proj.weight"]
    head = k[:16]  # one kv head [head_dim, embed]: llama.cpp wants rows 0, 8, 1, 9, ... (pairs of the two halves)
    expected = np.stack([head[:8], head[8:]], axis=1).reshape(16, -1)
    np.testing.assert_allclose(stored["blk.1.attn_k.weight"][:16], expected, rtol=1e-3, atol=1e-3)
    assert np.array_equal(gguf_export.unpermute_qk(gguf_export.permute_qk(k, 2), 2), k)


@pytest.mark.parametrize("style, pre", [("gpt2", "gpt-2"), ("starcoder", "starcoder")])
def test_a_byte_level_bpe_is_written_under_the_pre_tokenizer_name_of_its_own_rules(style, pre, tmp_path):
    tok = load_tokenizer(BUILDERS[style](str(tmp_path / "tok")))
    folder = tmp_path / "export"
    folder.mkdir()
    write_tokenizer(tok, str(tmp_path / "tok"), str(folder), add_bos=False)
    path = str(tmp_path / "m.gguf")
    gguf_export.write_gguf(path, MODEL, random_params(MODEL), str(folder), tok, "f16", add_bos=False)
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", pre)
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    eot = tok.encode(EOT)[0]
    assert tokens[eot] == EOT and types[eot] == gguf.TokenType.CONTROL  # split out of text before BPE, as HF does
    assert tokens[512:] == [f"[PAD{i}]" for i in range(512, 520)] and len(field("tokenizer.ggml.merges")) > 100
    assert field("tokenizer.ggml.add_bos_token") is False


def test_without_llama_cpp_the_check_says_llama_cpp_was_not_run(tokenizer_dir, tmp_path, monkeypatch):
    pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate (the hf extra)")
    params = random_params(MODEL)
    gguf_export.write_gguf(str(tmp_path / "m.gguf"), MODEL, params, tokenizer_dir, sentencepiece(), "f16")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a)
    )
    report = gguf_export.verify_gguf(str(tmp_path), "m.gguf", MODEL, params, "f16", sentencepiece(), True)
    assert report.startswith("parity ok") and report.endswith(
        'llama.cpp not run (pip install -e ".[llama]" to check the file in it)'
    )


def _custom_split_tokenizer(folder: str) -> str:
    """A byte-level BPE whose pre-tokenizer splits on a regex of its own: no llama.cpp name reproduces it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\s+"), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        training_texts(10),
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=[EOT],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    os.makedirs(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": EOT, "bos_token": EOT}, f)
    return folder


def test_a_tokenizer_llama_cpp_cannot_reproduce_is_refused_in_one_line(tmp_path):
    folder = _custom_split_tokenizer(str(tmp_path / "tok"))
    tok = load_tokenizer(folder)
    with pytest.raises(ConversionError) as refused:
        gguf_export.write_gguf(str(tmp_path / "m.gguf"), MODEL, random_params(MODEL), folder, tok, "f16")
    message = str(refused.value)
    assert "\n" not in message and "--format hf" in message and "Split(" in message


def test_a_k_quant_without_llama_cpp_is_refused_in_one_line_before_loading(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a)
    )
    code = convert_to_hf.main(
        [
            "--checkpoint",
            str(tmp_path / "no-such-run"),
            "--out",
            str(tmp_path / "out"),
            "--format",
            "gguf",
            "--gguf-type",
            "q4_k_m",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and 'pip install -e ".[llama]"' in err, err


def _chat_tokenizer(template: str) -> SentencePieceTokenizer:
    tok = SentencePieceTokenizer(sentencepiece().model_proto)  # a copy: sentencepiece() is shared by the tests
    tok.chat = chat.chat_config(chat.resolve_template(template), tok)
    return tok


def test_the_modelfile_names_the_gguf_the_chat_format_as_a_go_template_and_every_stop(tmp_path):
    tok = _chat_tokenizer("kodalite")  # its markers plain text: <|end|> is several tokens, a stop string
    assert tok.stop_strings == ("<|end|>",)
    modelfile.write_modelfile(str(tmp_path), "model-q4_k_m.gguf", tok)
    lines = (tmp_path / "Modelfile").read_text().split("\n")
    assert "FROM ./model-q4_k_m.gguf" in lines
    assert 'PARAMETER stop "<|end|>"' in lines and 'PARAMETER stop "</s>"' in lines
    template = modelfile.go_template(tok)
    assert template == (
        '{{ range .Messages }}{{ if eq .Role "system" }}<|system|>\n{{ .Content }}\n'
        '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}\n'
        "{{ else }}<|assistant|>\n{{ .Content }}\n<|end|>\n{{ end }}{{ end }}<|assistant|>\n"
    )
    assert f'TEMPLATE """{template}"""' in (tmp_path / "Modelfile").read_text()


def test_a_chat_format_that_is_not_per_message_gets_no_template_and_plain_text_none(tmp_path):
    alpaca = modelfile.modelfile_text("m.gguf", _chat_tokenizer("alpaca"))  # a preamble unless a system turn
    assert "TEMPLATE" not in alpaca and "# the chat format 'alpaca'" in alpaca
    plain = modelfile.modelfile_text("m.gguf", sentencepiece())
    assert plain.splitlines()[1:] == ["FROM ./m.gguf", 'PARAMETER stop "</s>"']
