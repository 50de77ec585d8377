"""A role as a background process, for hosts without systemd (issue 17: service-less mode).

``ppn service install ROLE --no-systemd`` starts the role detached from the terminal (its own
session, stdin from /dev/null, output appended to ``RUN_DIR/ROLE.log``) and waits for the same
``READY=1`` a ``Type=notify`` unit waits for: it hands the child a ``NOTIFY_SOCKET`` of its own
(a datagram socket in the run directory, 0700) so readiness means what it means under systemd,
the role serves. Only then is ``RUN_DIR/ROLE.pid`` written. A PID file that names a live ppn
process means the role already runs, and it is left alone; that makes a second install harmless.
Nothing restarts a role that dies later: that is what systemd is for.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._io_files import atomic_write
from ._doctor import is_ppn_command

__all__ = [
    "BackgroundError",
    "Started",
    "last_line",
    "pid_file",
    "running_pid",
    "start",
    "stop",
]


class BackgroundError(Exception):
    """The role did not become ready (it exited, or no ``READY=1`` in time); says where to look."""


@dataclass(frozen=True, kw_only=True)
class Started:
    pid: int
    pid_file: Path
    log: Path
    already: bool  # it was running before this call


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def _is_ppn(pid: int) -> bool:
    """A live (not zombie) process whose command line is ppn's."""
    try:
        stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    if stat_fields[0] in ("Z", "X"):
        return False
    return is_ppn_command([a.decode(errors="replace") for a in argv])


def running_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process is a running ppn; a stale file counts as none."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _is_ppn(pid) else None


def last_line(log: Path) -> str:
    """The last non-blank line of ``log`` (its tail only), or ``""``."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _ready(datagram: bytes) -> bool:
    return "READY=1" in datagram.decode(errors="replace").split("\n")


def start(
    argv: Sequence[str],
    *,
    name: str,
    run_dir: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Started:
    """Start ``argv`` in the background and return once it sent ``READY=1``."""
    run_dir = run_dir.absolute()  # NOTIFY_SOCKET must be an absolute path (sd_notify(3))
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_path, log = pid_file(run_dir, name), run_dir / f"{name}.log"
    pid = running_pid(pid_path)
    if pid is not None:
        return Started(pid=pid, pid_file=pid_path, log=log, already=True)
    sock_path = run_dir / f".{name}.notify"
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.bind(str(sock_path))
        try:
            os.chmod(sock_path, 0o600)
            child_env = {**(os.environ if env is None else env), "NOTIFY_SOCKET": str(sock_path)}
            # The log may name addresses and members: readable by this user only.
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "ab") as out:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    start_new_session=True,  # no terminal's Ctrl-C or hang-up reaches it
                )
            _wait_ready(proc, sock, name=name, log=log, timeout=timeout, progress=progress)
        finally:
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()
    atomic_write(pid_path, f"{proc.pid}\n".encode(), mode=0o644)
    return Started(pid=proc.pid, pid_file=pid_path, log=log, already=False)


def _wait_ready(
    proc: subprocess.Popen[bytes],
    sock: socket.socket,
    *,
    name: str,
    log: Path,
    timeout: float,
    progress: Callable[[str], None],
) -> None:
    started = time.monotonic()
    next_note = started + 10
    while True:
        now = time.monotonic()
        if now >= started + timeout:
            _end(proc)
            raise BackgroundError(
                f"{name} sent no READY=1 within {timeout:g} s and was stopped; see {log}"
                + (f" (last line: {last_line(log)})" if last_line(log) else "")
            )
        if now >= next_note:
            progress(f"waiting for {name} to be ready ({now - started:.0f} s, log {log})")
            next_note = now + 10
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable and _ready(sock.recv(4096)):
            return
        status = proc.poll()
        if status is not None:
            raise BackgroundError(
                f"{name} exited with status {status} before it was ready: "
                + (last_line(log) or f"see {log}")
            )


def _end(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def stop(path: Path, *, timeout: float = 30) -> int | None:
    """SIGTERM the ppn process ``path`` names, wait for it to end (SIGKILL after ``timeout``),
    remove the file. Returns the pid, or ``None`` when nothing ran (a stale file is removed)."""
    pid = running_pid(path)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_ppn(pid):
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return pid
