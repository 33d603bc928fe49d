"""Stop strings and streamed text, on the host: what a row's new tokens say, where a stop string ends them, and how
much of the text is safe to show before the next tokens arrive.

Why on the host and not as token ids on the device: a string such as `<|end|>` has many tokenizations (five BPE
pieces after a newline, others after a letter), and a model is free to produce any of them; comparing token ids
catches only the spellings someone listed. Decoding the new tokens and searching the text catches all of them.
The sampler runs in chunks of a few tokens, so a stop string costs at most one chunk of wasted steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Detokenize = Callable[[list[int]], str]
CONTEXT_TOKENS = 4  # prompt tokens decoded in front of the new ones (see `new_text`)


def new_text(detokenize: Detokenize, context: Sequence[int], new: Sequence[int]) -> str:
    """The text `new` adds after `context`: tokenizers that drop a leading space at the start of a text (SentencePiece
    '▁') or merge bytes across tokens decode differently alone than in place, so decode both and take the difference."""
    if not context:
        return detokenize(list(new))
    head = detokenize(list(context))
    full = detokenize(list(context) + list(new))
    return full[len(head) :] if full.startswith(head) else detokenize(list(new))


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, int] | None:
    """(start, end) of the earliest stop string in `text` at or after `start`, or None."""
    best = None
    for stop in stops:
        at = text.find(stop, start)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, at + len(stop))
    return best


def unsafe_tail(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` might still become a stop string (or are an unfinished UTF-8
    character, shown as U+FFFD) and must not be shown yet."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if stop.startswith(text[-n:]):
                held = n
                break
    while held < len(text) and text[len(text) - held - 1] == "\ufffd":
        held += 1
    return held


@dataclass
class RowText:
    """One row's text as tokens arrive: `update` after each chunk returns the newly showable text and, once a stop
    string appears, cuts the row there."""

    detokenize: Detokenize
    context: list[int]  # the prompt's last few tokens
    stops: tuple[str, ...] = ()
    text: str = ""
    shown: int = 0  # characters already returned by `update`
    stop_at: tuple[int, int] | None = None  # (kept tokens, kept characters) once a stop string was found
    _searched: int = field(default=0, repr=False)

    def update(self, tokens: Sequence[int], finished: bool) -> str:
        """`tokens`: all of the row's new tokens so far (without EOS). Returns text not shown before."""
        if self.stop_at is not None:
            return ""
        self.text = new_text(self.detokenize, self.context, tokens)
        longest = max((len(s) for s in self.stops), default=0)
        hit = find_stop(self.text, self.stops, max(0, self._searched - longest))
        if hit is not None:
            self.stop_at = (self._tokens_through(tokens, hit[1]), hit[0])
            self.text = self.text[: hit[0]]
            finished = True
        self._searched = len(self.text)
        end = len(self.text) if finished else len(self.text) - unsafe_tail(self.text, self.stops)
        out = self.text[self.shown : end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out

    def _tokens_through(self, tokens: Sequence[int], end_char: int) -> int:
        """The fewest tokens whose text reaches `end_char` (the end of the stop string): binary search."""
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(new_text(self.detokenize, self.context, tokens[:mid])) >= end_char:
                hi = mid
            else:
                lo = mid + 1
        return hi
