"""Crash-safe file replacement, shared by every state directory (ceremony, mesh agent)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never a mix.

    Temporary file in the same directory, created with ``mode`` (and chmod-ed to it, so a umask
    cannot widen it), fsync, rename over ``path``, fsync of the directory so the rename itself
    survives a crash. A failure removes the temporary file and leaves ``path`` untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
