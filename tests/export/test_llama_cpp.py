"""Every GGUF type we write, run by llama.cpp itself (llama-cpp-python): its logits, greedy tokens and tokenization
against ours.

Ours are computed on the weights as stored (dequantised from the file), so the comparison isolates llama.cpp's
arithmetic: it multiplies F16/BF16 weights with float16/bfloat16 activations and quantised weights with activations
quantised to 8 bits, hence a tolerance per type on max |Δlogit| / max |logit| (the product's own table,
trainer.export.gguf_llama_cpp.TOLERANCE; observed figures in docs/convert.md). F16/BF16 must give our 32 greedy
tokens exactly; quantised types must agree on the argmax at ≥ 90 % of 192 positions. K-quants are made by llama.cpp's
quantizer from an F16 file, on models whose widths are multiples of 256 (else llama.cpp falls back to other types).
The tokenizer metadata is checked too: llama.cpp tokenizes like our SentencePiece model and like byte-level BPEs of
GPT-2's, StarCoder's and LLaMA 3's kinds (the pre-tokenizer name derived from their rules), and, since the data had no
BOS, adds none. A Q4_K_M export of a model trained for 120 steps agrees with its F16 export's argmax.

llama-cpp-python compiles llama.cpp from source (~6 min on 2 cores): the test skips without it; CI installs it
when a GGUF-related file changed (.ci/run). `-m "not slow"` leaves it out.
"""

import dataclasses
import os

import gguf
import numpy as np
import pytest
from bpe_tokenizers import BUILDERS, EOT, TRICKY, save_folder, training_texts
from hf_models import greedy_ours, random_params
from runs import prepare_corpus, train, write_config
from sp_tokenizers import held_out_strings, sentencepiece
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from trainer.config import ModelConfig
from trainer.data.tokenizer import load_tokenizer
from trainer.export import command as convert_to_hf
from trainer.export import gguf as gguf_export
from trainer.export import gguf_vocab, mapping, parity
from trainer.export.gguf_llama_cpp import TOLERANCE, greedy, load, logits
from trainer.export.tokenizer import write_tokenizer

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the llama extra)")

pytestmark = pytest.mark.slow

MODEL = ModelConfig(
    vocab_size=512,
    embed_dim=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=256,
    max_seq_len=128,
    rope_theta=500000.0,
    compute_dtype="float32",
    remat_policy="none",
    tie_embeddings=False,
)
K_MODEL = dataclasses.replace(MODEL, embed_dim=256, mlp_dim=512)  # rows of 256: Q4_K/Q5_K/Q6_K blocks
PROMPT = [5, 17, 42, 99]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(sentencepiece(), str(folder), str(folder), add_bos=False)
    return str(folder)


@pytest.mark.parametrize("gguf_type", ["f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"])
def test_llama_cpp_runs_our_gguf(gguf_type, tokenizer_dir, tmp_path):
    model = K_MODEL if gguf_type.startswith(("q4_k", "q5_k", "q6_k")) else MODEL
    params = random_params(model)
    path = str(tmp_path / f"model-{gguf_type}.gguf")
    gguf_export.write_gguf(path, model, params, tokenizer_dir, sentencepiece(), gguf_type, add_bos=False)
    tensors, _ = gguf_export.read_gguf(path, model)
    stored = mapping.from_hf(tensors.__getitem__, model)  # the weights as llama.cpp reads them, in float32

    llm = load(path, model.max_seq_len)
    tokens = parity.sample_tokens(model.vocab_size, length=64)
    ours = parity.jax_logits(model, stored, tokens)
    theirs = np.stack([logits(llm, row.tolist()) for row in tokens])
    comparison = parity.compare(ours, theirs)
    agree = float(np.mean(np.argmax(ours, -1) == np.argmax(theirs, -1)))
    print(
        f"{gguf_type}: max |Δlogit| {comparison.relative:.2g} × scale {comparison.scale:.3g}, "
        f"argmax agreement {agree:.3f}"
    )
    assert comparison.relative <= TOLERANCE[gguf_type]

    produced = greedy(llm, PROMPT, 32)
    if gguf_type in ("f16", "bf16"):
        assert produced == greedy_ours(model, stored, np.array(PROMPT), 32)
    else:
        assert agree >= 0.9


@pytest.mark.parametrize("add_bos", [False, True])
def test_llama_cpp_tokenizes_like_sentencepiece_with_bos_as_the_data_had_it(add_bos, tokenizer_dir, tmp_path):
    path = str(tmp_path / "model.gguf")
    tok = sentencepiece()
    gguf_export.write_gguf(path, MODEL, random_params(MODEL), tokenizer_dir, tok, "q8_0", add_bos=add_bos)
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    strings = held_out_strings(200)
    bos = [tok.bos_id] if add_bos else []  # add_bos=True asks llama.cpp for BOS; the file's flag decides
    assert [llm.tokenize(s.encode(), add_bos=True) for s in strings] == [bos + tok.encode(s) for s in strings]


def llama_bpe_style(folder: str, vocab_size: int = 512) -> str:
    """A LLaMA-3-style byte-level BPE: its Split regex, then bytes without a regex, whole-word matches first."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(gguf_vocab.LLAMA3_REGEX), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        training_texts(),
        trainers.BpeTrainer(
            vocab_size=vocab_size - 1, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.add_special_tokens([EOT])
    return save_folder(tok, folder, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT})


@pytest.mark.parametrize("style, pre", [("gpt2", "gpt-2"), ("starcoder", "starcoder"), ("llama3", "llama-bpe")])
def test_llama_cpp_tokenizes_byte_level_bpe_like_training_and_decodes_greedily_like_us(style, pre, tmp_path):
    source = str(tmp_path / "source")
    (llama_bpe_style if style == "llama3" else BUILDERS[style])(source)
    tok = load_tokenizer(source)
    folder = tmp_path / "export"
    folder.mkdir()
    write_tokenizer(tok, source, str(folder), add_bos=False)
    path = str(tmp_path / "model-f16.gguf")
    params = random_params(MODEL)
    gguf_export.write_gguf(path, MODEL, params, str(folder), tok, "f16", add_bos=False)
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == pre

    llm = load(path, MODEL.max_seq_len)  # llama.cpp knows the name: it would refuse an unknown one
    strings = TRICKY + ["values = [\n    1,\n    22,\n]\n"] + held_out_strings(200)
    # special=True: the literal text <|endoftext|> becomes its id, as in training (tokenizers' added tokens)
    assert [llm.tokenize(s.encode(), add_bos=True, special=True) for s in strings] == [tok.encode(s) for s in strings]
    prompt = tok.encode("def main(argv):\n    return 0\n")
    tensors, _ = gguf_export.read_gguf(path, MODEL)
    stored = mapping.from_hf(tensors.__getitem__, MODEL)
    assert greedy(llm, prompt, 16) == greedy_ours(MODEL, stored, np.array(prompt), 16)
    llm.close()


def test_q4_k_m_of_a_trained_model_is_llama_cpps_mix_and_agrees_with_f16(tmp_path):
    data = prepare_corpus(str(tmp_path / "data"))
    run = str(tmp_path / "run")
    model = {"embed_dim": 256, "mlp_dim": 512, "num_heads": 4, "num_kv_heads": 2, "max_seq_len": 128}
    train(
        write_config(
            str(tmp_path / "c.yml"),
            data,
            run,
            model=model,
            train={"steps": 120},
            optimizer={"learning_rate": 3e-3, "warmup_steps": 10},
            eval={"every_steps": 120},
            checkpoint={"every_steps": 120},
            log={"every_steps": 20, "sample_tokens": 0},
        )
    )
    files = {}
    for gguf_type in ("f16", "q4_k_m"):  # each export runs its own check in llama.cpp
        out = str(tmp_path / gguf_type)
        assert (
            convert_to_hf.main(["--checkpoint", run, "--out", out, "--format", "gguf", "--gguf-type", gguf_type]) == 0
        )
        files[gguf_type] = os.path.join(out, f"model-{gguf_type}.gguf")
    reader = gguf.GGUFReader(files["q4_k_m"])
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    matrices = {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert set(matrices.values()) == {"Q4_K", "Q6_K"}, matrices  # Q6_K: output and some attn_v / ffn_down

    tok = load_tokenizer(data)
    held_out = tok.encode("".join(held_out_strings(400)[8:]))[:65]
    argmax = {t: logits(load(path, 128), held_out[:-1]).argmax(-1) for t, path in files.items()}
    agree = float(np.mean(argmax["q4_k_m"] == argmax["f16"]))
    sizes = {t: os.path.getsize(path) for t, path in files.items()}
    distinct = len(set(argmax["f16"].tolist()))
    print(
        f"q4_k_m vs f16 argmax agreement {agree:.3f} on 64 held-out positions ({distinct} distinct tokens); "
        f"sizes {sizes}"
    )
    assert agree >= 0.8 and distinct >= 5  # a model predicting a few frequent tokens everywhere agrees trivially
