"""A Hugging Face tokenizer folder loaded with the `tokenizers` library alone (no transformers): byte-level BPE
(GPT-2, StarCoder), SentencePiece-derived LLaMA tokenizers and anything else a `tokenizer.json` describes.

What a folder means, without transformers:
- **Ids** are what `tokenizer.json` gives (`tokenizers.Tokenizer.encode(text, add_special_tokens=False)`): the
  pipeline the released model was trained with. transformers 5 rebuilds some classes from their own defaults (a folder
  naming `GPT2Tokenizer` gets GPT-2's plain byte-level pre-tokenizer, dropping e.g. StarCoder's digit split); the HF
  export names `PreTrainedTokenizerFast` so transformers reads `tokenizer.json` as it is (trainer.export.tokenizer).
- **Special tokens** come from `tokenizer_config.json`, then `special_tokens_map.json` (a value is a string or a
  {"content": ...} dict); a named token missing from the vocabulary is added as a special token, as transformers does.
  When neither file names a BOS nor an EOS (GPT-2's config holds only `model_max_length`) and `tokenizer.json` has
  exactly one special added token, that token is BOS, EOS and padding (`<|endoftext|>`); the saved config then names it.
- **Literal special-token text** inside ordinary text (a user typing `<|endoftext|>`) becomes the special id, as in
  transformers by default: training data, prompts and every export agree on it.
- **Offsets** are character offsets into the Python string, untrimmed: a token of spaces or newlines keeps its span
  (a post-processor's `trim_offsets` would leave it empty, and a chat loss mask would drop it).

A folder with no tokenizer.json (vocab.json + merges.txt, or tokenizer.model only) is converted once with transformers
when it is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any

from trainer import storage
from trainer.data import DataError
from trainer.data import chat as chat_lib
from trainer.data.tokenizer_base import HF_FOLDER, Tokenizer
from trainer.errors import first_line

TOKENIZER_JSON = "tokenizer.json"
CONFIG_JSON = "tokenizer_config.json"
SPECIAL_MAP_JSON = "special_tokens_map.json"
CHAT_JINJA = "chat_template.jinja"
HF_CHAT_JSON = "chat_template.json"  # transformers' {"chat_template": ...}; trainer.data.chat's own has end_of_turn_id
# The files a tokenizer is made of (what `files()` keeps); a model folder's weights are never read.
KEPT_FILES = (TOKENIZER_JSON, CONFIG_JSON, SPECIAL_MAP_JSON, CHAT_JINJA, HF_CHAT_JSON)
# What transformers can build a tokenizer.json from.
CONVERTIBLE_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "vocab.txt")
# The named special tokens in transformers' order (it adds the missing ones in this order).
NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer held as its files (tokenizer.json, tokenizer_config.json, ...), encoded with the
    `tokenizers` library; loads the same from disk, from GCS or from bytes sent to a worker process."""

    kind = "hf"

    def __init__(self, files: dict[str, bytes], where: str = "the tokenizer folder"):
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend

        if TOKENIZER_JSON not in files:
            raise DataError(f"{where} has no {TOKENIZER_JSON}")
        original = _json(files, CONFIG_JSON, where) or {}
        special_map = _json(files, SPECIAL_MAP_JSON, where) or {}
        try:
            backend = Backend.from_str(files[TOKENIZER_JSON].decode())
        except Exception as e:  # the Rust side raises a bare Exception for a file it can't parse
            raise DataError(
                f"{where}/{TOKENIZER_JSON} is not a tokenizer the tokenizers library reads: {first_line(e)}"
            ) from None
        named, config = _named_tokens(original, special_map, _json(files, TOKENIZER_JSON, where))
        missing = [t for t in _listed_tokens(config, special_map, named) if backend.token_to_id(t) is None]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self._files = {name: files[name] for name in KEPT_FILES if name in files and _kept(name, files[name])}
        if missing:
            self._files[TOKENIZER_JSON] = backend.to_str().encode()
        if config != original:
            self._files[CONFIG_JSON] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
        self._config = config
        self._backend = backend  # as the file says, post-processor included (what adds_bos reads)
        self._plain = Backend.from_str(backend.to_str())
        self._plain.post_processor = None  # add_special_tokens=False anyway; and no trimming of offsets
        self._plain.no_truncation()  # a file's truncation/padding settings are for batching model inputs, as in
        self._plain.no_padding()  # transformers, never for encoding documents
        vocab = backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        ids = {key: (None if token is None else backend.token_to_id(token)) for key, token in named.items()}
        if ids["eos_token"] is None:
            raise DataError(
                f"the Hugging Face tokenizer in {where} has no eos token; every document needs one "
                "(name it as eos_token in tokenizer_config.json)"
            )
        self.bos_id = ids["bos_token"]
        self.eos_id = ids["eos_token"]
        self.pad_id = ids["pad_token"] if ids["pad_token"] is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._plain.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self._plain.id_to_token(int(token_id))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self._plain.encode(text, add_special_tokens=False)
        return encoding.ids, [tuple(o) for o in encoding.offsets]

    def with_tokens(self, tokens: list[str]) -> HFTokenizer:
        """Add `tokens` as special tokens (never split, never normalized) after the existing ids; a token the
        vocabulary already holds keeps its id."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_str(self._backend.to_str())
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        files = dict(self._files)
        files[TOKENIZER_JSON] = backend.to_str().encode()
        return HFTokenizer(files)

    @property
    def adds_bos(self) -> bool:
        """Whether this tokenizer puts BOS first when asked to add special tokens (transformers' `encode(text)`):
        `add_bos_token` in tokenizer_config.json when present, else what tokenizer.json's post-processor does."""
        if self.bos_id is None:
            return False
        if "add_bos_token" in self._config:
            return bool(self._config["add_bos_token"])
        return self._backend.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]

    def chat_template(self) -> str | None:
        """The folder's own chat template (tokenizer_config.json, chat_template.jinja or transformers'
        chat_template.json), the default one of several; None without one."""
        template = self._config.get("chat_template")
        if template is None and CHAT_JINJA in self._files:
            template = self._files[CHAT_JINJA].decode()
        if template is None and HF_CHAT_JSON in self._files:
            template = json.loads(self._files[HF_CHAT_JSON]).get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]
            by_name = {t.get("name"): t.get("template") for t in template}
            template = by_name.get("default", next(iter(by_name.values()), None))
        return template or None

    def render_chat(self, messages: list[dict[str, str]]) -> str | None:
        """The trained chat format when there is one, else the folder's own template, rendered in trainer.data.chat's
        Jinja environment (the one transformers' `apply_chat_template` uses)."""
        if self.chat is not None:
            return super().render_chat(messages)
        template = self.chat_template()
        if template is None:
            return None
        return chat_lib.render(
            chat_lib.ChatTemplate(name="tokenizer", jinja=template, end_of_turn=None),
            messages,
            add_generation_prompt=True,
            bos_token="" if self.bos_id is None else self.token_text(self.bos_id),
            eos_token=self.token_text(self.eos_id),
        )

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for name, data in sorted(self._files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()

    def save(self, folder: str) -> str:
        for name, data in self._files.items():
            storage.write_bytes_atomic(storage.join(folder, HF_FOLDER, name), data)
        return HF_FOLDER

    def files(self) -> dict[str, bytes]:
        """The saved tokenizer files by name (what `save` writes), e.g. to rebuild it in a worker process."""
        return dict(self._files)


def read_hf_folder(path: str) -> HFTokenizer:
    """The HF tokenizer in folder `path` (local or gs://): its tokenizer.json with the `tokenizers` library; a folder
    without one is converted with transformers when installed, else refused in one line saying how."""
    names = set(storage.listdir(path))
    files = {
        name: storage.read_bytes(storage.join(path, name))
        for name in names & set(KEPT_FILES + CONVERTIBLE_FILES)
        if not storage.isdir(storage.join(path, name))
    }
    if TOKENIZER_JSON not in files:
        files = _converted(files, path)
    return HFTokenizer(files, path)


def _converted(files: dict[str, bytes], path: str) -> dict[str, bytes]:
    """The files transformers saves for a folder without tokenizer.json (vocab.json + merges.txt, tokenizer.model)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"{path} has no {TOKENIZER_JSON}: convert it once where transformers is installed "
            "(AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)), or pip install transformers"
        ) from None
    with tempfile.TemporaryDirectory() as source, tempfile.TemporaryDirectory() as out:
        for name, data in files.items():
            with open(os.path.join(source, name), "wb") as f:
                f.write(data)
        try:
            AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(out)
        except Exception as e:  # transformers raises many types for a folder that is not a tokenizer
            raise DataError(f"cannot load a Hugging Face tokenizer from {path}: {first_line(e)}") from None
        saved = {name: pathlib.Path(out, name).read_bytes() for name in os.listdir(out)}
    if TOKENIZER_JSON not in saved:
        raise DataError(f"transformers wrote no {TOKENIZER_JSON} for {path}: this tokenizer has no fast version")
    return saved


def _json(files: dict[str, bytes], name: str, where: str) -> Any:
    if name not in files:
        return None
    try:
        return json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{where}/{name} is not valid JSON ({e}): re-save the tokenizer folder") from None


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _named_tokens(config: dict, special_map: dict, spec: dict) -> tuple[dict[str, str | None], dict]:
    """bos/eos/unk/... as the config files name them, and the config to save: when neither names a BOS nor an EOS
    (GPT-2's holds only model_max_length) and tokenizer.json has exactly one special token, it is BOS and EOS, and the
    saved config says so (transformers then reads the same)."""
    named = {key: _content(config[key] if key in config else special_map.get(key)) for key in NAMED}
    if named["bos_token"] is None and named["eos_token"] is None and not {"bos_token", "eos_token"} & set(config):
        only = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
        if len(only) == 1:  # GPT-2: <|endoftext|> is BOS, EOS and (as the EOS) padding
            named["bos_token"] = named["eos_token"] = only[0]
            config = {**config, "bos_token": only[0], "eos_token": only[0]}
    return named, config


def _listed_tokens(config: dict, special_map: dict, named: dict[str, str | None]) -> list[str]:
    """Every special token the config files list, in the order transformers adds the missing ones."""
    decoder = config.get("added_tokens_decoder") or {}
    listed = [_content(decoder[key]) for key in sorted(decoder, key=int)]
    listed += list(named.values())
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key, special_map.get(key)) or []
        listed += [_content(t) for t in (extra if isinstance(extra, list) else extra.values())]
    return list(dict.fromkeys(t for t in listed if t))


def _kept(name: str, data: bytes) -> bool:
    """trainer.data.chat's own chat_template.json (kept beside a run's tokenizer) is not a tokenizer file."""
    return name != HF_CHAT_JSON or b"end_of_turn_id" not in data
