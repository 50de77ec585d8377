"""The role units (ppn/deploy/_units.py) and `ppn service` (issue 17): what each unit says,
that `systemd-analyze verify` accepts every one, and what install/remove/status do on a host
without a running systemd (this one, and CI's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppn.deploy._units import LIMIT_NOFILE, LISTENER_CAP, ROLES, UnitError, render_unit, unit_name

PPN = [sys.executable, "-m", "ppn"]
EXE = str(Path(sys.executable).parent / "ppn")


def _ppn(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PPN, *argv], capture_output=True, text=True, timeout=60)


def _settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_unit_is_notify_restarting_and_hardened(role: object) -> None:
    from ppn.deploy._units import Role

    assert isinstance(role, Role)
    unit = _settings(render_unit(role, EXE))
    assert unit["Type"] == "notify"
    assert unit["Restart"] == "on-failure"
    assert unit["RestartPreventExitStatus"] == "2 73"  # usage, configuration: no retry
    assert unit["NoNewPrivileges"] == "yes"
    assert unit["ProtectSystem"] == "strict"
    assert unit["PrivateTmp"] == "yes"
    assert unit["StateDirectory"] == "ppn"
    assert unit["StateDirectoryMode"] == "0700"
    assert unit["LimitNOFILE"] == str(LIMIT_NOFILE)
    caps = "CAP_NET_ADMIN" if role.name in ("agent", "vmhost") else ""
    assert unit["CapabilityBoundingSet"] == caps
    assert unit["AmbientCapabilities"] == caps
    assert unit["ExecStart"].split()[:2] == [EXE, role.command[0]]
    # systemd stops with SIGTERM, which every role answers with a clean exit 0 (RFC-NOTES §1.4,
    # tests/test_sigterm.py): no other stop signal, no other status to count as success.
    assert "KillSignal" not in unit and "SuccessExitStatus" not in unit


def test_the_descriptor_limit_lets_a_listener_reach_its_cap() -> None:
    # Under exactly LimitNOFILE, default_max_connections() must give the full cap, and one
    # descriptor less must not: the unit's number and the listener's rule agree.
    code = (
        "import resource, sys; from ppn._trio_listener import default_max_connections as d; "
        "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); print(d())"
    )
    for limit, expected in ((LIMIT_NOFILE, LISTENER_CAP), (LIMIT_NOFILE - 1, LISTENER_CAP - 1)):
        out = subprocess.run(
            [sys.executable, "-c", code, str(limit)], capture_output=True, text=True, check=True
        )
        assert int(out.stdout) == expected


def test_instance_names() -> None:
    vault = next(r for r in ROLES if r.name == "vault")
    agent = next(r for r in ROLES if r.name == "agent")
    assert unit_name(vault, "sales-2024") == "ppn-vault@sales-2024.service"
    assert unit_name(agent) == "ppn-agent.service"
    for bad in ("", "../etc", "a b", "x" * 65):
        with pytest.raises(UnitError):
            unit_name(vault, bad)
    with pytest.raises(UnitError):
        unit_name(vault)
    with pytest.raises(UnitError):
        unit_name(agent, "x")
    with pytest.raises(UnitError):
        render_unit(agent, "ppn")  # ExecStart needs an absolute path


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("PPN_REQUIRE_NETNS") == "1":
            pytest.fail("CI must verify the units: install the systemd package (.ci/run does)")
        pytest.skip("systemd-analyze is not installed")
    return found


def test_systemd_analyze_verifies_every_generated_unit(tmp_path: Path) -> None:
    analyze = _analyze()
    files = []
    for role in ROLES:
        argv = ["service", "install", role.name, "--dry-run", "--executable", EXE]
        done = _ppn(*argv, *(["--instance", "main"] if role.template else []))
        assert done.returncode == 0, done.stderr
        path = tmp_path / f"{role.unit}.service"
        path.write_text(done.stdout)
        files.append(str(path))
    done = subprocess.run([analyze, "verify", *files], capture_output=True, text=True, timeout=120)
    # verify exits 0 on some problems (an unknown key is a warning): any output is a failure.
    assert (done.returncode, done.stderr.strip(), done.stdout.strip()) == (0, "", "")


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: the same verify, on a unit with a misspelt key.
    analyze = _analyze()
    text = render_unit(ROLES[0], EXE).replace("Restart=on-failure", "Restart=on-failure\nRestrt=x")
    (tmp_path / "ppn-agent.service").write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "ppn-agent.service")], capture_output=True, text=True
    )
    assert "Restrt" in done.stderr


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs here")
def test_install_status_remove_without_systemd(tmp_path: Path) -> None:
    units = str(tmp_path / "units")
    done = _ppn("service", "status", "agent", "--unit-dir", units, "--json")
    assert done.returncode == 72
    assert json.loads(done.stdout)["installed"] is False
    done = _ppn("service", "install", "agent", "--unit-dir", units, "--executable", EXE)
    assert done.returncode == 71
    assert "systemd is not running" in done.stderr and "Traceback" not in done.stderr
    written = Path(units, "ppn-agent.service")
    assert _settings(written.read_text())["Type"] == "notify"
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    done = _ppn("service", "status", "agent", "--unit-dir", units, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["installed"] is True
    done = _ppn("service", "remove", "agent", "--unit-dir", units)
    assert done.returncode == 0, done.stderr
    assert not written.exists()
    done = _ppn("service", "remove", "agent", "--unit-dir", units)
    assert done.returncode == 72 and "not installed" in done.stderr


def test_vault_needs_an_instance() -> None:
    done = _ppn("service", "install", "vault", "--dry-run")
    assert done.returncode == 2 and "--instance" in done.stderr
    done = _ppn("service", "install", "vault", "--instance", "a", "--dry-run", "--json")
    doc = json.loads(done.stdout)
    assert doc["unit"] == "ppn-vault@a.service" and doc["file"] == "ppn-vault@.service"
    assert "--store /var/lib/ppn/vaults/%i" in doc["text"]


def test_without_systemd_a_role_runs_in_the_background_once(tmp_path: Path) -> None:
    """Service-less mode (RFC-NOTES §13.2): install returns once the role sent READY=1, a second
    install finds it running and starts nothing, remove stops it by its PID file."""
    conf = tmp_path / "ppn.toml"
    conf.write_text('[orchestration.serve]\nlisten = "127.0.0.1:0"\nany-target = true\n')
    run = str(tmp_path / "run")
    common = ("--no-systemd", "--run-dir", run, "--json")
    done = _ppn("--config", str(conf), "service", "install", "orchestration", *common)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    assert first["started"] is True
    pid = first["pid"]
    try:
        assert Path(run, "ppn-orchestration.pid").read_text() == f"{pid}\n"
        # Ready means serving: the log already has the listening line.
        assert "listening on 127.0.0.1:" in Path(run, "ppn-orchestration.log").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:6] == [b"-m", b"ppn", b"--config", str(conf).encode(), b"orchestration"]
        again = _ppn("--config", str(conf), "service", "install", "orchestration", *common)
        assert json.loads(again.stdout) == {**first, "started": False}
        status = _ppn("service", "status", "orchestration", *common)
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == pid
    finally:
        done = _ppn("service", "remove", "orchestration", *common)
    assert done.returncode == 0 and json.loads(done.stdout)["stopped"] == pid
    assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()
    assert not Path(run, "ppn-orchestration.pid").exists()
    status = _ppn("service", "status", "orchestration", *common)
    assert status.returncode == 72 and json.loads(status.stdout)["running"] is False
    done = _ppn("service", "remove", "orchestration", *common)
    assert done.returncode == 72 and "is not running" in done.stderr


def test_without_systemd_a_role_that_exits_first_is_74_with_its_reason(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _ppn(
        "service", "install", "fleet", "--no-systemd", "--run-dir", str(run),
        "--state", str(tmp_path / "not-a-member"),
    )  # fmt: skip
    assert done.returncode == 74
    assert done.stderr.startswith("ppn: ppn-fleet exited with status 66 before it was ready: ")
    assert "is not a mesh member" in done.stderr and "Traceback" not in done.stderr
    assert not (run / "ppn-fleet.pid").exists()


def test_state_is_for_service_less_mode_only() -> None:
    done = _ppn("service", "install", "agent", "--state", "/tmp/elsewhere", "--dry-run")
    assert done.returncode == 2 and "--state DIR is for --no-systemd" in done.stderr
