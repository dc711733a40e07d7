"""A cache of the bundled vendor catalog, parsed and validated, so a run does not parse 186 YAML
files again (about a third of a replay's start-up); and of the public suffix list's ICANN rules.

The cache holds plain data (strings in tuples, lists and dicts) written with marshal, never
objects: loading it runs no code. It is keyed by a hash of everything the result depends on, the bytes of every
bundled vendor file read included, so an edited file is never served stale: the sensor's
version and the source of its loader and validator, the public suffix list the validation
checks host names against, and the Python version (marshal's format). A file of another key, a
corrupt or truncated one, or one another user could have written is not used, and a directory
that cannot be written (a hardened service with a read-only home) means parsing every run,
silently. Only the bundled catalog is cached: an operator's overlay is parsed and validated on
every run.
"""
from __future__ import annotations

import hashlib
import marshal
import os
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sensor import __version__
from sensor.paths import APP

CACHE_ENV = "PHI_SENSOR_CACHE_DIR"
_MAGIC = b"phicat1\n"
_DIGEST_BYTES = 32
_SUFFIX = ".marshal"
_PRUNE_AFTER_SECONDS = 30 * 86400  # a file of another key not written for this long is removed on a write


def cache_dir() -> Path | None:
    """$PHI_SENSOR_CACHE_DIR, else $CACHE_DIRECTORY (systemd's CacheDirectory=), else
    $XDG_CACHE_HOME/phi-sensor (default ~/.cache/phi-sensor); None without a home directory."""
    chosen = os.environ.get(CACHE_ENV) or (os.environ.get("CACHE_DIRECTORY") or "").split(":", 1)[0]
    if chosen:
        return Path(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP
    try:
        return Path.home() / ".cache" / APP
    except RuntimeError:  # no home directory to be found
        return None


def catalog_key(contents: Iterable[tuple[str, bytes]], depends_on: Iterable[str]) -> str | None:
    """The key of what is made of `contents` ((file name, bytes) in order) by the code and data
    in the files `depends_on`; None when one of those cannot be read (no cache then)."""
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    digest.update(f"{__version__}\0{sys.version}\0".encode())
    try:
        for path in depends_on:
            with open(path, "rb") as file:
                _add(digest, path.encode(), file.read())
    except OSError:
        return None
    for name, data in contents:
        _add(digest, name.encode(), data)
    return digest.hexdigest()


def _add(digest: Any, name: bytes, data: bytes) -> None:
    # each part's length first: no two sequences of files hash alike by shifting bytes between them
    digest.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little"))
    digest.update(data)


def load(kind: str, key: str) -> Any:
    """What `store` kept of this kind under `key`, or None (absent, unreadable, corrupt, not ours)."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        fd = os.open(directory / f"{kind}-{key[:32]}{_SUFFIX}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        # a file another user could have written would decide what the sensor detects
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return None
        with open(fd, "rb", closefd=False) as file:
            blob = file.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    head = len(_MAGIC) + _DIGEST_BYTES
    digest = hashlib.blake2b(blob[head:], digest_size=_DIGEST_BYTES).digest()
    if blob[: len(_MAGIC)] != _MAGIC or digest != blob[len(_MAGIC) : head]:
        return None
    try:
        stored_key, value = marshal.loads(blob[head:])
    except (EOFError, ValueError, TypeError):
        return None
    return value if stored_key == key else None


def store(kind: str, key: str, value: Any) -> None:
    """Keep `value` (plain data) of this kind under `key`: written to a temporary file renamed
    over the old one, so a reader sees a whole file or none. Any failure leaves things as they were."""
    directory = cache_dir()
    if directory is None:
        return
    payload = marshal.dumps((key, value))
    blob = _MAGIC + hashlib.blake2b(payload, digest_size=_DIGEST_BYTES).digest() + payload
    name = f"{kind}-{key[:32]}{_SUFFIX}"
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            with open(fd, "wb", closefd=False) as file:
                file.write(blob)
        finally:
            os.close(fd)
        os.replace(temporary, directory / name)
    except (OSError, ValueError):
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        return
    _prune(directory, kind, name)


def _prune(directory: Path, kind: str, keep: str) -> None:
    """Remove the files of this kind and other keys nobody has written for a month (an older version's)."""
    limit = time.time() - _PRUNE_AFTER_SECONDS
    try:
        for entry in os.scandir(directory):
            if entry.name != keep and entry.name.startswith(f"{kind}-") and entry.name.endswith(_SUFFIX):
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
    except OSError:
        pass
