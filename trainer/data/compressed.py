"""Compressed inputs (`.gz`, `.zst`, `.bz2`, `.xz`), read as a stream from a local path or gs://.

A compressed file is decompressed while it is read, a buffer at a time: it is never unpacked to disk or held in memory
whole. It can't be cut into byte ranges (no random access into the stream), so such a file is always one work unit.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
from collections.abc import Iterator
from typing import IO

from trainer import storage
from trainer.data import DataError

SUFFIXES = (".gz", ".zst", ".bz2", ".xz")
_READ_BUFFER = 1 << 20  # bytes read from the file (or bucket) at a time


def compression_of(path: str) -> str:
    """The compression suffix of `path` (one of SUFFIXES), or '' for a plain file."""
    lower = path.lower()
    return next((suffix for suffix in SUFFIXES if lower.endswith(suffix)), "")


def without_compression(name: str) -> str:
    """`name` without its compression suffix: `a.jsonl.zst` → `a.jsonl` (what decides the reader and the key)."""
    suffix = compression_of(name)
    return name[: -len(suffix)] if suffix else name


def _zstd_reader(raw: IO[bytes]) -> io.BufferedReader:
    try:
        import zstandard
    except ImportError:
        raise DataError(".zst input needs zstandard (a core dependency): pip install zstandard") from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_READ_BUFFER, read_across_frames=True)
    return io.BufferedReader(reader, buffer_size=_READ_BUFFER)


@contextlib.contextmanager
def open_stream(path: str) -> Iterator[IO[bytes]]:
    """A binary stream of `path`'s content, decompressed on the fly when its name ends in a compression suffix."""
    suffix = compression_of(path)
    with storage.open_file(path, "rb") as raw:
        if suffix == ".gz":
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        elif suffix == ".bz2":
            stream = bz2.BZ2File(raw, mode="rb")
        elif suffix == ".xz":
            stream = lzma.LZMAFile(raw, mode="rb")
        elif suffix == ".zst":
            stream = _zstd_reader(raw)
        else:
            stream = raw
        try:
            yield stream
        except (EOFError, gzip.BadGzipFile, lzma.LZMAError, OSError) as e:
            if not suffix:
                raise
            raise DataError(f"{path} is not a readable {suffix} file ({e}); replace it or leave it out") from None
        except Exception as e:
            if suffix == ".zst" and type(e).__name__ == "ZstdError":
                raise DataError(f"{path} is not a readable .zst file ({e}); replace it or leave it out") from None
            raise
        finally:
            if stream is not raw:
                stream.close()


def read_all(path: str) -> bytes:
    """The whole decompressed content of `path` (a text document: one file is one document anyway)."""
    with open_stream(path) as stream:
        return stream.read()
