"""Tokenizers: train a SentencePiece BPE that round-trips text exactly, or load a SentencePiece / Hugging Face one.

A prepared data folder keeps its tokenizer beside the shards (`tokenizer.model` for SentencePiece, `tokenizer/` for a
Hugging Face folder) and names it in `manifest.json`; `load_tokenizer(folder_or_url)` gives it back to anyone who needs
text (sampling at the end of a run, the HF exporter).
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
import tempfile
from typing import Iterable, Iterator, Optional

from trainer import storage
from trainer.data import DataError

# Fixed ids of the trained SentencePiece models; recorded in the manifest.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SENTENCEPIECE_FILE = "tokenizer.model"
HF_FOLDER = "tokenizer"
_TRAIN_CHUNK_CHARS = 4096  # SentencePiece trains on "sentences"; long documents are cut at line ends


class Tokenizer(abc.ABC):
    """What the rest of the trainer needs from a tokenizer: ids in, text out, and the special ids."""

    kind: str  # 'sentencepiece' | 'hf'
    vocab_size: int
    bos_id: Optional[int]
    eos_id: int
    pad_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts (faster than one by one where the library batches)."""
        return [self.encode(t) for t in texts]

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The text of `ids` (special tokens kept as they are)."""

    def render_chat(self, messages: list[dict[str, str]]) -> Optional[str]:
        """A conversation ([{"role", "content"}, ...]) as prompt text through the tokenizer's chat template, ending
        where the assistant's reply begins; None when the tokenizer has no template."""
        return None

    @property
    @abc.abstractmethod
    def sha256(self) -> str:
        """Fingerprint of the tokenizer files: folders of shards made with different tokenizers must never mix."""

    @abc.abstractmethod
    def save(self, folder: str) -> str:
        """Store the tokenizer inside a prepared folder (local or gs://); returns the manifest's `file` entry."""


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model held in memory (its serialized proto), so it loads the same from disk or from GCS."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        bos, eos, pad, unk = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id(), self._sp.unk_id()
        if eos < 0:
            raise DataError("the SentencePiece model has no EOS id; every document must end with EOS")
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos
        self.pad_id = pad if pad >= 0 else (unk if unk >= 0 else eos)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=1)  # parallelism comes from the worker processes

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()

    def save(self, folder: str) -> str:
        storage.write_bytes_atomic(storage.join(folder, SENTENCEPIECE_FILE), self.model_proto)
        return SENTENCEPIECE_FILE


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer folder (tokenizer.json / tokenizer_config.json ...), loaded with transformers."""

    kind = "hf"

    def __init__(self, local_folder: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise DataError("a Hugging Face tokenizer needs transformers: pip install transformers") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(local_folder, local_files_only=True)
        except Exception as e:  # transformers raises many types for a folder that is not a tokenizer
            raise DataError(f"cannot load a Hugging Face tokenizer from {local_folder}: {_first_line(e)}") from None
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise DataError(f"the Hugging Face tokenizer in {local_folder} has no eos token; every document needs one")
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id
        self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else self.eos_id
        with tempfile.TemporaryDirectory() as tmp:
            self._tok.save_pretrained(tmp)
            self._files = {name: open(os.path.join(tmp, name), "rb").read() for name in sorted(os.listdir(tmp))}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def render_chat(self, messages: list[dict[str, str]]) -> Optional[str]:
        if not getattr(self._tok, "chat_template", None):
            return None
        return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for name, data in self._files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()

    def save(self, folder: str) -> str:
        for name, data in self._files.items():
            storage.write_bytes_atomic(storage.join(folder, HF_FOLDER, name), data)
        return HF_FOLDER

    def files(self) -> dict[str, bytes]:
        """The saved tokenizer files by name (what `save` writes), e.g. to rebuild it in a worker process."""
        return dict(self._files)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """Cut documents into pieces of at most ~_TRAIN_CHUNK_CHARS at line ends (newlines and indentation are kept)."""
    for text in texts:
        buf: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            while len(line) > _TRAIN_CHUNK_CHARS:
                yield line[:_TRAIN_CHUNK_CHARS]
                line = line[_TRAIN_CHUNK_CHARS:]
            if size + len(line) > _TRAIN_CHUNK_CHARS and buf:
                yield "".join(buf)
                buf, size = [], 0
            buf.append(line)
            size += len(line)
        if buf:
            yield "".join(buf)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, num_threads: int = 2) -> SentencePieceTokenizer:
    """Train a BPE model whose decode gives back the exact input text.

    byte_fallback covers any character; identity normalization, no dummy prefix and kept whitespace make
    decode(encode(x)) == x (and agree with HF's LlamaTokenizerFast, see docs/pitfalls.md); pad/unk/bos/eos are 0/1/2/3.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=0.9995,
            max_sentence_length=4 * _TRAIN_CHUNK_CHARS + 16,  # bytes; a chunk of 4096 chars is at most 16 KiB
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            num_threads=max(1, num_threads),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(
            f"cannot train a SentencePiece vocabulary of {vocab_size}: {_first_line(e)} (pick another --vocab-size)"
        ) from None
    return SentencePieceTokenizer(model.getvalue())


def open_tokenizer(path: str) -> Tokenizer:
    """The tokenizer a user names (`--tokenizer`): a SentencePiece .model file or an HF folder, local or gs://."""
    if not storage.exists(path):
        raise DataError(f"tokenizer not found: {path} (give a SentencePiece .model file or a Hugging Face folder)")
    if not storage.isdir(path):
        return _sentencepiece_from_bytes(storage.read_bytes(path), path)
    names = storage.listdir(path)
    if "tokenizer.json" in names or "tokenizer_config.json" in names:
        return _hf_from_folder(path, names)
    if SENTENCEPIECE_FILE in names:
        return _sentencepiece_from_bytes(storage.read_bytes(storage.join(path, SENTENCEPIECE_FILE)), path)
    raise DataError(f"{path} holds neither tokenizer.json/tokenizer_config.json (Hugging Face) nor tokenizer.model")


def load_tokenizer(dir_or_url: str) -> Tokenizer:
    """The tokenizer of a prepared data folder (as named by its manifest), or of a tokenizer file/folder itself."""
    manifest_path = storage.join(dir_or_url, "manifest.json")
    if storage.exists(manifest_path):
        info = storage.read_json(manifest_path)["tokenizer"]
        return open_tokenizer(storage.join(dir_or_url, info["file"]))
    for name in (SENTENCEPIECE_FILE, HF_FOLDER):  # a folder being prepared: tokenizer written, manifest not yet
        candidate = storage.join(dir_or_url, name)
        if storage.exists(candidate):
            return open_tokenizer(candidate)
    return open_tokenizer(dir_or_url)


def _sentencepiece_from_bytes(data: bytes, path: str) -> SentencePieceTokenizer:
    try:
        return SentencePieceTokenizer(data)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path} is not a SentencePiece model: {_first_line(e)}") from None


def _hf_from_folder(path: str, names: list[str]) -> HFTokenizer:
    if not storage.is_remote(path):
        return HFTokenizer(path)
    with tempfile.TemporaryDirectory() as tmp:  # transformers reads local folders only
        for name in names:
            if not storage.isdir(storage.join(path, name)):
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(storage.read_bytes(storage.join(path, name)))
        return HFTokenizer(tmp)


def hf_from_files(files: dict[str, bytes]) -> HFTokenizer:
    """Rebuild an HF tokenizer from `HFTokenizer.files()` (worker processes get the files, not the object)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        return HFTokenizer(tmp)
