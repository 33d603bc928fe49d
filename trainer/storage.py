"""Paths that are either local or `gs://` URLs, through fsspec/gcsfs: exists, open, list, atomic writes.

Everything that writes run or data artefacts (shards, manifests, tokenizers, checkpoints' sidecars) goes through these
few helpers, so the same code serves a laptop folder and a bucket. An "atomic" write means a reader sees either the old
object or the complete new one, never a half-written file: locally a temp file + `os.replace`, on GCS a single-object
upload (GCS object writes are atomic).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from typing import IO, Any

import fsspec

from trainer.errors import ConfigError, StorageError

_fs_cache: dict[tuple[str, str], fsspec.AbstractFileSystem] = {}
_fs_lock = threading.Lock()


def is_remote(path: str) -> bool:
    """True for URLs such as gs://bucket/x (anything with a scheme other than file://)."""
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    """Join path parts with `/` for URLs and the OS separator for local paths."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(_local(base), *parts)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem that serves `path` and the path in its own terms (no scheme for gs://).

    GCS instances are cached per emulator endpoint: tests start `gcp-storage-emulator` and point
    STORAGE_EMULATOR_HOST at it, and a cached client must never talk to an emulator that is gone.
    """
    if not is_remote(path):
        return fsspec.filesystem("file"), os.path.abspath(_local(path))
    protocol = path.split("://", 1)[0]
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    key = (protocol, emulator)
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            options: dict[str, Any] = {}
            if protocol in ("gs", "gcs"):
                options = {"use_listings_cache": False}
                if emulator:
                    options.update(token="anon", endpoint_url=emulator if "://" in emulator else f"http://{emulator}")
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
            _fs_cache[key] = fs
    return fs, fs._strip_protocol(path)


def clear_cache() -> None:
    """Forget cached filesystem clients (after the GCS endpoint changes, e.g. between emulator-backed tests)."""
    with _fs_lock:
        _fs_cache.clear()


def _endpoint(path: str) -> tuple[str, int] | None:
    """Host and port that serve a gs:// path (the emulator's when STORAGE_EMULATOR_HOST is set); None otherwise."""
    if path.split("://", 1)[0] not in ("gs", "gcs"):
        return None
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if not emulator:
        return "storage.googleapis.com", 443
    url = urllib.parse.urlsplit(emulator if "://" in emulator else f"http://{emulator}")
    return url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80)


def _last_line(error: BaseException) -> str:
    """The last line of an error's message (a network error's innermost cause), at most 200 characters."""
    return ((str(error).strip().splitlines() or [type(error).__name__])[-1] or type(error).__name__)[:200]


def check_reachable(path: str, what: str, attempts: int = 3, first_wait: float = 2.0, timeout: float = 5.0) -> None:
    """Fail in one line, within seconds, when the object store behind `path` can't be reached (a no-op locally).

    Raises StorageError (exit code 4, which a supervisor restarts). Storage clients retry a dead endpoint for about a
    minute and log every attempt; this connects to the endpoint
    first, `attempts` times with doubling waits, printing one line per wait (what it waits for), then asks the
    client whether `path` exists with its logs silenced. `what` names the setting in messages (e.g. `run.dir`).
    The connection waits 2 + 4 s by default: long enough for a network coming back, short of the client's minute.
    """
    if not is_remote(path):
        return
    endpoint = _endpoint(path)
    if endpoint is not None:
        wait = first_wait
        for attempt in range(1, attempts + 1):
            try:
                socket.create_connection(endpoint, timeout=timeout).close()
                break
            except OSError as e:
                reason = e.strerror or _last_line(e)
                if attempt == attempts:
                    raise StorageError(
                        f"can't reach {path} ({what}): {endpoint[0]}:{endpoint[1]} {reason} after "
                        f"{attempts} attempts; check the machine's network, or use a local folder"
                    ) from None
                print(
                    f"waiting for {endpoint[0]}:{endpoint[1]} to reach {path} ({what}): {reason}; retry "
                    f"{attempt}/{attempts - 1} in {wait:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(wait)
                wait *= 2
    quiet = logging.getLogger("gcsfs")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its retry tracebacks would bury the one line below
    try:
        exists(path)
    except Exception as e:  # DNS, credentials, permissions: whatever the storage client raises
        raise StorageError(
            f"can't reach {path} ({what}): {_last_line(e)}; check the machine's network and "
            "credentials, or use a reachable folder"
        ) from None
    finally:
        quiet.setLevel(level)


def check_writable(path: str, what: str) -> None:
    """Fail in one line when the folder `path` can't be created or written (before any slow work); a gs:// path is
    checked for reachability only (a test write would leave objects in a user's bucket)."""
    if is_remote(path):
        check_reachable(path, what)
        return
    local = os.path.abspath(_local(path))
    if os.path.exists(local) and not os.path.isdir(local):
        raise ConfigError(f"{what} {path} exists and is not a folder")
    existing = local
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{what} {path} can't be created: {existing} is a file")
    try:  # os.access alone is not enough: root passes it on read-only mounts
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"{what} {path} can't be written ({e.strerror or e} in {existing}); choose another folder"
        ) from None


def exists(path: str) -> bool:
    """Whether a file or folder exists at `path`."""
    fs, p = filesystem(path)
    return fs.exists(p)


def isdir(path: str) -> bool:
    """Whether `path` is a folder (on GCS: a prefix with objects under it)."""
    fs, p = filesystem(path)
    return fs.isdir(p)


def listdir(path: str) -> list[str]:
    """Names (not paths) directly inside the folder `path`, sorted; [] when it does not exist."""
    fs, p = filesystem(path)
    if not fs.exists(p):
        return []
    names = {posixpath.basename(entry.rstrip("/")) for entry in fs.ls(p, detail=False)}
    names.discard("")
    return sorted(names)


def makedirs(path: str) -> None:
    """Create the folder `path` (no-op on GCS, where folders are implicit)."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)


def open_file(path: str, mode: str = "rb") -> IO:
    """Open `path` for reading or (non-atomic) writing; prefer `write_bytes_atomic` for anything a reader may see."""
    fs, p = filesystem(path)
    return fs.open(p, mode)


def read_bytes(path: str) -> bytes:
    """The whole content of `path`."""
    fs, p = filesystem(path)
    return fs.cat_file(p)


def read_json(path: str) -> Any:
    """Parse the JSON document at `path`."""
    return json.loads(read_bytes(path))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old content or all of the new one, never a part."""
    if is_remote(path):
        fs, p = filesystem(path)
        fs.pipe_file(p, data)
        return
    path = _local(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically (see `write_bytes_atomic`)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def put_file(local_path: str, dest: str) -> None:
    """Move a finished local file to `dest` atomically: `os.replace` locally, one upload (then delete) for URLs."""
    if is_remote(dest):
        fs, p = filesystem(dest)
        fs.put_file(local_path, p)
        os.remove(local_path)
    else:
        dest = _local(dest)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        try:
            os.replace(local_path, dest)
        except OSError:  # another filesystem: copy beside the target, then rename
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, dest)
            os.remove(local_path)


def move(src: str, dst: str) -> None:
    """Move the file or folder `src` to `dst` (a rename locally; copy then delete on object stores)."""
    if is_remote(src):
        fs, p = filesystem(src)
        fs.mv(p, filesystem(dst)[1], recursive=True)
        return
    os.makedirs(os.path.dirname(os.path.abspath(_local(dst))), exist_ok=True)
    shutil.move(_local(src), _local(dst))


def remove(path: str) -> None:
    """Delete the file at `path` if it exists."""
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm_file(p)


def sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of the file at `path`, streamed."""
    digest = hashlib.sha256()
    with open_file(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
