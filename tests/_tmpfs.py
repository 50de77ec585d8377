"""A small tmpfs for the disk-full and read-only tests (root only): mounted fresh, unmounted
after. In CI (``PPN_REQUIRE_NETNS=1``) a tmpfs that cannot be mounted fails the test instead of
skipping it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "small_tmpfs"]


@contextlib.contextmanager
def small_tmpfs(size: str = "2m") -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("PPN_REQUIRE_NETNS") == "1":
            pytest.fail("CI runs as root and must mount a tmpfs for the disk-error tests")
        pytest.skip("needs root to mount a tmpfs")
    mnt = Path(tempfile.mkdtemp(prefix="ppn-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mnt.rmdir()
        if os.environ.get("PPN_REQUIRE_NETNS") == "1":
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros into ``directory/name`` until the file system is full."""
    path = directory / name
    with contextlib.suppress(OSError), open(path, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return path
