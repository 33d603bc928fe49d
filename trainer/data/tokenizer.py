"""Tokenizers: train a SentencePiece BPE that round-trips text exactly, or load a SentencePiece / Hugging Face one.

A prepared data folder keeps its tokenizer beside the shards (`tokenizer.model` for SentencePiece, `tokenizer/` for a
Hugging Face folder) and names it in `manifest.json`; `load_tokenizer(folder_or_url)` gives it back to anyone who needs
text (sampling at the end of a run, the HF exporter). A Hugging Face folder is read with the `tokenizers` library alone
(trainer.data.hf_tokenizer), so training, sampling and generation need no transformers.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator

from trainer import storage
from trainer.data import DataError
from trainer.data.hf_tokenizer import HFTokenizer, read_hf_folder
from trainer.data.tokenizer_base import HF_FOLDER, Tokenizer
from trainer.errors import first_line

# Fixed ids of the trained SentencePiece models; recorded in the manifest.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SENTENCEPIECE_FILE = "tokenizer.model"
CHAT_CONFIG_FILE = "chat_template.json"  # a chat format trained with this tokenizer (trainer.data.chat)
_TRAIN_CHUNK_CHARS = 4096  # SentencePiece trains on "sentences"; long documents are cut at line ends


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

    def token_text(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """As Hugging Face's tokenizer of this model does (the exported one), the BOS/EOS pieces written in the text
        ('<s>', '</s>': a chat template's `eos_token`) become their ids; the text between is encoded as usual."""
        specials = {self.token_text(i): i for i in (self.bos_id, self.eos_id) if i is not None}
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        start = 0
        while start <= len(text):
            found = [(text.find(p, start), p) for p in specials if text.find(p, start) >= 0]
            end, piece = min(found) if found else (len(text), None)
            part_ids, part_offsets = self._encode_plain(text[start:end])
            ids += part_ids
            offsets += [(a + start, b + start) for a, b in part_offsets]
            if piece is None:
                break
            ids.append(specials[piece])
            offsets.append((end, end + len(piece)))
            start = end + len(piece)
        return ids, offsets

    def _encode_plain(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not text:
            return [], []
        proto = self._sp.encode(text, return_type="proto")
        # SentencePiece reports byte offsets into the UTF-8 text; map them to character offsets.
        char_at = [0] * (len(text.encode()) + 1)
        position = 0
        for index, ch in enumerate(text):
            width = len(ch.encode())
            for b in range(width):
                char_at[position + b] = index
            position += width
        char_at[position] = len(text)
        ids = [p.id for p in proto.pieces]
        offsets = [(char_at[p.begin], char_at[p.end] if p.end < len(char_at) else len(text)) for p in proto.pieces]
        return ids, offsets

    def with_tokens(self, tokens: list[str]) -> SentencePieceTokenizer:
        """Append `tokens` as USER_DEFINED pieces: SentencePiece then never splits them (their ids follow the
        existing vocabulary, so a base model's embedding grows by rows at the end)."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        model = pb.ModelProto()
        model.ParseFromString(self.model_proto)
        for token in tokens:
            piece = model.pieces.add()
            piece.piece, piece.score, piece.type = token, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
        return SentencePieceTokenizer(model.SerializeToString())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()

    def save(self, folder: str) -> str:
        storage.write_bytes_atomic(storage.join(folder, SENTENCEPIECE_FILE), self.model_proto)
        return SENTENCEPIECE_FILE


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


def train_sentencepiece(
    texts: Iterable[str], vocab_size: int, num_threads: int = 2, special_tokens: Iterable[str] = ()
) -> SentencePieceTokenizer:
    """Train a BPE model whose decode gives back the exact input text; `special_tokens` (a chat format's markers)
    become user-defined symbols, each always one id.

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
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            user_defined_symbols=list(special_tokens),
            num_threads=max(1, num_threads),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(
            f"cannot train a SentencePiece vocabulary of {vocab_size}: {first_line(e)} (pick another --vocab-size)"
        ) from None
    return SentencePieceTokenizer(model.getvalue())


def open_tokenizer(path: str) -> Tokenizer:
    """The tokenizer a user names (`--tokenizer`): a SentencePiece .model file or an HF folder, local or gs://."""
    if not storage.exists(path):
        raise DataError(f"tokenizer not found: {path} (give a SentencePiece .model file or a Hugging Face folder)")
    if not storage.isdir(path):
        return _sentencepiece_from_bytes(storage.read_bytes(path), path)
    names = storage.listdir(path)
    if {"tokenizer.json", "tokenizer_config.json", "vocab.json"} & set(names):
        return read_hf_folder(path)
    if SENTENCEPIECE_FILE in names:
        return _sentencepiece_from_bytes(storage.read_bytes(storage.join(path, SENTENCEPIECE_FILE)), path)
    raise DataError(f"{path} holds neither tokenizer.json/tokenizer_config.json (Hugging Face) nor tokenizer.model")


def load_tokenizer(dir_or_url: str) -> Tokenizer:
    """The tokenizer of a prepared data folder (as named by its manifest), or of a tokenizer file/folder itself."""
    manifest_path = storage.join(dir_or_url, "manifest.json")
    if storage.exists(manifest_path):
        info = storage.read_json(manifest_path)["tokenizer"]
        return attach_chat(open_tokenizer(storage.join(dir_or_url, info["file"])), dir_or_url)
    for name in (SENTENCEPIECE_FILE, HF_FOLDER):  # a folder being prepared: tokenizer written, manifest not yet
        candidate = storage.join(dir_or_url, name)
        if storage.exists(candidate):
            return attach_chat(open_tokenizer(candidate), dir_or_url)
    folder = dir_or_url if storage.isdir(dir_or_url) else dir_or_url.rsplit("/", 1)[0]
    return attach_chat(open_tokenizer(dir_or_url), folder)


def attach_chat(tok: Tokenizer, folder: str) -> Tokenizer:
    """Give `tok` the chat format stored in `folder`/chat_template.json (trainer.data.chat), when there is one."""
    path = storage.join(folder, CHAT_CONFIG_FILE)
    if folder and storage.exists(path):
        chat = storage.read_json(path)
        if "end_of_turn_id" in chat:
            tok.chat = chat
    return tok


def _sentencepiece_from_bytes(data: bytes, path: str) -> SentencePieceTokenizer:
    try:
        return SentencePieceTokenizer(data)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path} is not a SentencePiece model: {first_line(e)}") from None


def hf_from_files(files: dict[str, bytes]) -> Tokenizer:
    """Rebuild an HF tokenizer from `HFTokenizer.files()` (worker processes get the files, not the object)."""
    return HFTokenizer(files)
