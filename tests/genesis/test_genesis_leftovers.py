"""Issue 16, item 4 leftovers, through the real ``ppn`` CLI on loopback: a busy pairing port
leaves no half-made mesh, waits show progress, and the joiner's wg-quick file names the sponsor
it dialled."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from genesis import make_code

from .test_ceremony_cli import ROOT, answer, event, finish, ppn


def test_genesis_on_a_busy_port_writes_nothing_and_a_rerun_works(tmp_path: Path) -> None:
    state = tmp_path / "alpha"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        failed = subprocess.run(
            [
                sys.executable,
                "-m",
                "ppn",
                "genesis",
                "--state",
                str(state),
                "--name",
                "alpha",
                "--listen",
                f"127.0.0.1:{port}",
                "--no-announce",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert failed.returncode == 1, failed.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in failed.stderr
    assert "created mesh" not in failed.stderr and "Traceback" not in failed.stderr
    assert not state.exists()  # before: the mesh was written, and a rerun said "use 'ppn invite'"
    rerun = ppn(
        "genesis",
        "--state",
        str(state),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--events",
        "json",
    )
    try:
        assert event(rerun)["event"] == "code"
        assert (state / "mesh.json").is_file()
    finally:
        rerun.kill()
        rerun.wait()


def _pty(*args: str) -> Any:
    import pexpect

    return pexpect.spawn(
        sys.executable, ["-m", "ppn", *args], cwd=str(ROOT), encoding="utf-8", timeout=90
    )


def test_waits_show_progress_on_a_terminal(tmp_path: Path) -> None:
    """One line rewritten in place (\\r) each second: elapsed and the time left in the window or
    the SAS step; a join still completes around it."""
    import pexpect

    sponsor = _pty(
        "genesis",
        "--state",
        str(tmp_path / "a"),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--no-announce",
    )
    listener = _pty(
        "join",
        str(make_code(1, secrets.token_bytes(5))),
        "--listen",
        "127.0.0.1:0",
        "--state",
        str(tmp_path / "c"),
    )
    joiner = None
    try:
        hint = sponsor.expect(r"ppn join (\S+) --sponsor (\S+) --state")
        code, address = sponsor.match.group(1), sponsor.match.group(2)
        sponsor.expect(
            r"\r\x1b\[K  waiting for the joining node: 0:0\d elapsed, 9:5\d left in the window"
        )
        listener.expect(
            r"\r\x1b\[K  waiting for the sponsor to dial in: 0:0\d elapsed, 9:5\d left in the window"
        )
        joiner = _pty(
            "join",
            code,
            "--sponsor",
            address,
            "--state",
            str(tmp_path / "b"),
            "--name",
            "beta",
            "--endpoint",
            "127.0.0.1:51821",
        )
        joiner.expect(r"\[y/N\]")
        sponsor.expect(r"\[y/N\]")
        joiner.sendline("y")
        joiner.expect(
            r"\r\x1b\[K  waiting for the other operator: 0:0\d elapsed, 1:5\d left in the SAS step"
        )
        sponsor.sendline("y")
        for proc in (sponsor, joiner):
            proc.expect(pexpect.EOF)
            proc.close()
            assert proc.exitstatus == 0, proc.before
        assert hint is not None
    finally:
        for proc in (sponsor, listener, joiner):
            if proc is not None and proc.isalive():
                proc.kill(9)
                proc.close()


@pytest.mark.slow
def test_waits_show_a_progress_line_every_10_s_without_a_terminal(tmp_path: Path) -> None:
    """Without a terminal, a plain line every ~10 s (no \\r); --events json prints nothing more."""
    text = ppn(
        "genesis",
        "--state",
        str(tmp_path / "a"),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--no-announce",
    )
    listen = ppn(
        "join",
        str(make_code(1, secrets.token_bytes(5))),
        "--listen",
        "127.0.0.1:0",
        "--state",
        str(tmp_path / "c"),
    )
    quiet = ppn(
        "genesis",
        "--state",
        str(tmp_path / "j"),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--no-announce",
        "--events",
        "json",
    )
    procs = (text, listen, quiet)
    try:
        time.sleep(16)  # start-up (a loaded box: seconds) + the first 10 s
    finally:
        for proc in procs:
            proc.terminate()
    outs = [proc.communicate(timeout=30) for proc in procs]
    err = outs[0][1]
    assert "\r" not in err
    assert re.search(
        r"\n  waiting for the joining node: 0:1\d elapsed, 9:[45]\d left in the window\n", err
    ), err
    assert len(re.findall("elapsed", err)) == 1, err  # one line per 10 s, not per second
    assert re.search(
        r"\n  waiting for the sponsor to dial in: 0:1\d elapsed, 9:[45]\d left in the window\n",
        outs[1][1],
    ), outs[1][1]
    stdout, stderr = outs[2]
    assert [json.loads(line)["event"] for line in stdout.splitlines()] == ["code"]
    assert "elapsed" not in stderr


def test_a_fresh_join_shows_its_roster_in_status_and_dials_its_sponsor(tmp_path: Path) -> None:
    """The sponsor recorded no endpoint (no --endpoint): the joiner's wg-quick file names the
    host it dialled, and 'ppn status' before 'ppn up' lists the ceremony's members, marked as
    not yet applied (before: no Endpoint line, and an empty table)."""
    sponsor = ppn(
        "genesis",
        "--state",
        str(tmp_path / "alpha"),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--no-announce",
        "--events",
        "json",
    )
    try:
        code = event(sponsor)
        joiner = ppn(
            "join",
            code["code"],
            "--sponsor",
            code["address"],
            "--state",
            str(tmp_path / "beta"),
            "--name",
            "beta",
            "--endpoint",
            "127.0.0.1:51821",
            "--events",
            "json",
        )
        assert event(joiner)["event"] == "sas" and event(sponsor)["event"] == "sas"
        answer(joiner, "yes")
        answer(sponsor, "yes")
        assert finish(sponsor, joiner) == [0, 0]
    finally:
        if sponsor.poll() is None:
            sponsor.kill()
            sponsor.wait()
    conf = (tmp_path / "beta" / "wg-ppn0.conf").read_text()
    alpha_peer = conf.split("# alpha", 1)[1]
    assert "Endpoint = 127.0.0.1:51820" in alpha_peer, conf

    def status(*extra: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ppn",
                "status",
                "--state",
                str(tmp_path / "beta"),
                "--interface",
                "ppnnone0",
                *extra,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=True,
        )
        return done.stdout

    shown = json.loads(status("--json"))
    assert shown["roster_applied"] is False
    assert [(m["name"], m["path"], m["applied"]) for m in shown["members"]] == [
        ("alpha", "not applied", False),
        ("beta", "self", False),
    ]
    text = status()
    assert "not yet applied" in text
    assert re.search(r"\nalpha +10\.8\.0\.1 +genesis +not applied", text), text
