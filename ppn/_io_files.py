"""Crash-safe file replacement, shared by every state directory (ceremony, mesh agent), and
crash-safe creation of a large file written as a stream (a vault archive)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_create", "atomic_write"]


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


@contextmanager
def atomic_create(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Write a new file at ``path`` as a stream, appearing whole or not at all.

    For files too large for :func:`atomic_write`'s one buffer (a vault archive). The stream is a
    temporary file in the same directory (``mode``, whatever the umask), fsync-ed when the block
    ends, then linked to ``path`` — which fails if ``path`` exists, so nothing is overwritten —
    and the directory fsync-ed. Any failure (a full disk, an exception in the block) removes the
    temporary file and leaves no ``path``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as stream:
            yield stream
            stream.flush()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.link(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
