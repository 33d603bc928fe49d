"""GGUF export: F16 and Q8_0 files read back within the quantisation's bound, transformers' GGUF loader reproduces our
logits on the stored weights, and the tokenizer metadata is the SentencePiece vocabulary (llama.cpp's `llama` model)."""

import importlib.util
import os

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from test_convert_mapping import random_params
from test_convert_tokenizer import held_out_strings, sentencepiece
from transformers import AutoTokenizer

from trainer.config import ModelConfig
from trainer.export import gguf as gguf_export
from trainer.export import mapping
from trainer.export.tokenizer import write_tokenizer

HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None  # transformers' GGUF model loader needs it

# down_proj rows are 80 wide: not a multiple of Q8_0's 32-blocks, so they stay F16 as in llama.cpp's converter
MODEL = ModelConfig(vocab_size=520, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=80,
                    max_seq_len=64, compute_dtype="float32", remat_policy="none", tie_embeddings=False)


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

    _, kinds = gguf_export.read_gguf(str(tmp_path / name), MODEL)
    assert kinds["model.norm.weight"] == "float32"
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == gguf_type
    assert kinds["model.layers.0.mlp.down_proj.weight"] == "f16"  # in an F16 file, and as the Q8_0 fallback

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
