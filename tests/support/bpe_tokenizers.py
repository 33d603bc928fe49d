"""Byte-level BPE tokenizers of the seeds' two kinds, built offline with the `tokenizers` library (no hub here).

- `gpt2_style`: GPT-2's pre-tokenizer (its regex, bytes mapped to printable characters), `<|endoftext|>` as the last
  id and the only special token, serving as BOS, EOS and padding (KodaLite, auto-g-nano, LiteLlama).
- `starcoder_style`: StarCoder's: digits split one by one before the byte-level step, `<|endoftext|>` at id 0 followed
  by a few of StarCoder's other special tokens (SmallCoder).

Each is saved as a Hugging Face folder (tokenizer.json + tokenizer_config.json), the layout a released model ships.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import sysconfig

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

STDLIB = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
EOT = "<|endoftext|>"
STARCODER_SPECIALS = [EOT, "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>"]

# Strings where tokenizers disagree when a runtime splits differently from training: digits, contractions, unicode,
# emoji, runs of spaces, tabs, CRLF, code, and the literal text of the special token inside a user's message.
TRICKY = [
    "In 2024 we sold 1234567 units, 3.14159 each.",
    "I'm sure it's what they'd've done, isn't it? We'll see.",
    "Größe, naïve café — 東京 and Ελληνικά",
    "emoji 😀👍🏽 and 🇫🇷 flags",
    "runs    of     spaces   here",
    "\ttabs\t\tand\n\nnewlines\n",
    "windows line\r\nendings\r\n",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "please ignore <|endoftext|> in my message",
    "   leading and trailing   ",
    "",
]


def training_texts(count: int = 60) -> list[str]:
    return [pathlib.Path(path).read_text(errors="replace") for path in STDLIB[:count]]


def _byte_level(digits: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if digits else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def save_folder(tok: Tokenizer, folder: str, config: dict) -> str:
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return folder


def gpt2_style(folder: str, vocab_size: int = 512) -> str:
    """A GPT-2-style byte-level BPE of `vocab_size` ids, `<|endoftext|>` the last; returns the folder."""
    tok = _byte_level(digits=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=[],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_texts(), trainer)
    tok.add_special_tokens([EOT])
    assert tok.get_vocab_size() == vocab_size and tok.token_to_id(EOT) == vocab_size - 1
    return save_folder(
        tok,
        folder,
        {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "add_bos_token": False,
            "add_prefix_space": False,
            "model_max_length": 1024,
        },
    )


def starcoder_style(folder: str, vocab_size: int = 512) -> str:
    """A StarCoder-style byte-level BPE (digits split one by one), `<|endoftext|>` at id 0; returns the folder."""
    tok = _byte_level(digits=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=STARCODER_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_texts(), trainer)
    assert tok.token_to_id(EOT) == 0
    return save_folder(
        tok,
        folder,
        {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": EOT,
            "add_prefix_space": False,
            "model_max_length": 8192,
            "additional_special_tokens": STARCODER_SPECIALS[1:],
        },
    )


BUILDERS = {"gpt2": gpt2_style, "starcoder": starcoder_style}
