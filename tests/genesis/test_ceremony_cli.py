"""Two processes through the real CLI with ``--events json``: success and failure statuses."""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genesis import make_code, parse_code

ROOT = Path(__file__).resolve().parents[2]


def ppn(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ppn", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        **kw,
    )


def event(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    value: dict[str, Any] = json.loads(line)
    return value


def answer(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def start_sponsor(state: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = ppn(
        "genesis",
        "--state",
        str(state),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        "127.0.0.1:51820",
        "--events",
        "json",
    )
    code = event(proc)
    assert code["event"] == "code"
    return proc, code


def start_joiner(state: Path, code: str, address: str) -> subprocess.Popen[str]:
    return ppn(
        "join",
        code,
        "--sponsor",
        address,
        "--state",
        str(state),
        "--name",
        "beta",
        "--endpoint",
        "127.0.0.1:51821",
        "--events",
        "json",
    )


def finish(*procs: subprocess.Popen[str]) -> list[int]:
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=30))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes


def test_two_processes_join(tmp_path: Path) -> None:
    sponsor, code = start_sponsor(tmp_path / "alpha")
    joiner = start_joiner(tmp_path / "beta", code["code"], code["address"])
    j_sas, s_sas = event(joiner), event(sponsor)
    assert j_sas["event"] == s_sas["event"] == "sas"
    assert j_sas["sas"] == s_sas["sas"] and len(j_sas["sas"].replace(" ", "")) == 7
    assert j_sas["peer"]["name"] == "alpha" and s_sas["peer"]["name"] == "beta"
    answer(joiner, "yes")
    answer(sponsor, "yes")
    j_done, s_done = event(joiner), event(sponsor)
    assert finish(sponsor, joiner) == [0, 0]
    assert j_done["event"] == s_done["event"] == "joined"
    assert j_done["name"] == s_done["name"] == "beta"
    assert j_done["address"] == s_done["address"] == "10.8.0.2"
    roster = json.loads((tmp_path / "alpha" / "mesh.json").read_text())["roster"]
    assert [(m["name"], m["address"]) for m in roster] == [
        ("alpha", "10.8.0.1"),
        ("beta", "10.8.0.2"),
    ]
    assert roster[1]["endpoints"] == ["127.0.0.1:51821"]
    beta_node = json.loads((tmp_path / "beta" / "node.json").read_text())
    assert roster[1]["wg"] == beta_node["wg"] == s_sas["peer"]["wg"]
    for key in ("identity.key", "wireguard.key"):
        assert stat.S_IMODE((tmp_path / "beta" / key).stat().st_mode) == 0o600
    assert (tmp_path / "beta" / "wg-ppn0.conf").read_text().count("[Peer]") == 1

    # A second join on the joined state directory refuses before any network traffic.
    again = ppn("join", code["code"], "--sponsor", "127.0.0.1:9", "--state", str(tmp_path / "beta"))
    _, err = again.communicate(timeout=30)
    assert again.returncode == 18 and "already a member" in err


def _wrong_code_for(code: str) -> str:
    window = parse_code(code).window
    while True:
        guess = str(make_code(window, secrets.token_bytes(5)))
        if guess != code:
            return guess


@pytest.mark.parametrize("case", ["wrong_code", "sas_rejected"])
def test_failures_leave_both_state_directories_untouched(tmp_path: Path, case: str) -> None:
    sponsor, code = start_sponsor(tmp_path / "alpha")
    (tmp_path / "beta").mkdir()
    before = snapshot(tmp_path / "alpha"), snapshot(tmp_path / "beta")
    typed = _wrong_code_for(code["code"]) if case == "wrong_code" else code["code"]
    joiner = start_joiner(tmp_path / "beta", typed, code["address"])
    if case == "sas_rejected":
        assert event(joiner)["event"] == "sas" and event(sponsor)["event"] == "sas"
        answer(joiner, "no")
    j_fail, s_fail = event(joiner), event(sponsor)
    statuses = finish(sponsor, joiner)
    token, status = ("key_confirmation", 11) if case == "wrong_code" else ("sas_rejected", 12)
    assert j_fail["event"] == s_fail["event"] == "failed"
    assert j_fail["reason"] == s_fail["reason"] == token
    assert statuses == [status, status]
    assert (snapshot(tmp_path / "alpha"), snapshot(tmp_path / "beta")) == before


def test_a_typo_is_caught_before_any_connection(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = str(make_code(1, secrets.token_bytes(5)))
    typo = code[:-3] + ("A" if code[-3] != "A" else "B") + code[-2:]
    proc = ppn(
        "join",
        typo,
        "--sponsor",
        f"127.0.0.1:{port}",
        "--state",
        str(tmp_path / "s"),
        "--events",
        "json",
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 10
    assert json.loads(out)["reason"] == "bad_code"
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert not (tmp_path / "s").exists()


def test_help_documents_exit_statuses() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ppn", "join", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    for status in range(10, 20):
        assert f"\n  {status}  " in out


def test_demo(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "ppn", "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "they match" in result.stdout and "beta     10.8.0.2" in result.stdout


def test_invite_on_a_member_admits_a_third_node(tmp_path: Path) -> None:
    sponsor, code = start_sponsor(tmp_path / "alpha")
    joiner = start_joiner(tmp_path / "beta", code["code"], code["address"])
    for proc in (joiner, sponsor):
        assert event(proc)["event"] == "sas"
        answer(proc, "yes")
    assert event(joiner)["event"] == event(sponsor)["event"] == "joined"
    assert finish(sponsor, joiner) == [0, 0]
    # beta, now a member, sponsors gamma; gamma learns alpha and beta, gets the next address.
    invite = ppn(
        "invite", "--state", str(tmp_path / "beta"), "--listen", "127.0.0.1:0", "--events", "json"
    )
    code = event(invite)
    gamma = ppn(
        "join",
        code["code"].lower().replace("-", " "),
        "--sponsor",
        code["address"],
        "--state",
        str(tmp_path / "gamma"),
        "--name",
        "gamma",
        "--events",
        "json",
    )
    for proc in (gamma, invite):
        assert event(proc)["event"] == "sas"
        answer(proc, "y")
    done = event(gamma)
    assert event(invite)["event"] == "joined"
    assert finish(invite, gamma) == [0, 0]
    assert done["address"] == "10.8.0.3"
    assert [m["name"] for m in done["roster"]] == ["alpha", "beta", "gamma"]
    beta_roster = json.loads((tmp_path / "beta" / "mesh.json").read_text())["roster"]
    assert [m["name"] for m in beta_roster] == ["alpha", "beta", "gamma"]


def test_unreachable_sponsor(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    code = str(make_code(1, secrets.token_bytes(5)))
    proc = ppn("join", code, "--sponsor", f"127.0.0.1:{port}", "--state", str(tmp_path / "s"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 14 and "could not reach" in err
    assert not (tmp_path / "s").exists()
