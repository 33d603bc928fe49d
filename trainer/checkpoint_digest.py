"""SHA-256 digests of a checkpoint step's files: recorded once the step is committed, checked before it is read.

Orbax's commit marker says a step was written completely, not that its bytes are still the ones written: a disk or
a bad copy can truncate, drop or alter a file afterwards, and an altered tensor file restores silently as wrong
weights. So every step gets `<step>/digest.json` (size and SHA-256 of every other file of the step), computed by a
background thread once the asynchronous write has committed (the training loop never waits for it), and a step is
checked against it before any of its arrays is read. A step written before digests existed has no such file: it is
read as before, unchecked.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable

from trainer import storage
from trainer.errors import first_line

DIGEST_FILE = "digest.json"
ALGORITHM = "sha256"


def _files(step_dir: str) -> dict[str, int]:
    """Every file under `step_dir` (its digest aside) as path relative to `step_dir` → size in bytes."""
    fs, root = storage.filesystem(step_dir)
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    files = {}
    for path, info in found.items():
        relative = path[len(root) + 1 :] if path.startswith(root + "/") else path
        if relative and relative != DIGEST_FILE and info.get("type", "file") == "file":
            files[relative] = int(info["size"])
    return files


def compute(step_dir: str) -> dict[str, object]:
    """The digest of a step folder: size and SHA-256 of every file in it (the digest file itself aside)."""
    files = {
        name: {"bytes": size, ALGORITHM: storage.sha256(storage.join(step_dir, *name.split("/")))}
        for name, size in sorted(_files(step_dir).items())
    }
    return {"algorithm": ALGORITHM, "files": files}


def write(step_dir: str) -> bool:
    """Record the digest of `step_dir` in it; False (nothing written) when the step is gone (e.g. already deleted by
    `checkpoint.keep`): a digest alone must never make a folder that looks like a step."""
    if not storage.exists(step_dir):
        return False
    try:
        digest = compute(step_dir)
    except FileNotFoundError:  # deleted while it was being read
        return False
    if not storage.exists(step_dir):
        return False
    storage.write_json_atomic(storage.join(step_dir, DIGEST_FILE), digest)
    return True


def has_digest(step_dir: str) -> bool:
    """Whether the step was written with a digest (steps from before digests have none)."""
    return storage.exists(storage.join(step_dir, DIGEST_FILE))


def damage(step_dir: str) -> str | None:
    """What is wrong with the step's files, in a few words, or None when they match their digest (or the step has
    none to check against). Sizes are compared first, so a truncated or missing file is named without reading."""
    path = storage.join(step_dir, DIGEST_FILE)
    if not storage.exists(path):
        return None
    try:
        recorded = storage.read_json(path)["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {DIGEST_FILE} can't be read"
    present = _files(step_dir)
    for name, entry in recorded.items():
        if name not in present:
            return f"{name} is missing"
        if present[name] != entry["bytes"]:
            return f"{name} has {present[name]} bytes, {entry['bytes']} were written"
    for name, entry in recorded.items():
        if storage.sha256(storage.join(step_dir, *name.split("/"))) != entry[ALGORITHM]:
            return f"{name} differs from its recorded SHA-256"
    return None


class DigestWriter:
    """A background thread that records the digest of each saved step once its write has committed.

    `wait_committed` blocks until every save in flight is committed (Orbax's `wait_until_finished`, which several
    threads may call at once); `submit` queues a step folder and returns at once.
    """

    def __init__(self, wait_committed: Callable[[], None]):
        self._wait_committed = wait_committed
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="checkpoint-digest", daemon=True)
        self._thread.start()

    def submit(self, step_dir: str) -> None:
        """Digest `step_dir` once it is committed (the caller does not wait)."""
        self._queue.put(step_dir)

    def wait(self) -> None:
        """Block until every submitted step has its digest."""
        self._queue.join()

    def close(self) -> None:
        """Finish the queued digests and stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _work(self) -> None:
        while True:
            step_dir = self._queue.get()
            try:
                if step_dir is None:
                    return
                try:
                    self._wait_committed()
                except Exception:  # the save failed: the step is not committed, there is nothing to digest
                    continue
                write(step_dir)
            except Exception as e:  # a store that failed mid-way: the step stays readable, only unchecked
                print(f"warning: no digest for {step_dir} ({first_line(e)})", file=sys.stderr, flush=True)
            finally:
                self._queue.task_done()
