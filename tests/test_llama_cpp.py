"""Every GGUF type we write, run by llama.cpp itself (llama-cpp-python): its logits and greedy tokens against ours.

Ours are computed on the weights as stored (dequantised from the file), so the comparison isolates llama.cpp's
arithmetic: it multiplies F16/BF16 weights with float16/bfloat16 activations and Q8_0/Q4_0 weights with activations
quantised to 8 bits, hence a tolerance per type on max |Δlogit| / max |logit| (observed figures in docs/convert.md).
F16/BF16 must give our 32 greedy tokens exactly; Q8_0/Q4_0 must agree on the argmax at ≥ 90 % of 192 positions.
The tokenizer metadata is checked too: llama.cpp tokenizes like our SentencePiece model and, since the data had no
BOS, adds none (`tokenizer.ggml.add_bos_token`).

llama-cpp-python compiles llama.cpp from source (~6 min on 2 cores): the test skips without it; CI installs it
when the GGUF writer changed (.ci/run). `-m "not slow"` leaves it out.
"""

import numpy as np
import pytest
from test_convert_mapping import greedy_ours, random_params
from test_convert_tokenizer import held_out_strings, sentencepiece

from trainer.config import ModelConfig
from trainer.export import gguf as gguf_export
from trainer.export import mapping, parity
from trainer.export.tokenizer import write_tokenizer

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the llama extra)")

pytestmark = pytest.mark.slow

MODEL = ModelConfig(vocab_size=512, embed_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=256,
                    max_seq_len=128, rope_theta=500000.0, compute_dtype="float32", remat_policy="none",
                    tie_embeddings=False)
# measured: f16 5.7e-4, bf16 3.3e-3, q8_0 1.3e-2, q4_0 1.2e-2 (argmax agreement 1.0, 0.995, 0.964, 0.964)
TOLERANCE = {"f16": 5e-3, "bf16": 3e-2, "q8_0": 3e-2, "q4_0": 5e-2}
PROMPT = [5, 17, 42, 99]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(sentencepiece(), str(folder), str(folder), add_bos=False)
    return str(folder)


def load(path: str) -> "llama_cpp.Llama":
    return llama_cpp.Llama(model_path=path, n_ctx=MODEL.max_seq_len, logits_all=True, n_threads=2, verbose=False)


def llama_logits(llm: "llama_cpp.Llama", tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], np.float32)


def llama_greedy(llm: "llama_cpp.Llama", prompt: list[int], steps: int) -> list[int]:
    llm.reset()
    out = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == steps:
            break
    return out


@pytest.mark.parametrize("gguf_type", ["f16", "bf16", "q8_0", "q4_0"])
def test_llama_cpp_runs_our_gguf(gguf_type, tokenizer_dir, tmp_path):
    params = random_params(MODEL)
    path = str(tmp_path / f"model-{gguf_type}.gguf")
    gguf_export.write_gguf(path, MODEL, params, tokenizer_dir, sentencepiece(), gguf_type, add_bos=False)
    tensors, _ = gguf_export.read_gguf(path, MODEL)
    stored = mapping.from_hf(tensors.__getitem__, MODEL)  # the weights as llama.cpp reads them, in float32

    llm = load(path)
    tokens = parity.sample_tokens(MODEL.vocab_size, length=64)
    ours = parity.jax_logits(MODEL, stored, tokens)
    theirs = np.stack([llama_logits(llm, row.tolist()) for row in tokens])
    comparison = parity.compare(ours, theirs)
    agree = float(np.mean(np.argmax(ours, -1) == np.argmax(theirs, -1)))
    print(f"{gguf_type}: max |Δlogit| {comparison.relative:.2g} × scale {comparison.scale:.3g}, "
          f"argmax agreement {agree:.3f}")
    assert comparison.relative <= TOLERANCE[gguf_type]

    produced = llama_greedy(llm, PROMPT, 32)
    if gguf_type in ("f16", "bf16"):
        assert produced == greedy_ours(MODEL, stored, np.array(PROMPT), 32)
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
