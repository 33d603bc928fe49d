"""The run's tokenizer as a Hugging Face tokenizer folder, checked to encode exactly like the run's.

A SentencePiece model becomes a `LlamaTokenizerFast` (the recipe in docs/pitfalls.md: the model saved as
`tokenizer.model`, loaded with `from_pretrained`, no dummy prefix); an HF tokenizer folder is copied with two changes:
its config names `PreTrainedTokenizerFast` (transformers 5 rebuilds a `GPT2Tokenizer` from GPT-2's defaults and would
drop e.g. StarCoder's digit split; this class reads tokenizer.json as it is, as training did), and BOS is added exactly
when the run's documents began with it (trainer.data.bos). A chat template kept beside the tokenizer is passed through.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

from trainer import storage
from trainer.errors import ParityError

CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "chat_template")
SAMPLE_TEXTS = (
    "def main(argv: list[str]) -> int:\n    return 0\n",
    "  leading spaces, trailing spaces  ",
    "Größe, naïve café — 東京 😀",
    "\ttabs\tand\nnewlines\n\n",
    "x = {'a': [1, 2, 3.5e-7]}  # comment",
    "In 2024 we sold 1234567 units;    9: 'x64',\r\n",
    "I'm sure it's what they'd've done, isn't it?",
    "emoji 😀👍🏽 and 🇫🇷 flags",
)


def chat_template(source: str) -> str | None:
    """A chat template kept beside a SentencePiece tokenizer (`chat_template.jinja` / `.json` / `chat_template`)."""
    folder = source if storage.isdir(source) else os.path.dirname(source)
    for name in CHAT_TEMPLATE_FILES:
        path = storage.join(folder, name)
        if folder and storage.exists(path):
            text = storage.read_bytes(path).decode()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def write_tokenizer(tokenizer: Any, source: str, out: str, add_bos: bool) -> None:
    """The tokenizer as an HF folder in `out`: SentencePiece via LlamaTokenizerFast (docs/pitfalls.md), HF copied."""
    if tokenizer.kind == "hf":
        for name, data in hf_files(tokenizer, add_bos).items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        if tokenizer.chat is not None:  # the format fine-tuning used (transformers reads chat_template.jinja)
            with open(os.path.join(out, "chat_template.jinja"), "w") as f:
                f.write(tokenizer.chat["chat_template"])
        return
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    special = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id(), "pad_token": sp.pad_id()}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(tokenizer.model_proto)
        hf_tok = LlamaTokenizerFast.from_pretrained(
            tmp,
            local_files_only=True,
            add_bos_token=add_bos,
            add_prefix_space=False,
            **{key: sp.id_to_piece(i) for key, i in special.items() if i >= 0},
        )
    template = chat_template(source)
    if template is not None:
        hf_tok.chat_template = template
    hf_tok.save_pretrained(out)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:  # for SentencePiece users and llama.cpp's tools
        f.write(tokenizer.model_proto)


def hf_files(tokenizer: Any, add_bos: bool) -> dict[str, bytes]:
    """An HF tokenizer's files as exported: tokenizer_config.json names `PreTrainedTokenizerFast` (tokenizer.json read
    as it is), `add_bos_token` is the run's fact and no decode clean-up; tokenizer.json's post-processor adds BOS
    exactly then too (what transformers 4 and other readers of tokenizer.json apply)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import processors

    files = tokenizer.files()
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=bool(add_bos))
    config.setdefault("clean_up_tokenization_spaces", False)
    files["tokenizer_config.json"] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
    backend = Backend.from_str(files["tokenizer.json"].decode())
    bos_id = tokenizer.bos_id
    if bos_id is not None and (backend.encode("a", add_special_tokens=True).ids[:1] == [bos_id]) != add_bos:
        bos = tokenizer.token_text(bos_id)
        template = (
            dict(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)])
            if add_bos
            else dict(single="$A", pair="$A $B:1", special_tokens=[])
        )
        backend.post_processor = processors.TemplateProcessing(**template)
        files["tokenizer.json"] = backend.to_str().encode()
    return files


def check_tokenizer(tokenizer: Any, out: str) -> None:
    """The exported tokenizer must encode sample texts exactly like the run's (ParityError otherwise), and for a chat
    model `apply_chat_template` must give the fine-tuning format: the same text, the same ids."""
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(out, local_files_only=True)
    literal = f"a user typing {tokenizer.token_text(tokenizer.eos_id)} in a message"  # becomes the special id
    for text in (*SAMPLE_TEXTS, literal):
        ours, theirs = tokenizer.encode_with_offsets(text)[0], exported.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise ParityError(f"the exported tokenizer encodes {text!r} as {theirs[:12]}..., ours as {ours[:12]}...")
    wants = json.loads(pathlib.Path(out, "tokenizer_config.json").read_text()).get("add_bos_token")
    if wants is not None and tokenizer.bos_id is not None and (exported.encode("x")[:1] == [tokenizer.bos_id]) != wants:
        raise ParityError(
            f"transformers {'omits' if wants else 'adds'} BOS on the exported tokenizer; the run's "
            f"documents {'began' if wants else 'did not begin'} with it"
        )
    if tokenizer.chat is not None:
        check_chat_template(tokenizer, exported)


CHAT_SAMPLE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3 + 3?"},
]


def check_chat_template(tokenizer: Any, exported: Any) -> None:
    """HF's `apply_chat_template` on the exported tokenizer renders and tokenizes a conversation as training did."""
    conversation = CHAT_SAMPLE
    ours = tokenizer.render_chat(conversation)
    theirs = exported.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    if ours != theirs:
        raise ParityError(f"the exported chat template renders {theirs[-60:]!r}, training rendered {ours[-60:]!r}")
    ids = exported.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    if list(ids) != tokenizer.encode_with_offsets(ours)[0]:
        raise ParityError("the exported tokenizer tokenizes the rendered chat differently from training")
