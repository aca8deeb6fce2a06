"""Atomic file writes: a reader never sees a half-written result, and a crash keeps the previous version.

Files get the permissions an ordinary `open()` would give (0666 minus the process umask), so teammates, web servers
and cluster jobs under other users can read results; the folder is fsynced after the rename so the new name
survives a power loss."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^/]*)?$|^\.tmp[A-Za-z0-9]{6}$")
"""Ours (atomic_path: .<name>.<8 chars>.tmp<suffixes>) and safetensors' own: since 0.8 `save_file` writes through
a `.tmp<6 chars>` file of Rust's tempfile crate in the same folder (found by the 20-SIGKILL test)."""


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` leaves when its process is killed between writing and renaming
    (SIGKILL, OOM killer, power loss); a checkpoint's can be 0.5 GB. Only for a folder this process alone writes
    (a training job owns its object's folder). Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.is_file() and _TEMP.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def current_umask() -> int:
    """The process umask: from /proc on Linux (thread-safe), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


@contextmanager
def located_os_errors() -> Iterator[None]:
    """A stage's command-line body: a full disk, a read-only or missing folder ends it with one line naming the file
    and the fix instead of a traceback (its outputs are written atomically, so nothing half-written is left)."""
    import errno

    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fix = {
            errno.ENOSPC: "the disk is full: free space and run again",
            errno.EDQUOT: "the disk quota is used up: free space and run again",
            errno.EROFS: "the file system is read-only: choose a writable results folder",
            errno.EACCES: "permission denied: fix the folder's permissions and run again",
            errno.EPERM: "permission denied: fix the folder's permissions and run again",
        }.get(exc.errno, f"{exc.strerror or exc}; check the path and run again")
        raise SystemExit(f"error: {where}{fix}") from None
