"""The run's tokenizer as a Hugging Face tokenizer folder, checked to encode exactly like the run's.

A SentencePiece model becomes a `LlamaTokenizerFast` (the recipe in docs/pitfalls.md: the model saved as
`tokenizer.model`, loaded with `from_pretrained`, no dummy prefix); an HF tokenizer folder is copied as is; a chat
template kept beside the tokenizer is passed through.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from trainer import storage
from trainer.config import Config
from trainer.errors import ConversionError, ParityError

CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "chat_template")
SAMPLE_TEXTS = (
    "def main(argv: list[str]) -> int:\n    return 0\n",
    "  leading spaces, trailing spaces  ",
    "Größe, naïve café — 東京 😀",
    "\ttabs\tand\nnewlines\n\n",
    "x = {'a': [1, 2, 3.5e-7]}  # comment",
)



def find_tokenizer(run_dir: str, config: Config, override: str | None) -> tuple[Any, str]:
    """The run's tokenizer and the folder/file it came from: --tokenizer, else RUN_DIR/tokenizer, else data.path."""
    from trainer.data.tokenizer import load_tokenizer

    if override:
        return load_tokenizer(override), override
    candidates = [storage.join(run_dir, "tokenizer")]
    if config.data.path and not storage.is_remote(config.data.path):
        candidates.append(config.data.path)
    for path in candidates:
        if storage.exists(path):
            return load_tokenizer(path), path
    raise ConversionError(f"no tokenizer in {candidates[0]}" + (f" nor at data.path {config.data.path}"
                          if config.data.path else "") + ": pass --tokenizer PATH (SentencePiece .model or HF folder)")


def chat_template(source: str) -> str | None:
    """A chat template kept beside a SentencePiece tokenizer (`chat_template.jinja` / `.json` / `chat_template`)."""
    folder = source if storage.isdir(source) else os.path.dirname(source)
    for name in CHAT_TEMPLATE_FILES:
        path = storage.join(folder, name)
        if folder and storage.exists(path):
            text = storage.read_bytes(path).decode()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def data_adds_bos(config: Config) -> bool:
    """Whether training documents started with BOS (the data manifest's `bos`); True when unknown (docs/pitfalls.md)."""
    path = config.data.path
    if path and not storage.is_remote(path) and os.path.exists(os.path.join(path, "manifest.json")):
        with open(os.path.join(path, "manifest.json")) as f:
            return bool(json.load(f).get("bos", True))
    return True


def write_tokenizer(tokenizer: Any, source: str, out: str, add_bos: bool) -> None:
    """The tokenizer as an HF folder in `out`: SentencePiece via LlamaTokenizerFast (docs/pitfalls.md), HF copied."""
    if tokenizer.kind == "hf":
        for name, data in tokenizer.files().items():
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
            tmp, local_files_only=True, add_bos_token=add_bos, add_prefix_space=False,
            **{key: sp.id_to_piece(i) for key, i in special.items() if i >= 0},
        )
    template = chat_template(source)
    if template is not None:
        hf_tok.chat_template = template
    hf_tok.save_pretrained(out)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:  # for SentencePiece users and llama.cpp's tools
        f.write(tokenizer.model_proto)


def check_tokenizer(tokenizer: Any, out: str) -> None:
    """The exported tokenizer must encode sample texts exactly like the run's (ParityError otherwise), and for a chat
    model `apply_chat_template` must give the fine-tuning format: the same text, the same ids."""
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(out, local_files_only=True)
    for text in SAMPLE_TEXTS:
        ours, theirs = tokenizer.encode(text), exported.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise ParityError(f"the exported tokenizer encodes {text!r} as {theirs[:12]}..., "
                                     f"ours as {ours[:12]}...")
    if tokenizer.chat is not None:
        check_chat_template(tokenizer, exported)


CHAT_SAMPLE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
               {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3 + 3?"}]


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
