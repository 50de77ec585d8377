"""The role units under a real systemd (issue 17): systemd 252 as PID 1 of a Debian container
booted with ``systemd-nspawn`` (interop/systemd_nspawn.py), where the on-prem provision script
runs in systemd mode.

What it shows: the script founds the mesh and installs the agent and the vm-host as units; both
are ``Type=notify`` and *active* (systemd got their ``READY=1``), the agent configures
wireguard-go with only ``CAP_NET_ADMIN`` under ``ProtectSystem=strict``, ``ppn status`` sees
the joined member, a second run restarts nothing, ``ppn doctor`` finds nothing blocking, and
a unit that cannot start (a vault instance with no store) is reported by ``ppn doctor`` as
restarting after failures (exit 70).

Skips without root, systemd-nspawn or a way to make the container's tree (debootstrap and a
Debian mirror, once); with ``PPN_REQUIRE_SYSTEMD=1`` it fails instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from interop.systemd_nspawn import PPN, SCRIPT, Container, ensure_rootfs, provision_genesis
from interop.systemd_nspawn import unavailable_reason as _unavailable

REQUIRE = os.environ.get("PPN_REQUIRE_SYSTEMD") == "1"


@pytest.fixture
def box() -> Iterator[Container]:
    reason = _unavailable()
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"PPN_REQUIRE_SYSTEMD=1 but no systemd container can run: {reason}")
        pytest.skip(reason)
    container = Container(ensure_rootfs())
    try:
        yield container
    finally:
        container.close()


@pytest.mark.slow
def test_the_provision_script_runs_the_roles_as_units_under_systemd(box: Container) -> None:
    result = provision_genesis(box)
    assert "running: agent vmhost (systemd)" in result["script"]
    names = {m["name"] for m in result["status"]["members"]}
    assert names == {"alpha", "beta"} and result["status"]["agent_running"] is True
    units = {u: box.unit(f"ppn-{u}.service") for u in ("agent", "vmhost")}
    for unit in units.values():
        assert unit["Type"] == "notify"
        assert (unit["ActiveState"], unit["SubState"], unit["NRestarts"]) == ("active", "running", "0")  # fmt: skip
    # The agent's wireguard-go, in the unit's RuntimeDirectory, and its interface up.
    assert box.run(["ip", "-brief", "address", "show", "ppn0"]).stdout.split()[2].startswith("10.8.0.1/")  # fmt: skip

    again = box.run(["env", f"PPN={PPN}", "PPN_INSTALL=none", SCRIPT, "--genesis"])
    assert "already a mesh member" in again.stderr
    for name, before in units.items():
        assert box.unit(f"ppn-{name}.service")["MainPID"] == before["MainPID"]

    doctor = box.run([PPN, "doctor"], check=False)
    assert doctor.returncode == 0, doctor.stdout
    assert "ok    services: ppn-agent.service is active" in doctor.stdout

    # A unit that fails on every start (no vault in its store) keeps restarting: doctor says so.
    failed = box.run([PPN, "service", "install", "vault", "--instance", "nothere"], check=False)
    assert failed.returncode == 71 and "ppn-vault@nothere.service failed" in failed.stderr
    deadline = time.monotonic() + 60
    while int(box.unit("ppn-vault@nothere.service")["NRestarts"]) < 1:
        assert time.monotonic() < deadline, "the unit was not restarted"
        time.sleep(0.5)
    doctor = box.run([PPN, "doctor"], check=False)
    assert doctor.returncode == 70
    assert (
        "FAIL  services: ppn-vault@nothere.service is restarting after a failure" in doctor.stdout
    )
