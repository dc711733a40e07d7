"""How the sensor creates the files it writes: private to its user (0600; 0640 when the service
shares its group, see SECURITY.md), directories 0700, and a clear exit 2 when a path is unusable."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

from sensor.errors import ConfigError

# Set (to any non-empty value) by a service unit that gives the sensor a group meant to read its output.
GROUP_READABLE_ENV = "PHI_SENSOR_GROUP_READABLE"


def file_mode() -> int:
    return 0o640 if os.environ.get(GROUP_READABLE_ENV) else 0o600


def dir_mode() -> int:
    return 0o750 if os.environ.get(GROUP_READABLE_ENV) else 0o700


def private_dir(path: Path, what: str = "output") -> None:
    """Create `path` (and missing parents) for the sensor's own files; a directory made here gets
    dir_mode(), one that exists is left as the operator made it."""
    if path.is_dir():
        return
    try:
        path.mkdir(parents=True, mode=dir_mode())
        os.chmod(path, dir_mode())  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot create the {what} directory: {exc.strerror or exc}") from None


def open_append(path: Path, buffering: int = -1, what: str = "output") -> BinaryIO:
    """Open for appending, creating the file with file_mode(); an unusable path is exit 2."""
    private_dir(path.parent, what)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), file_mode())
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot open the {what} file for writing: {exc.strerror or exc}") from None
    return os.fdopen(fd, "ab", buffering=buffering)


def create_private(path: Path) -> None:
    """Make sure `path` exists with file_mode() before a library (SQLite) opens it with its own."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), file_mode())
    os.close(fd)


# File systems on which O_APPEND writes of two processes of this host each land whole at the end;
# on a network one (NFS, SMB, FUSE) the client may interleave or reorder them.
_LOCAL_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "zfs", "f2fs", "jfs", "reiserfs", "tmpfs", "ramfs", "overlay",
})
_MOUNTS = Path("/proc/self/mounts")


def appends_atomically(path: Path, mounts: str | None = None) -> bool:
    """Whether `path` lies on a local file system, by the mount table (`mounts`: its text, else
    /proc/self/mounts); False when that cannot be told."""
    try:
        real = os.path.realpath(path)
        table = _MOUNTS.read_text(encoding="utf-8", errors="replace") if mounts is None else mounts
    except OSError:
        return False
    deepest, kind = "", ""
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape.group(1), 8)), fields[1])  # \040: a space
        inside = point == "/" or real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(deepest):  # (a later mount over the same point hides the earlier)
            deepest, kind = point, fields[2]
    return kind in _LOCAL_FILE_SYSTEMS
