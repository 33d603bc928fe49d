"""The seeds' byte-level BPE tokenizers through the whole chain, as a user runs it: prepare → train → SFT with
`--end-of-turn '<|endoftext|>'` (the KodaLite card's v0.2 lesson) → every export, each proven in its own runtime.

For a GPT-2-style and a StarCoder-style tokenizer (tests/support/bpe_tokenizers.py, built offline): in transformers,
llama.cpp (GGUF f16 and q4_k_m), mlx-lm and the tokenizer shipped with the ONNX decoder, the ids of tricky strings
(digits, contractions, unicode, emoji, runs of spaces, tabs, CRLF, code, the literal text `<|endoftext|>` in a message)
equal training's, and greedy tokens equal transformers' where the weights are 16 or 32 bits. The chat data's end of
turn is the vocabulary's own `<|endoftext|>`: the SFT run keeps the base's 512 ids and every export stops at
that one id.
"""

import json
import os

import numpy as np
import pytest
from bpe_tokenizers import BUILDERS, EOT, TRICKY
from hf_models import greedy_hf
from runs import MICRO, train, write_config
from sp_tokenizers import held_out_strings

from trainer.data.chat_prepare import prepare_chat
from trainer.data.text_prepare import prepare
from trainer.data.tokenizer import load_tokenizer
from trainer.export import command as convert_to_hf
from trainer.export import parity

STRINGS = TRICKY + held_out_strings(60)[8:]
GREEDY = 12
MODEL = dict(MICRO["model"], vocab_size=512)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def sft_run(request, tmp_path_factory):
    """(style, tokenizer as training saw it, SFT run folder, chat data folder): a base trained on stdlib modules
    tokenized with the style's BPE, then fine-tuned on chat data whose turns end with `<|endoftext|>`."""
    root = tmp_path_factory.mktemp(f"bpe-{request.param}")
    folder = BUILDERS[request.param](str(root / "tokenizer"))
    data = str(root / "data")
    prepare(
        corpus="stdlib",
        out=data,
        tokenizer=folder,
        max_files=30,
        val_fraction=0.1,
        workers=1,
        progress=False,
        verbose=False,
    )
    base = str(root / "base")
    train(
        write_config(
            str(root / "base.yml"),
            data,
            base,
            model=MODEL,
            train={"steps": 6},
            eval={"every_steps": 6},
            checkpoint={"every_steps": 6},
        )
    )
    chat = str(root / "chat")
    prepare_chat(
        out=chat,
        corpus="stdlib_qa",
        limit=160,
        tokenizer=os.path.join(base, "tokenizer"),
        template="kodalite",
        end_of_turn=EOT,
        val_fraction=0.1,
        verbose=False,
    )
    sft = str(root / "sft")
    train(
        write_config(
            str(root / "sft.yml"),
            chat,
            sft,
            model=MODEL,
            data={"path": chat, "chat_template": "kodalite", "end_of_turn": EOT},
            train={"steps": 4},
            eval={"every_steps": 4},
            checkpoint={"every_steps": 4, "restore_from": base},
        )
    )
    return request.param, load_tokenizer(os.path.join(sft, "tokenizer")), sft, chat


def _export(run: str, out: str, *options: str) -> str:
    assert convert_to_hf.main(["--checkpoint", run, "--out", out, *options]) == 0
    return out


@pytest.fixture(scope="module")
def hf_export(sft_run, tmp_path_factory):
    """The HF folder of the SFT run (its own parity check passed) and transformers' greedy tokens after a prompt."""
    from transformers import AutoTokenizer

    style, tok, run, _ = sft_run
    out = _export(run, str(tmp_path_factory.mktemp(f"hf-{style}")))
    prompt = tok.encode(tok.render_chat([{"role": "user", "content": "What does os.path.join do?"}]))
    model = parity.load_hf_model(out)
    return (
        out,
        AutoTokenizer.from_pretrained(out, local_files_only=True),
        prompt,
        greedy_hf(model, np.array(prompt), GREEDY),
    )


def test_the_chat_data_keeps_the_vocabulary_and_ends_turns_with_its_own_token(sft_run, hf_export):
    _, tok, run, chat = sft_run
    assert tok.vocab_size == 512 and tok.eos_id == tok.encode(EOT)[0]
    with open(os.path.join(chat, "chat_template.json")) as f:
        assert json.load(f)["end_of_turn_id"] == tok.eos_id
    with open(os.path.join(hf_export[0], "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == tok.eos_id
    assert hf_export[1].eos_token_id == tok.eos_id and len(hf_export[1]) == 512
    with open(os.path.join(hf_export[0], "README.md")) as f:  # the card names the stop token as text
        assert f"Generation stops at `{EOT}` (id {tok.eos_id})" in f.read()


def test_transformers_tokenizes_like_training(sft_run, hf_export):
    _, tok, _, _ = sft_run
    exported = hf_export[1]
    assert [exported.encode(s, add_special_tokens=False) for s in STRINGS] == [tok.encode(s) for s in STRINGS]
    assert all(exported.decode(tok.encode(s)) == s for s in TRICKY)
    assert exported.encode("x = 1") == tok.encode("x = 1")  # the data had no BOS: none is added


@pytest.mark.parametrize("gguf_type", ["f16", "q4_k_m"])
def test_llama_cpp_tokenizes_like_training_and_decodes_greedily_like_transformers(
    gguf_type, sft_run, hf_export, tmp_path
):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the llama extra)")
    style, tok, run, _ = sft_run
    out = _export(run, str(tmp_path / "gguf"), "--format", "gguf", "--gguf-type", gguf_type)
    path = os.path.join(out, f"model-{gguf_type}.gguf")
    llm = llama_cpp.Llama(model_path=path, n_ctx=MODEL["max_seq_len"], n_threads=2, verbose=False)
    assert [llm.tokenize(s.encode(), add_bos=True, special=True) for s in STRINGS] == [tok.encode(s) for s in STRINGS]
    with open(os.path.join(out, "Modelfile")) as f:
        assert f"FROM ./model-{gguf_type}.gguf" in f.read()
    _, _, prompt, theirs = hf_export
    llm.reset()
    produced = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        produced.append(int(token))
        if len(produced) == GREEDY or token == tok.eos_id:
            break
    if gguf_type == "f16":
        assert produced == theirs[: len(produced)]
    else:
        print(f"{style} q4_k_m greedy tokens equal to transformers': {sum(a == b for a, b in zip(produced, theirs))}")


def test_mlx_lm_tokenizes_like_training_and_decodes_greedily_like_transformers(sft_run, hf_export, tmp_path):
    mlx_lm = pytest.importorskip("mlx_lm", reason="the mlx extra is not installed")
    from trainer.export import mlx

    _, tok, run, _ = sft_run
    out = _export(run, str(tmp_path / "mlx"), "--format", "mlx")
    model, wrapper = mlx_lm.load(out)
    assert [wrapper.encode(s, add_special_tokens=False) for s in STRINGS] == [tok.encode(s) for s in STRINGS]
    assert tok.eos_id in wrapper.eos_token_ids
    _, _, prompt, theirs = hf_export
    assert mlx.greedy(model, prompt, GREEDY) == theirs


def test_the_onnx_decoders_tokenizer_and_greedy_tokens_are_trainings(sft_run, hf_export, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from tokenizers import Tokenizer

    from trainer.export import onnx as onnx_export

    _, tok, run, _ = sft_run
    out = _export(run, str(tmp_path / "onnx"), "--format", "onnx")
    shipped = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))  # what an onnxruntime caller loads
    assert [shipped.encode(s, add_special_tokens=False).ids for s in STRINGS] == [tok.encode(s) for s in STRINGS]
    _, _, prompt, theirs = hf_export
    assert onnx_export.greedy(onnx_export.session(out), prompt, GREEDY) == theirs
