"""Finding the damaged file of a prepared folder: the diagnosis behind the shard reader's errors; `prepare --verify`.

A prepared folder can go bad after `prepare` finished: a shard truncated by a failed copy, bytes flipped on a disk, a
file deleted by a cleanup job. ArrayRecord/Riegeli then raise bare `RuntimeError`s (often from a reader thread, and
sometimes without naming the file). `check_shard` says what is wrong with one shard and `shard_error` turns it into a
`DataError` naming the shard and the command that rewrites it (the reader, `shard_source.ShardSource`, uses both);
`verify` checks a whole folder against its manifest's record counts and sha256 hashes.
"""

from __future__ import annotations

import concurrent.futures
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


def clause(error: BaseException) -> str:
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
        return f"it is truncated or corrupt ({clause(e)})"
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
