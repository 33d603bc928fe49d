"""Finding the damaged file of a prepared folder: shard reads that name their file, and `prepare --verify`.

A prepared folder can go bad after `prepare` finished: a shard truncated by a failed copy, bytes flipped on a disk, a
file deleted by a cleanup job. ArrayRecord/Riegeli then raise bare `RuntimeError`s (often from a reader thread, and
sometimes without naming the file). `ShardSource` reads a split's shards like Grain's ArrayRecord source but turns
any such failure into a `DataError` naming the shard and the command that rewrites it; `verify` checks a whole folder
against its manifest's record counts and sha256 hashes.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import itertools
import re
from collections.abc import Callable
from typing import Any

from trainer import storage
from trainer.data import DataError
from trainer.data.shards import MANIFEST_FILE, Manifest, ShardInfo, read_manifest
from trainer.errors import ExitCode, first_line


def repair_hint(manifest: Manifest) -> str:
    """What to run to rewrite a damaged shard: prepare verifies every finished part and redoes only the bad ones."""
    folder = manifest.location
    if manifest.command.startswith("python -m trainer.data.prepare"):
        return (
            f"re-run the command that prepared it, with the same --out (it rewrites only damaged parts): "
            f"{manifest.command}"
        )
    if manifest.command.startswith("auto-prepare"):
        return (
            f"delete {storage.join(folder, MANIFEST_FILE)} and start the run again (it prepares the damaged part anew)"
        )
    return f"re-run the prepare command that made {folder} with the same --out (it rewrites only damaged parts)"


def _clause(error: BaseException) -> str:
    """The gist of a library error: its first clause, without Riegeli's hash values."""
    text = first_line(error, limit=len(str(error)) + 1)
    return re.sub(r" \(computed 0x[0-9a-f]+, stored 0x[0-9a-f]+\)", "", text.split(";")[0])[:200]


def check_shard(folder: str, info: ShardInfo, with_hash: bool = False) -> str | None:
    """Why one shard of `folder` does not match its manifest entry (missing, unreadable, record count, sha256); None
    when it does. The hash (which reads the whole file) only with `with_hash`."""
    from array_record.python.array_record_module import ArrayRecordReader

    path = storage.join(folder, info.file)
    if not storage.exists(path):
        return "the file is missing"
    try:
        reader = ArrayRecordReader(path)
        try:
            count = reader.num_records()
        finally:
            reader.close()
    except Exception as e:  # Riegeli raises RuntimeError (sometimes without a message) for a damaged file
        return f"it is truncated or corrupt ({_clause(e)})"
    if count != info.documents:
        return f"it holds {count:,} records, the manifest says {info.documents:,}"
    if with_hash:
        digest = storage.sha256(path)
        if digest != info.sha256:
            return f"its sha256 is {digest[:12]}…, the manifest says {info.sha256[:12]}… (the content changed)"
    return None


def shard_error(manifest: Manifest, info: ShardInfo, reason: str) -> DataError:
    """The one-line error for a damaged shard: which file, why, and how to rewrite it."""
    return DataError(
        f"shard {storage.join(manifest.location, info.file)} is damaged: {reason}; {repair_hint(manifest)}"
    )


class ShardSource:
    """A split's shards as one random-access source of records (Grain's ArrayRecord source underneath) whose
    failures name the shard. Opening reads every shard's footer, so a missing or truncated shard fails at start."""

    def __init__(self, manifest: Manifest, split: str):
        import grain

        self._manifest = manifest
        self._infos = manifest.shards_of(split)
        try:
            self._source = grain.sources.ArrayRecordDataSource(manifest.shard_paths(split))
        except Exception as e:  # find the culprit; the library's message often doesn't name it
            raise self._diagnose(e) from None
        expected = sum(info.documents for info in self._infos)
        if len(self._source) != expected:
            raise self._diagnose(None)
        self._ends = list(itertools.accumulate(info.documents for info in self._infos))

    def _diagnose(self, error: BaseException | None) -> DataError:
        for info in self._infos:
            reason = check_shard(self._manifest.location, info)
            if reason is not None:
                return shard_error(self._manifest, info, reason)
        what = _clause(error) if error is not None else "its record counts differ from the manifest"
        return DataError(
            f"can't read the shards of {self._manifest.location} ({what}); check them with "
            f"`python -m trainer.data.prepare --verify {self._manifest.location}`"
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        try:
            return self._source[index]
        except Exception as e:
            raise self._read_error(index, e) from None

    def _read_error(self, index: int, error: BaseException) -> DataError:
        shard = bisect.bisect_right(self._ends, int(index))
        if shard >= len(self._infos):
            return DataError(f"record {index} is outside the shards of {self._manifest.location}: {_clause(error)}")
        start = self._ends[shard - 1] if shard else 0
        info = self._infos[shard]
        return shard_error(self._manifest, info, f"record {int(index) - start} can't be read ({_clause(error)})")

    def __repr__(self) -> str:
        return f"ShardSource({self._manifest.location!r}, {len(self._infos)} shards)"


def verify(
    manifest: Manifest, workers: int = 8, progress: Callable[[ShardInfo], Any] | None = None
) -> list[tuple[ShardInfo, str]]:
    """Every shard of a prepared folder checked against its manifest entry (present, readable, record count,
    sha256); returns the damaged ones with the reason. Shards are checked in parallel threads (hashing and reads
    release the GIL)."""
    bad = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(check_shard, manifest.location, info, True): info for info in manifest.shards}
        for future in concurrent.futures.as_completed(futures):
            info = futures[future]
            reason = future.result()
            if reason is not None:
                bad.append((info, reason))
            if progress is not None:
                progress(info)
    order = {info.file: i for i, info in enumerate(manifest.shards)}
    return sorted(bad, key=lambda item: order[item[0].file])


def verify_folder(folder: str, progress: bool = True) -> int:
    """`python -m trainer.data.prepare --verify DIR`: check every shard; print the damaged ones (stdout) and one
    `error:` line saying how to repair them (stderr). Returns the exit code: 0 all good, 1 damage found."""
    import sys

    from tqdm import tqdm

    storage.check_reachable(folder, "--verify")
    manifest = read_manifest(folder)
    with tqdm(
        total=len(manifest.shards),
        unit="shard",
        desc="verify",
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        bad = verify(manifest, progress=lambda _: bar.update())
    totals = manifest.totals()["all"]
    if not bad:
        print(
            f"verified {folder}: {len(manifest.shards)} shards, {totals['documents']:,} documents, "
            f"{totals['tokens']:,} tokens; record counts and sha256 match {MANIFEST_FILE}"
        )
        return ExitCode.OK
    for info, reason in bad:
        print(f"damaged: {info.file}: {reason}")
    print(
        f"error: {len(bad)} of {len(manifest.shards)} shards of {folder} are damaged (listed above); "
        f"{repair_hint(manifest)}",
        file=sys.stderr,
        flush=True,
    )
    return ExitCode.FAILURE
