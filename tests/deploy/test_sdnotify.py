"""sd_notify (ppn/_io_sdnotify.py) against a real AF_UNIX datagram socket, and readiness of the
services: READY=1 arrives only once the service accepts connections (issue 17)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ppn._io_sdnotify import notify, notify_ready

PPN = [sys.executable, "-m", "ppn"]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield sock, path
    finally:
        sock.close()


def test_ready_reaches_a_path_socket(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify_ready("serving")
    fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))
    assert fields == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "serving"}


def test_ready_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ppn-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_quiet_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify_ready()
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/not-a-socket")
    assert not notify_ready()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))  # supervisor went away
    assert not notify_ready()


def _ready_then_connect(argv: list[str], sock: socket.socket, path: str) -> None:
    """Start ``argv``; when READY=1 arrives, its listener must already accept a connection."""
    env = {**os.environ, "NOTIFY_SOCKET": path}
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message.split("\n")
        assert f"MAINPID={proc.pid}" in message.split("\n")
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed before READY=1 is sent
        host, port = re.search(r"listening on (\S+):(\d+)$", line.strip()).groups()  # type: ignore[union-attr]
        # The moment READY=1 has arrived, a connection is accepted (not refused).
        socket.create_connection((host, int(port)), timeout=5).close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_orchestration_is_ready_only_when_it_listens(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    _ready_then_connect(
        [*PPN, "orchestration", "serve", "--listen", "127.0.0.1:0", "--any-target"], sock, path
    )


def test_vault_is_ready_only_when_it_listens(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    subprocess.run([*PPN, "vault", "init", "--store", str(store)], check=True, capture_output=True)
    sock, path = notify_socket
    _ready_then_connect(
        [*PPN, "vault", "serve", "--store", str(store), "--listen", "127.0.0.1:0"], sock, path
    )
