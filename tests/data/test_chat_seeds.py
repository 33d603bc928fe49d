"""Chat as the seeds did it, on byte-level BPE tokenizers: an end of turn the vocabulary already has adds nothing
(KodaLite v0.2's `<|endoftext|>`), a multi-token one stays plain text and is stopped at as a text (KodaLite v0.1's
`<|end|>`: prepare → SFT → `trainer.generate`, the harness → HF export with `stop_strings` that transformers stops at
→ card), the SmallCoder prompt, and streamed text that never shows half a character."""

import importlib.util
import io
import json
import os
import shutil
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bpe_tokenizers import EOT, gpt2_style, starcoder_style
from runs import MICRO, train, write_config

from trainer import checkpoint
from trainer.config import from_dict
from trainer.data import chat
from trainer.data import tokenizer as tokenizer_lib
from trainer.data.chat_prepare import prepare_chat
from trainer.data.shards import decode_chat_record, read_manifest
from trainer.infer.stop import RowText
from trainer.model.transformer import Transformer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4 😀."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "Six."},
]
NAMES = [a + b + "n" for a in "BDKLMNRST" for b in "aeiou"][:32]  # Ban, Ben, ...: 32 users to greet
REPLY = "Hello there!"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    return {"gpt2": gpt2_style(str(root / "gpt2")), "starcoder": starcoder_style(str(root / "starcoder"))}


def _records(folder):
    """Every (ids, mask) the prepared folder holds, from its shards."""
    manifest = read_manifest(folder)
    out = []
    for split in ("train", "val"):
        paths = manifest.shard_paths(split)
        if paths:
            source = grain.sources.ArrayRecordDataSource(paths)
            out += [decode_chat_record(source[i], manifest.dtype) for i in range(len(source))]
    return out


def _masked_runs(ids, mask):
    runs, current = [], []
    for token, m in zip(list(ids), list(mask)):
        if m:
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("kind", ["gpt2", "starcoder"])
def test_an_end_of_turn_the_vocabulary_has_adds_nothing(tokenizers, tmp_path, kind):
    out = str(tmp_path / "chat")
    manifest = prepare_chat(
        out=out,
        corpus="stdlib_qa",
        limit=24,
        template="kodalite",
        end_of_turn=EOT,
        tokenizer=tokenizers[kind],
        val_fraction=0.2,
        verbose=False,
    )
    base = tokenizer_lib.open_tokenizer(tokenizers[kind])
    tok = tokenizer_lib.load_tokenizer(out)
    eot = base.encode_with_offsets(EOT)[0][0]
    assert manifest.tokenizer["vocab_size"] == tok.vocab_size == base.vocab_size == 512  # no new embedding row
    assert tok.sha256 == base.sha256 and tok.end_of_turn_id == eot == {"gpt2": 511, "starcoder": 0}[kind]
    assert tok.stop_strings == () and manifest.chat["stop_strings"] == []
    records = _records(out)
    assert len(records) == 24
    for ids, mask in records:
        runs = _masked_runs(ids, mask)
        assert runs and all(r[-1] == eot and r.count(eot) == 1 for r in runs)  # each reply ends at that id
        assert tok.decode(runs[0]).endswith("\n" + EOT) and tok.decode(list(ids)).startswith("<|user|>\n")


def test_a_multi_token_end_of_turn_is_plain_text_unless_asked_special(tokenizers):
    tok = tokenizer_lib.open_tokenizer(tokenizers["gpt2"])
    jinja = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ '[done]' }}{% endif %}{{ '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )
    plain = chat.resolve_template(jinja, "[done]")
    assert chat.missing_tokens(plain, tok) == [] and chat.end_of_turn_id(plain, tok) is None
    assert chat.chat_config(plain, tok)["stop_strings"] == ["[done]"]
    ids, mask = chat.encode(plain, CONVERSATION, tok)
    assert [tok.decode(r) for r in _masked_runs(ids, mask)] == [" It is 4 😀.[done]", " Six.[done]"]
    special = chat.resolve_template(jinja, "[done]", markers="special")
    grown = tok.with_tokens(chat.missing_tokens(special, tok))
    assert grown.vocab_size == 513 and chat.stop_strings(special, grown) == ()
    assert chat.end_of_turn_id(special, grown) == 512
    # kodalite's four markers as special ids: the embedding would grow by four rows
    kodalite = chat.resolve_template("kodalite", markers="special")
    assert tok.with_tokens(chat.missing_tokens(kodalite, tok)).vocab_size == 516
    with pytest.raises(chat.DataError, match="not one"):  # a marker declared special must be one id
        chat.end_of_turn_id(special, tok)


def test_smallcoder_prompts_user_assistant_and_ends_replies_with_eos(tokenizers):
    tok = tokenizer_lib.open_tokenizer(tokenizers["starcoder"])
    spec = chat.resolve_template("smallcoder")
    eos = tok.token_text(tok.eos_id)
    prompt = chat.render(
        spec, [{"role": "user", "content": "Write hello world in Python."}], add_generation_prompt=True, eos_token=eos
    )
    assert prompt == "User: Write hello world in Python.\nAssistant:"
    assert chat.render(spec, CONVERSATION[1:3], eos_token=eos) == f"User: What is 2 + 2?\nAssistant: It is 4 😀.{eos}"
    ids, mask = chat.encode(spec, CONVERSATION, tok)
    runs = _masked_runs(ids, mask)
    assert [tok.decode(r) for r in runs] == [f" It is 4 😀.{eos}", f" Six.{eos}"]  # the space after "Assistant:"
    assert all(r[-1] == tok.eos_id == 0 for r in runs) and chat.stop_strings(spec, tok) == ()
    assert tok.decode(list(ids)) == chat.render(spec, CONVERSATION, eos_token=eos)


@pytest.mark.parametrize("kind", ["gpt2", "starcoder"])
def test_streamed_text_never_shows_half_a_character(tokenizers, kind):
    tok = tokenizer_lib.open_tokenizer(tokenizers[kind])
    text = "emoji 😀👍🏽 and 🇫🇷 flags, Größe 東京\n"
    context = tok.encode("Say: ")
    ids = tok.encode(text + "<|end|> and more")
    assert any("\ufffd" in tok.decode(ids[:n]) for n in range(len(ids)))  # partial decodes do cut characters
    row = RowText(tok.decode, context[-4:], ("<|end|>",))
    chunks = [row.update(ids[:n], finished=n == len(ids)) for n in range(1, len(ids) + 1)]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == row.text == text and row.stop_at is not None


def _greeting(name):
    return [{"role": "user", "content": f"Greet {name}, please."}, {"role": "assistant", "content": REPLY}]


@pytest.fixture(scope="module")
def kodalite_sft(tokenizers, tmp_path_factory):
    """KodaLite v0.1 on a GPT-2-style vocabulary: a base run (random params + the tokenizer), conversations in the
    kodalite format with its plain-text markers, and a short full SFT from the base."""
    root = tmp_path_factory.mktemp("kodalite")
    model = dict(MICRO["model"], scan_layers=True, max_seq_len=128)  # room for a second turn in --chat
    base = str(root / "base")
    params = Transformer(from_dict({"model": model}).model).init(jax.random.key(5), jnp.zeros((1, 8), jnp.int32))
    params = jax.tree.map(
        lambda x: np.asarray(x.unbox() if hasattr(x, "unbox") else x),
        params["params"],
        is_leaf=lambda x: hasattr(x, "unbox"),
    )
    checkpoint.save_params(base, from_dict({"model": model}), params, step=1)
    shutil.copytree(tokenizers["gpt2"], os.path.join(base, "tokenizer"))
    source = root / "greetings.jsonl"
    conversations = [_greeting(n) + _greeting(m) for n, m in zip(NAMES, NAMES[1:] + NAMES[:1])]  # two exchanges
    source.write_text("\n".join(json.dumps({"messages": c}) for c in conversations))
    data = str(root / "chat")
    prepare_chat(
        [str(source)],
        data,
        template="kodalite",
        tokenizer=os.path.join(base, "tokenizer"),
        val_fraction=0.25,
        verbose=False,
    )  # by a hash of file:line: both splits non-empty (1 - 1e-4)
    run = str(root / "sft")
    config = write_config(
        str(root / "sft.yml"),
        data,
        run,
        model=model,
        data={"path": data, "chat_template": "kodalite"},
        checkpoint={"every_steps": 40, "restore_from": base},
        eval={"every_steps": 40},
        train={"steps": 40, "global_batch_size": 8, "seq_len": 64},
        optimizer={"learning_rate": 1e-2, "warmup_steps": 4},
        log={"every_steps": 10, "sample_tokens": 16, "sample_prompt": "Greet Zed, please."},
    )
    return data, run, train(config)


def test_kodalite_v01_stops_at_its_plain_text_marker_everywhere(kodalite_sft, tmp_path, capsys, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.export import command as convert_to_hf
    from trainer.infer import cli

    data, run, log = kodalite_sft
    tok = tokenizer_lib.load_tokenizer(data)
    assert tok.vocab_size == 512 and tok.stop_strings == ("<|end|>",)  # five BPE tokens, nothing added
    assert len(tok.encode("<|end|>")) > 1
    text = tok.render_chat([{"role": "user", "content": "Greet Ban, please."}]) + REPLY + "\n<|end|>"
    assert text == f"<|user|>\nGreet Ban, please.\n<|assistant|>\n{REPLY}\n<|end|>"  # the card's format exactly
    ids, mask = _records(data)[0]
    assert tok.decode(_masked_runs(ids, mask)[0]) == f"{REPLY}\n<|end|>"  # the marker's tokens are trained on
    sample = log.split("sample (greedy):\n", 1)[1]
    assert "<|end|>" not in sample  # the end-of-run sample stops at it too

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Greet Zed, please.\nGreet Ben, please.\n"))
    assert cli.main(["--checkpoint", run, "--chat", "--output", "json", "--max-new-tokens", "24"]) == 0
    reply, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert reply["finish_reason"] == "stop" and "<|end|>" not in reply["text"]
    assert tok.decode(reply["tokens"]).endswith("<|end|>")  # the model wrote the marker; the text stops before it
    assert reply["text"] == f"{REPLY}\n"  # learned within the budget
    # the second turn is rendered after the first reply (checked below); what the tiny model answers there varies with
    # the machine's float rounding, but its text never holds the marker: cut at the stop string wherever it appears
    assert "<|end|>" not in second["text"] and second["finish_reason"] in ("stop", "length")
    # the history holds the reply as its content: rendered again, it is the text the model wrote, once
    history = [
        {"role": "user", "content": "Greet Zed, please."},
        {"role": "assistant", "content": chat.reply_content(tok.chat, reply["text"])},
    ]
    assert history[1]["content"] == REPLY
    assert tok.render_chat(history + [{"role": "user", "content": "Hi"}]).startswith(
        tok.render_chat(history[:1]) + tok.decode(reply["tokens"]) + "\n<|user|>\nHi\n"
    )

    prompt = tok.render_chat(history[:1])  # streamed as plain text: shown up to the marker, never a piece of it
    assert cli.main(["--checkpoint", run, "--prompt", prompt, "--max-new-tokens", "24"]) == 0
    assert capsys.readouterr().out == f"{prompt}{REPLY}\n\n"

    if importlib.util.find_spec("lm_eval") is not None:  # the harness's generate_until stops at it (eval extra)
        from lm_eval.api.instance import Instance

        from trainer.eval.harness import TrainerLM

        request = Instance("generate_until", {}, (prompt, {"max_gen_toks": 24}), 0)
        assert TrainerLM(checkpoint=run, batch_size=1).generate_until([request]) == [f"{REPLY}\n"]

    export = str(tmp_path / "hf")
    assert convert_to_hf.main(["--checkpoint", run, "--out", export]) == 0
    with open(os.path.join(export, "generation_config.json")) as f:
        assert json.load(f)["stop_strings"] == ["<|end|>"]
    hf_tok = AutoTokenizer.from_pretrained(export, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(export, local_files_only=True, dtype=torch.float32)
    hf_prompt = hf_tok.apply_chat_template(history[:1], tokenize=False, add_generation_prompt=True)
    assert hf_prompt == prompt
    inputs = hf_tok(hf_prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False, tokenizer=hf_tok)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert new == reply["tokens"] and len(new) < 24  # stopped at the marker, on the same tokens
    assert hf_tok.decode(new).endswith("<|end|>")
    with open(os.path.join(export, "README.md")) as f:
        card = f.read()
    assert "Stop strings: `<|end|>`" in card and "tokenizer=tokenizer" in card
    gguf = str(tmp_path / "gguf")  # GGUF has no stop-string key: the Ollama Modelfile beside it names the marker
    assert convert_to_hf.main(["--checkpoint", run, "--out", gguf, "--format", "gguf", "--no-verify"]) == 0
    with open(os.path.join(gguf, "Modelfile")) as f:
        assert 'PARAMETER stop "<|end|>"' in f.read().split("\n")
