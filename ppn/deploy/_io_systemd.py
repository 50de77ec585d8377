"""Install, remove and inspect the role units on this host (issue 17): files and systemctl."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .._io_files import atomic_write

__all__ = [
    "SystemdError",
    "booted",
    "parse_show",
    "remove_unit",
    "systemctl",
    "unit_state",
    "write_unit",
]

UNIT_DIR = Path("/etc/systemd/system")


class SystemdError(Exception):
    """systemd is absent or refused; the message says which and what was done before."""


def booted() -> bool:
    """Whether systemd is this host's init (sd_booted(3): the directory it creates at boot)."""
    return os.path.isdir("/run/systemd/system")


def systemctl(*args: str) -> str:
    exe = shutil.which("systemctl")
    if exe is None:
        raise SystemdError("systemctl is not installed")
    done = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise SystemdError(
            f"systemctl {' '.join(args)} failed: {detail[-1] if detail else done.returncode}"
        )
    return done.stdout


def write_unit(directory: Path, file_name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    atomic_write(path, text.encode("utf-8"), mode=0o644)
    return path


def remove_unit(directory: Path, file_name: str) -> bool:
    try:
        (directory / file_name).unlink()
    except FileNotFoundError:
        return False
    return True


def unit_state(unit: str) -> dict[str, str]:
    """ActiveState, SubState, UnitFileState, Result, MainPID, LoadState and NRestarts of
    ``unit`` (systemctl show)."""
    return parse_show(
        systemctl(
            "show",
            unit,
            "--property=ActiveState,SubState,UnitFileState,Result,MainPID,LoadState,NRestarts",
        )
    )


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show``'s ``KEY=VALUE`` lines as a dict."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
