"""`ppn doctor` (issue 17): one test per problem it reports, each under the real condition
where one can be made here (an unprivileged user, a PATH without wireguard-go, a module tree
with an unloaded wireguard.ko, a port a test socket holds — the default one, or the one the
configuration gives the service —, a 0755 state directory, a file where the directory should
be, a member endpoint nothing listens on, an installed unit without systemd), and the unit
states as `systemctl show` prints them (this host runs no systemd; RFC-NOTES §13.4)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from genesis._io_state import new_node
from interop.netns import Lab
from ppn import ports
from ppn.deploy._doctor import (
    EARLIEST_SANE,
    Severity,
    clock_finding,
    service_finding,
    service_ports,
)
from ppn.deploy._io_doctor import (
    check_background,
    check_endpoints,
    check_ports,
    check_privileges,
    check_services,
    check_state,
    check_wireguard,
    probe,
    wireguard_port_endpoints,
)
from ppn.deploy._io_systemd import parse_show
from ppn.mesh._io_state import load_mesh_files, save_roster
from ppn.mesh._roster import Roster
from tests.ppn.test_mesh_state import genesis_dir

PPN = [sys.executable, "-m", "ppn"]
ROOT = os.geteuid() == 0
NOBODY = 65534
ROOT_DIR = Path(__file__).resolve().parents[2]


def _doctor(
    state: Path, *global_args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PPN, *global_args, "doctor", "--state", str(state), "--json", "--probe-timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
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


def test_an_installed_module_that_is_not_loaded_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # and no wireguard-go
    loaded = tmp_path / "sys-module"
    loaded.mkdir()
    tree = tmp_path / "lib-modules"
    (tree / "kernel" / "drivers" / "net" / "wireguard").mkdir(parents=True)
    finding = check_wireguard(loaded, tree)
    assert finding.severity is Severity.BLOCKS and "no WireGuard kernel module" in finding.message
    (tree / "kernel" / "drivers" / "net" / "wireguard" / "wireguard.ko.xz").write_bytes(b"")
    finding = check_wireguard(loaded, tree)
    assert finding.severity is Severity.BLOCKS
    assert finding.message.endswith("installed but not loaded: modprobe wireguard")


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
    a_file = tmp_path / "file"
    a_file.write_text("")
    not_dir = check_state(a_file)
    assert not_dir.severity is Severity.BLOCKS and not_dir.message.endswith("is not a directory")
    unreadable = check_state(a_file / "state")  # ENOTDIR: not "missing", and no traceback
    assert unreadable.severity is Severity.BLOCKS
    assert unreadable.message.startswith(f"cannot read {a_file / 'state'}: ")
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
    (tmp_path / "ppn-vault@.service").write_text("[Service]\n")
    assert check_services(tmp_path)[0].severity is Severity.OK  # a template starts nothing
    (tmp_path / "multi-user.target.wants").mkdir()
    (tmp_path / "multi-user.target.wants" / "ppn-vault@sales.service").symlink_to(
        tmp_path / "ppn-vault@.service"
    )
    finding = check_services(tmp_path)[0]  # an enabled instance is a unit that should run
    assert finding.severity is Severity.WARNS and "systemd is not running" in finding.message
    (tmp_path / "multi-user.target.wants" / "ppn-vault@sales.service").unlink()
    (tmp_path / "ppn-agent.service").write_text("[Service]\n")
    finding = check_services(tmp_path)[0]
    assert finding.severity is Severity.WARNS and "systemd is not running" in finding.message


def _show(active: str, result: str, sub: str = "dead") -> dict[str, str]:
    # As `systemctl show UNIT --property=...` prints it.
    return parse_show(
        f"ActiveState={active}\nSubState={sub}\nUnitFileState=enabled\nResult={result}\n"
        "MainPID=0\nLoadState=loaded\nNRestarts=7\n"
    )


def test_a_failed_unit_blocks_and_an_inactive_one_warns() -> None:
    failed = service_finding("ppn-fleet.service", agent=False, state=_show("failed", "exit-code"))
    assert failed.severity is Severity.BLOCKS
    assert failed.message == (
        "ppn-fleet.service is failed (exit-code): journalctl -u ppn-fleet.service, "
        "then systemctl restart ppn-fleet.service"
    )
    inactive = service_finding("ppn-fleet.service", agent=False, state=_show("inactive", "success"))
    assert inactive.severity is Severity.WARNS
    # The agent is the node: an agent that is not active blocks, failed or not.
    agent = service_finding("ppn-agent.service", agent=True, state=_show("inactive", "success"))
    assert agent.severity is Severity.BLOCKS
    active = service_finding("ppn-agent.service", agent=True, state=_show("active", "success"))
    assert active.severity is Severity.OK
    first_start = {**_show("activating", "success", "start"), "NRestarts": "0"}
    starting = service_finding("ppn-fleet.service", agent=False, state=first_start)
    assert starting.severity is Severity.WARNS


def _blocked_ports(
    done: subprocess.CompletedProcess[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """A doctor run that found a blocking port (exit 70): its port findings, and the messages
    of those that FAIL."""
    assert done.returncode == 70, done.stderr
    rows = [f for f in json.loads(done.stdout)["findings"] if f["check"] == "ports"]
    return rows, [f["message"] for f in rows if f["severity"] == "FAIL"]


def test_a_unit_that_keeps_failing_and_restarting_blocks() -> None:
    # What systemd 252 showed for a unit exiting 1 every time, restarted every 2 s: it never
    # hit the start limit, so it was never "failed" (found under a real systemd, RFC-NOTES §13.4).
    looping = _show("activating", "exit-code", "auto-restart")
    finding = service_finding("ppn-vmhost.service", agent=False, state=looping)
    assert finding.severity is Severity.BLOCKS
    assert finding.message.startswith(
        "ppn-vmhost.service is restarting after a failure (restart 7) (exit-code): "
    )
    # ... and in between it is starting again, its result reset: the restart count says it.
    starting_again = _show("activating", "success", "start")
    assert service_finding("ppn-vmhost.service", agent=False, state=starting_again).severity is (
        Severity.BLOCKS
    )


def test_doctor_checks_the_ports_the_configuration_gives(tmp_path: Path) -> None:
    """A service moved to another port in ppn.toml (or by a variable) is checked there, with
    the line that moved it named; the default port it left is not checked any more."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("0.0.0.0", 0))
        tcp.listen()
        udp.bind(("0.0.0.0", 0))
        held, held_udp = tcp.getsockname()[1], udp.getsockname()[1]
        conf = tmp_path / "ppn.toml"
        conf.write_text(f"[up]\ncontrol-port = {held}\nlisten-port = {held_udp}\n")
        env = {**os.environ, "PPN_VAULT_SERVE_LISTEN": f"127.0.0.1:{held}"}
        done = _doctor(state, "--config", str(conf), env=env)
    rows, taken = _blocked_ports(done)
    assert any(
        m.startswith(
            f"TCP {held} (PPN control (ppn up), set in {conf} line 2 and vault (ppn vault serve), "
            "set in env PPN_VAULT_SERVE_LISTEN) is taken by pid "
        )
        for m in taken
    ), taken
    assert any(
        m.startswith(f"UDP {held_udp} (WireGuard, set in {conf} line 3) is taken by pid")
        for m in taken
    ), taken
    checked = {m["message"].split(" (")[0] for m in rows}
    assert f"TCP {ports.CONTROL_PORT}" not in checked  # moved away: not the agent's any more
    assert f"TCP {ports.VAULT_PORT}" not in checked
    assert f"TCP {ports.AGGREGATOR_PORT}" in checked  # not moved: its default


def test_doctor_checks_the_metrics_ports_the_configuration_turns_on(tmp_path: Path) -> None:
    """Metrics are off by default (no port checked); a role's ``metrics`` in ppn.toml or a
    variable is checked on the port it gives, or the role's default for a bare HOST (issue 17)."""
    assert not [r for r in service_ports({}) if "metrics" in r[2]]
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with socket.socket() as tcp:
        tcp.bind(("0.0.0.0", 0))
        tcp.listen()
        held = tcp.getsockname()[1]
        conf = tmp_path / "ppn.toml"
        conf.write_text(f'[vault.serve]\nmetrics = "127.0.0.1:{held}"\n')
        env = {**os.environ, "PPN_VAULT_FOLLOW_METRICS": "127.0.0.1"}
        done = _doctor(state, "--config", str(conf), env=env)
    rows, taken = _blocked_ports(done)
    assert any(
        m.startswith(
            f"TCP {held} (metrics (ppn vault serve), set in {conf} line 2) is taken by pid "
        )
        for m in taken
    ), taken
    # A bare HOST: the role's default port (free or not on this machine, it is the one checked).
    replica = f"TCP {ports.REPLICA_METRICS_PORT} (metrics (ppn vault follow), set in env "
    assert len([m for m in rows if m["message"].startswith(replica)]) == 1, rows
    checked = {m["message"].split(" (")[0] for m in rows}
    assert f"TCP {ports.AGENT_METRICS_PORT}" not in checked  # not turned on: not checked


def test_the_wireguard_port_follows_the_nodes_endpoint(tmp_path: Path) -> None:
    directory, _ = genesis_dir(tmp_path / "g")
    endpoints = wireguard_port_endpoints(directory)
    rows = service_ports({}, endpoints=endpoints)
    expected = int(endpoints[0].rpartition(":")[2]) if endpoints else ports.WIREGUARD_PORT
    assert rows[0] == ("udp", expected, "WireGuard")
    rows = service_ports({}, endpoints=["192.0.2.1:40000"])
    assert rows[0] == ("udp", 40000, "WireGuard")
    # Port 0 (any free port) binds nothing fixed: not checked.
    rows = service_ports({("orchestration serve", "listen"): ("127.0.0.1:0", "env X")})
    assert all("orchestration" not in what for _, _, what in rows)


@pytest.mark.netns
def test_the_wireguard_port_held_by_wireguard_go_is_the_nodes_own(lab: Lab) -> None:
    host = lab.host("doc")
    ifname = lab.unique_ifname("ppn")
    wg_go = host.popen(
        ["wireguard-go", "-f", ifname],
        env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock = Path(f"/var/run/wireguard/{ifname}.sock")
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert wg_go.poll() is None and time.monotonic() < deadline, "wireguard-go did not start"
        time.sleep(0.1)
    host.run(["wg", "set", ifname, "listen-port", "51999"])
    host.run(["ip", "link", "set", ifname, "up"])
    code = (
        "from ppn.deploy._io_doctor import check_ports as c; "
        "f = c([('udp', 51999, 'WireGuard'), ('udp', 51998, 'free')]); "
        "print('\\n'.join(x.severity.value + ' ' + x.message for x in f))"
    )
    done = host.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})
    first, second = done.stdout.splitlines()
    assert first.startswith("ok UDP 51999 (WireGuard) is held by wireguard-go (pid "), first
    assert second == "ok UDP 51998 (free) is free"


def test_a_role_started_without_systemd_that_died_blocks(tmp_path: Path) -> None:
    """Service-less mode has no Restart=: a background role whose process is gone is a FAIL,
    with the end of its log and the command that starts it again."""
    conf = tmp_path / "ppn.toml"
    conf.write_text('[orchestration.serve]\nlisten = "127.0.0.1:0"\nany-target = true\n')
    run = tmp_path / "run"
    done = subprocess.run(
        [*PPN, "--config", str(conf), "service", "install", "orchestration", "--no-systemd",
         "--run-dir", str(run), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout)["pid"]
    try:
        assert [f.severity for f in check_background(run)] == [Severity.OK]
        assert f"(pid {pid})" in check_background(run)[0].message
    finally:
        os.kill(pid, signal.SIGKILL)  # it crashed
    deadline = time.monotonic() + 30
    while check_background(run)[0].severity is Severity.OK:  # until /proc shows it gone
        assert time.monotonic() < deadline
        time.sleep(0.1)
    finding = check_background(run)[0]
    assert finding.severity is Severity.BLOCKS
    assert finding.message.startswith("ppn-orchestration (started without systemd) is not running")
    said = finding.message.split("; its log ends: ", 1)[1]
    assert "listening on 127.0.0.1:" in said
    assert finding.message.endswith(
        f"start it again: ppn service install orchestration --no-systemd --run-dir {run}"
    )
    done = subprocess.run(
        [*PPN, "doctor", "--state", str(tmp_path), "--run-dir", str(run), "--json",
         "--probe-timeout", "0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 70
    rows = [f for f in json.loads(done.stdout)["findings"] if f["check"] == "services"]
    assert rows[-1]["severity"] == "FAIL" and rows[-1]["message"] == finding.message
    assert check_background(tmp_path / "elsewhere") == []  # nothing started: nothing to say


def test_a_configuration_doctor_cannot_read_is_73_naming_the_line(tmp_path: Path) -> None:
    # The ports come from the configuration: one that is wrong stops doctor, as every command.
    conf = tmp_path / "ppn.toml"
    conf.write_text("[up]\ncontrol-port = 'nine'\n")
    done = _doctor(tmp_path, "--config", str(conf))
    assert done.returncode == 73 and done.stdout == ""
    assert done.stderr.startswith(f"ppn: {conf} line 2: [up] control-port = 'nine'")
