"""The interface every tokenizer of the trainer implements (SentencePiece in trainer.data.tokenizer, Hugging Face
folders in trainer.data.hf_tokenizer): ids in, text out, the special ids, and a chat format trained with it."""

from __future__ import annotations

import abc

from trainer.data import chat as chat_lib

HF_FOLDER = "tokenizer"  # a Hugging Face tokenizer's folder inside a prepared data folder or a run


class Tokenizer(abc.ABC):
    """What the rest of the trainer needs from a tokenizer: ids in, text out, and the special ids."""

    kind: str  # 'sentencepiece' | 'hf'
    vocab_size: int
    bos_id: int | None
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

    # A chat format trained into the model (`chat_template.json` beside the tokenizer, see trainer.data.chat): the
    # Jinja template and the single token that ends a turn. None for a tokenizer of plain text.
    chat: dict | None = None

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text` and each token's character span [start, end) in it (for loss masks)."""

    @abc.abstractmethod
    def token_text(self, token_id: int) -> str:
        """How a (special) token is written in text, e.g. '</s>' for EOS: what chat templates put in their text."""

    @abc.abstractmethod
    def with_tokens(self, tokens: list[str]) -> Tokenizer:
        """A copy of this tokenizer with `tokens` added as single special ids after the existing ones."""

    @property
    def end_of_turn_id(self) -> int | None:
        """The id that ends an assistant turn in the chat format trained with this tokenizer; None without one."""
        return None if self.chat is None else int(self.chat["end_of_turn_id"])

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids generation stops at: EOS, and the end-of-turn token of a chat format."""
        return tuple(dict.fromkeys(i for i in (self.end_of_turn_id, self.eos_id) if i is not None))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The text generation stops at besides `stop_ids`: a chat format's end-of-turn marker kept as plain text of
        several tokens (KodaLite's `<|end|>`); empty when there is none."""
        return () if self.chat is None else tuple(self.chat.get("stop_strings") or ())

    def render_chat(self, messages: list[dict[str, str]]) -> str | None:
        """A conversation ([{"role", "content"}, ...]) as prompt text through the tokenizer's chat template, ending
        where the assistant's reply begins; None when the tokenizer has no template."""
        if self.chat is None:
            return None
        template = chat_lib.ChatTemplate(
            self.chat.get("template", "jinja"), self.chat["chat_template"], self.chat.get("end_of_turn")
        )
        return chat_lib.render(
            template,
            messages,
            add_generation_prompt=True,
            bos_token="" if self.bos_id is None else self.token_text(self.bos_id),
            eos_token=self.token_text(self.eos_id),
        )

    @property
    @abc.abstractmethod
    def sha256(self) -> str:
        """Fingerprint of the tokenizer files: folders of shards made with different tokenizers must never mix."""

    @abc.abstractmethod
    def save(self, folder: str) -> str:
        """Store the tokenizer inside a prepared folder (local or gs://); returns the manifest's `file` entry."""
