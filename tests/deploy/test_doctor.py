"""`ppn doctor` (issue 17): one test per problem it reports, each under the real condition
(an unprivileged user, a PATH without wireguard-go, a port a test socket holds, a 0755 state
directory, a member endpoint nothing listens on, an installed unit without systemd)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genesis._io_state import new_node
from ppn.deploy._doctor import EARLIEST_SANE, Severity, clock_finding
from ppn.deploy._io_doctor import (
    check_endpoints,
    check_ports,
    check_privileges,
    check_services,
    check_state,
    check_wireguard,
    probe,
)
from ppn.mesh._io_state import load_mesh_files, save_roster
from ppn.mesh._roster import Roster
from tests.ppn.test_mesh_state import genesis_dir

PPN = [sys.executable, "-m", "ppn"]
ROOT = os.geteuid() == 0
NOBODY = 65534


def _doctor(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PPN, "doctor", "--state", str(state), "--json", "--probe-timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_net_admin_blocks() -> None:
    setpriv = shutil.which("setpriv")
    if not ROOT or setpriv is None:
        pytest.skip("needs root and setpriv(1) to run a process without CAP_NET_ADMIN")
    code = (
        "from ppn.deploy._io_doctor import check_privileges as c; "
        "f = c(); print(f.severity.value, f.message)"
    )
    # Root whose bounding set lacks CAP_NET_ADMIN (a container's root) gets none after exec.
    done = subprocess.run(
        [setpriv, "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.startswith("FAIL root without CAP_NET_ADMIN"), done.stderr
    assert check_privileges().severity is Severity.OK  # this test process: root with it


def test_no_module_and_no_wireguard_go_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    no_modules = tmp_path / "sys-module"
    no_modules.mkdir()
    finding = check_wireguard(no_modules)
    assert finding.severity is Severity.BLOCKS
    assert "wireguard" in finding.message
    # wireguard-go on PATH is enough ...
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "wireguard-go"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert check_wireguard(no_modules).severity is Severity.OK
    # ... and so is the loaded module, with no wireguard-go.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (no_modules / "wireguard").mkdir()
    assert check_wireguard(no_modules).severity is Severity.OK


def test_a_port_held_by_another_process_blocks_and_names_it() -> None:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        t, u = tcp.getsockname()[1], udp.getsockname()[1]
        findings = check_ports([("tcp", t, "test tcp"), ("udp", u, "test udp")])
    assert [f.severity for f in findings] == [Severity.BLOCKS, Severity.BLOCKS]
    assert f"TCP {t} (test tcp) is taken by pid {os.getpid()}" in findings[0].message
    assert f"UDP {u} (test udp) is taken by pid {os.getpid()}" in findings[1].message
    # Once the socket is closed the port is free again.
    assert check_ports([("tcp", t, "test tcp")])[0].severity is Severity.OK


def test_a_port_held_by_ppn_itself_is_fine() -> None:
    proc = subprocess.Popen(
        [*PPN, "orchestration", "serve", "--listen", "127.0.0.1:0", "--any-target"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        finding = check_ports([("tcp", port, "orchestration")])[0]
        assert finding.severity is Severity.OK
        assert f"held by ppn (pid {proc.pid})" in finding.message
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_clock_before_the_project_existed_blocks() -> None:
    assert clock_finding(0.0, None).severity is Severity.BLOCKS
    assert clock_finding(EARLIEST_SANE + 1, False).severity is Severity.WARNS
    assert clock_finding(EARLIEST_SANE + 1, True).severity is Severity.OK


def test_state_directory_problems(tmp_path: Path) -> None:
    state = tmp_path / "state"
    missing = check_state(state)
    assert missing.severity is Severity.BLOCKS and "ppn join" in missing.message
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    loose = check_state(state)
    assert loose.severity is Severity.BLOCKS and f"chmod 0700 {state}" in loose.message
    os.chmod(state, 0o700)
    assert check_state(state).severity is Severity.OK
    if ROOT:
        os.chown(state, NOBODY, NOBODY)
        owner = check_state(state)
        assert owner.severity is Severity.BLOCKS and "chown" in owner.message


def test_the_command_exits_70_and_says_what_to_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)
    done = _doctor(state)
    assert done.returncode == 70, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is False
    state_rows = [f for f in doc["findings"] if f["check"] == "state"]
    assert state_rows[0]["severity"] == "FAIL" and "chmod 0700" in state_rows[0]["message"]
    text = subprocess.run(
        [*PPN, "doctor", "--state", str(state)], capture_output=True, text=True, timeout=120
    ).stdout
    assert any(line.startswith("FAIL  state: ") for line in text.splitlines())


def test_probes_tell_refusal_from_silence() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        up, tp = udp.getsockname()[1], tcp.getsockname()[1]
        assert probe("udp", "127.0.0.1", up, 0.3) is None  # a listener stays silent
        assert probe("tcp", "127.0.0.1", tp, 0.3) is None
    assert probe("udp", "127.0.0.1", up, 0.3) == "Connection refused"
    assert probe("tcp", "127.0.0.1", tp, 0.3) == "Connection refused"


def test_an_unreachable_member_endpoint_warns(tmp_path: Path) -> None:
    directory, _ = genesis_dir(tmp_path / "g")
    files = load_mesh_files(directory)
    roster = Roster.found(
        files.identity, name="genesis", wg_key=files.wg.public, now=5, network=files.cidr
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # closed when the block ends: refused from then on
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as alive:
        alive.bind(("127.0.0.1", 0))
        for name, port in (("dead", dead), ("alive", alive.getsockname()[1])):
            node = new_node(name, ())
            roster.admit(
                files.identity,
                name=name,
                identity=node.identity.public,
                wg_key=node.wg.public,
                now=6,
                endpoints=[f"127.0.0.1:{port}"],
            )
        save_roster(directory, roster, generation=1, baseline=[])
        findings = {f.message.split()[0]: f for f in check_endpoints(directory, 0.3)}
    assert set(findings) == {"dead", "alive"}  # the node itself is not probed
    assert findings["dead"].severity is Severity.WARNS
    assert f"UDP 127.0.0.1:{dead}: Connection refused" in findings["dead"].message
    assert findings["alive"].severity is Severity.OK


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs here")
def test_installed_units_without_systemd_warn(tmp_path: Path) -> None:
    assert check_services(tmp_path)[0].severity is Severity.OK  # nothing installed
    (tmp_path / "ppn-agent.service").write_text("[Service]\n")
    finding = check_services(tmp_path)[0]
    assert finding.severity is Severity.WARNS and "systemd is not running" in finding.message
