"""Lines of a JSONL or text file, whole or in byte ranges cut at line boundaries, with their byte offsets.

A large uncompressed file is split into several work units, each a byte range [start, end): a unit reads the lines
that *start* inside its range, so every line is read by exactly one unit whatever the cut points, and the units of one
file together read it once. A line is named by its byte offset in the (decompressed) file, which every unit knows
without reading what comes before it; the line number, for error messages only, is counted when one is needed.
"""

from __future__ import annotations

from collections.abc import Iterator

from trainer.data import compressed

_COUNT_CHUNK = 1 << 22


def read_lines(path: str, start: int = 0, end: int = 0) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its line break) for every line of `path` that starts in [start, end) (`end` 0: up to
    the end of the file). `start` > 0 needs an uncompressed file (it seeks)."""
    with compressed.open_stream(path) as stream:
        offset = 0
        if start > 0:
            stream.seek(start - 1)
            offset = start - 1 + len(stream.readline())  # the rest of the line that byte start-1 belongs to
        for line in stream:
            if end and offset >= end:
                return
            yield offset, line.rstrip(b"\r\n")
            offset += len(line)


def line_number(path: str, offset: int) -> int:
    """The 1-based number of the line that starts at byte `offset` of `path`: for an error message naming it."""
    newlines = 0
    with compressed.open_stream(path) as stream:
        left = offset
        while left > 0:
            chunk = stream.read(min(left, _COUNT_CHUNK))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            left -= len(chunk)
    return newlines + 1


def split_points(size: int, target_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of about `target_bytes` covering a file of `size` bytes (one range when it is not larger)."""
    parts = max(1, -(-size // max(1, target_bytes)))
    bounds = [size * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]
