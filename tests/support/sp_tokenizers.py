"""A SentencePiece tokenizer trained here on the Python standard library, and held-out strings to compare on."""

import functools
import glob
import os
import sysconfig

from trainer.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

STDLIB = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def read(path: str) -> str:
    """A source file's text (undecodable bytes replaced)."""
    with open(path, errors="replace") as f:
        return f.read()


@functools.cache
def sentencepiece() -> SentencePieceTokenizer:
    """A 512-token BPE (byte fallback, identity normalization, no dummy prefix) trained on 60 stdlib modules."""
    texts = [read(path) for path in STDLIB[:60]]
    return train_sentencepiece(texts, vocab_size=512, num_threads=1)


def held_out_strings(n: int = 1000) -> list[str]:
    """Lines of stdlib modules the tokenizer never saw, with leading/trailing whitespace kept, plus edge cases."""
    lines = [line for path in STDLIB[-60:] for line in read(path).splitlines(keepends=True)]
    special = [" leading space", "  two", "trailing  ", "\n\n", "\t", "Größe 東京 😀", "", "a" * 300]
    picked = lines[:: max(1, len(lines) // n)][: n - len(special)]
    return special + picked
