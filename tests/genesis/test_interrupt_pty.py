"""Ctrl-C at each wait of each interactive command, under a pseudo-terminal (issue 16, item 4;
RFC-NOTES §1.4, §5.8): exit 130, one line and no traceback, the peer reads "the other operator
cancelled", nothing changed on disk, and no process of the command left (checked by PID).

The Ctrl-C is the terminal's: ``sendintr`` writes the VINTR character to the pty, whose line
discipline sends SIGINT to the foreground process group, as a key press does. Loopback only,
ports picked by the system, mDNS off (``--no-announce``; a joiner is given ``--sponsor`` or
``--listen``).
"""

from __future__ import annotations

import io
import re
import secrets
import sys
import time
from pathlib import Path

import pexpect
import pytest

from genesis import make_code

from .test_ceremony_cli import ROOT, snapshot

WAIT = 90  # seconds for any one expected line: the box is shared and loaded


class Command:
    """One ``ppn`` process on a pty, with everything it wrote kept for the checks."""

    def __init__(self, *args: str) -> None:
        self.log = io.StringIO()
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "ppn", *args],
            cwd=str(ROOT),
            encoding="utf-8",
            timeout=WAIT,
            dimensions=(50, 250),
        )
        self.child.logfile_read = self.log

    def expect(self, pattern: str) -> re.Match[str]:
        self.child.expect(pattern)
        match = self.child.match
        assert isinstance(match, re.Match)
        return match

    def processes(self) -> set[int]:
        """The command's PID and its descendants' now (threads' children included)."""
        found, todo = set(), [self.child.pid]
        while todo:
            pid = todo.pop()
            found.add(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(p) for p in children.read_text().split()]
                except OSError:
                    pass  # the thread or process ended meanwhile
        return found

    def interrupt(self) -> str:
        pids = self.processes()
        self.child.sendintr()
        return self.finish(130, pids)

    def finish(self, status: int, pids: set[int] | None = None) -> str:
        pids = pids or self.processes()
        self.child.expect(pexpect.EOF)
        self.child.close()
        out = self.log.getvalue()
        assert self.child.exitstatus == status, (
            self.child.exitstatus,
            self.child.signalstatus,
            out,
        )
        assert "Traceback" not in out and "ExceptionGroup" not in out, out
        deadline = time.monotonic() + 10
        while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes left behind: {sorted(left)}"
        return out

    def kill(self) -> None:
        if self.child.isalive():
            self.child.kill(9)
            self.child.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie whose parent has not reaped it yet runs nothing


def _sponsor(state: Path, command: str = "genesis") -> Command:
    extra = ["--name", "alpha"] if command == "genesis" else []
    return Command(
        command, "--state", str(state), *extra, "--listen", "127.0.0.1:0", "--no-announce"
    )


def test_genesis_then_invite_interrupted_while_waiting_for_a_joiner(tmp_path: Path) -> None:
    state = tmp_path / "alpha"
    for command in ("genesis", "invite"):  # invite on the mesh the interrupted genesis made
        sponsor = _sponsor(state, command)
        try:
            sponsor.expect("waiting for the joining node")
            before = snapshot(state)
            assert "mesh.json" in before
            out = sponsor.interrupt()
            assert "ppn: interrupted" in out
            assert snapshot(state) == before
        finally:
            sponsor.kill()


@pytest.mark.parametrize(
    "who, where", [("joiner", "sas"), ("joiner", "waiting"), ("sponsor", "sas")]
)
def test_join_interrupted_at_the_sas_prompt_and_while_waiting(
    tmp_path: Path, who: str, where: str
) -> None:
    sponsor = _sponsor(tmp_path / "alpha")
    joiner: Command | None = None
    try:
        hint = sponsor.expect(r"ppn join (\S+) --sponsor (\S+) --state")
        code, address = hint.group(1), hint.group(2)
        sponsor.expect("waiting for the joining node")
        before = snapshot(tmp_path / "alpha")
        joiner = Command(
            "join", code, "--sponsor", address, "--state", str(tmp_path / "beta"), "--name", "beta"
        )
        sponsor.expect(r"\[y/N\]")
        joiner.expect(r"\[y/N\]")
        ctrl_c, other = (joiner, sponsor) if who == "joiner" else (sponsor, joiner)
        if where == "waiting":
            ctrl_c.child.sendline("y")
            ctrl_c.expect("waiting for the other operator")
        assert "ppn: interrupted" in ctrl_c.interrupt()
        assert "the other operator cancelled" in other.finish(14)
        assert snapshot(tmp_path / "alpha") == before
        assert not (tmp_path / "beta").exists()
    finally:
        sponsor.kill()
        if joiner is not None:
            joiner.kill()


def test_join_listen_interrupted_while_waiting_for_the_sponsor(tmp_path: Path) -> None:
    code = str(make_code(1, secrets.token_bytes(5)))
    joiner = Command("join", code, "--listen", "127.0.0.1:0", "--state", str(tmp_path / "beta"))
    try:
        joiner.expect("waiting for the sponsor to dial")
        assert "ppn: interrupted" in joiner.interrupt()
        assert not (tmp_path / "beta").exists()
    finally:
        joiner.kill()


def test_vault_serve_and_orchestration_serve_interrupted(tmp_path: Path) -> None:
    store = tmp_path / "vault"
    init = Command("vault", "init", "--store", str(store))
    init.finish(0)
    for args in (
        ("vault", "serve", "--store", str(store), "--listen", "127.0.0.1:0"),
        ("orchestration", "serve", "--listen", "127.0.0.1:0", "--any-target"),
    ):
        before = snapshot(store)
        server = Command(*args)
        try:
            server.expect(r"listening on 127\.0\.0\.1:\d+")
            assert "ppn: interrupted" in server.interrupt()
            assert snapshot(store) == before
        finally:
            server.kill()
