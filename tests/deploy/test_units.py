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
