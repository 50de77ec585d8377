"""The platform's provision scripts (deploy/, issue 17) build a 3-node fleet in network
namespaces, in service-less mode (no systemd here or in CI), on real wireguard-go.

Shape (as interop/mesh_platform.py): the genesis laptop and the relay laptop share underlay net 1,
the relay and the cloud node share net 2. The scripts run as an operator would run them:
``provision-vm-infrastructure-onprem.sh --genesis`` on the first laptop,
``provision-vm-infrastructure-onprem.sh --join CODE --relay`` on the second, ``ppn invite`` on
the relay and ``provision-vm-infrastructure-cloud.sh --join CODE`` on the cloud node; the test
plays both operators through ``--events json`` (passed after ``--``). Each script starts its
node's roles as background processes (``ppn service install ROLE --no-systemd``); ``ppn status
--check`` on every node then lists all three members as reachable, pings cross the mesh (the
cloud node only through the hub), the fleet controller sees three live vm-hosts, ``ppn doctor``
finds nothing blocking, running a script again changes nothing, and naming the aggregator's
targets in the cloud node's ppn.toml then running its script again adds VM-Orchestration alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from interop.mesh_platform import NET1, NET2, _read_event, quick_ping, wait_for
from interop.netns import Host, Lab
from ppn.ports import AGGREGATOR_PORT

ROOT = Path(__file__).resolve().parents[2]
ONPREM = ROOT / "deploy" / "provision-vm-infrastructure-onprem.sh"
CLOUD = ROOT / "deploy" / "provision-vm-infrastructure-cloud.sh"
PPN = [sys.executable, "-m", "ppn"]


@dataclass
class Node:
    host: Host
    name: str
    home: Path
    interface: str

    @property
    def state(self) -> Path:
        return self.home / "state"

    @property
    def config(self) -> Path:
        return self.home / "ppn.toml"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    def options(self) -> list[str]:
        return [
            "--name",
            self.name,
            "--interface",
            self.interface,
            "--state",
            str(self.state),
            "--config",
            str(self.config),
            "--services",
            "background",
            "--run-dir",
            str(self.run_dir),
        ]

    def ppn(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run(
            [*PPN, "--config", str(self.config), *args], check=check, timeout=60, env=_env()
        )

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in sorted(self.run_dir.glob("*.pid"))}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
        # The scripts run this checkout's ppn, and install nothing: every prerequisite is here
        # (the netns suite needs them), so a missing one fails the test with exit 3.
        "PPN": f"{sys.executable} -m ppn",
        "PPN_INSTALL": "none",
    }


def _script(host: Host, script: Path, *args: str) -> subprocess.Popen[str]:
    return host.popen(
        [str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _confirm_both(a: subprocess.Popen[str], b: subprocess.Popen[str], deadline: float) -> None:
    for proc in (a, b):
        assert proc.stdout is not None and proc.stdin is not None
        _read_event(proc.stdout, "sas", deadline)
        proc.stdin.write("yes\n")
        proc.stdin.flush()


def _finished(proc: subprocess.Popen[str], what: str, timeout: float = 240) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{what} did not finish in {timeout} s: {err}") from None
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {err}"
    return err


def _status(node: Node) -> dict[str, Any]:
    done = node.ppn("status", "--state", str(node.state), "--json", "--check", check=False)
    return {"rc": done.returncode, **(json.loads(done.stdout) if done.stdout else {})}


def _all_see_all(nodes: list[Node]) -> bool:
    for node in nodes:
        status = _status(node)
        names = {m["name"] for m in status.get("members", [])}
        if status["rc"] != 0 or names != {"genesis", "relay", "cloud"}:
            return False
    return True


@pytest.mark.netns
@pytest.mark.slow
def test_provision_scripts_build_a_three_node_fleet_without_systemd(
    lab: Lab, tmp_path: Path
) -> None:
    g_host, r_host, c_host = lab.host("pgen"), lab.host("prelay"), lab.host("pcloud")
    lab.link(g_host, f"{NET1}.1/24", r_host, f"{NET1}.2/24")
    lab.link(r_host, f"{NET2}.2/24", c_host, f"{NET2}.3/24")
    g, r, c = (
        Node(host, name, tmp_path / name, lab.unique_ifname("ppn"))
        for host, name in ((g_host, "genesis"), (r_host, "relay"), (c_host, "cloud"))
    )
    try:
        _provision(g, r, c)
    finally:
        for node in (g, r, c):  # stop every role by its PID file; the lab removes the rest
            for unit in node.pids():
                role = unit.removeprefix("ppn-")
                node.ppn("service", "remove", role, "--no-systemd", "--run-dir", str(node.run_dir), check=False)  # fmt: skip


def _provision(g: Node, r: Node, c: Node) -> None:
    deadline = time.monotonic() + 180
    # The first laptop founds the mesh and prints a code; the second joins with it as the relay.
    genesis = _script(
        g.host, ONPREM, "--genesis", *g.options(), "--endpoint", f"{NET1}.1:51820",
        "--", "--listen", f"{NET1}.1:0", "--no-announce", "--events", "json",
    )  # fmt: skip
    assert genesis.stdout is not None
    code = _read_event(genesis.stdout, "code", deadline)
    relay = _script(
        r.host, ONPREM, "--join", code["code"], "--relay", *r.options(),
        "--sponsor", code["address"],
        "--endpoint", f"{NET1}.2:51820", "--endpoint", f"{NET2}.2:51820",
        "--", "--events", "json",
    )  # fmt: skip
    _confirm_both(genesis, relay, deadline)
    said = _finished(genesis, "the genesis script")
    assert f"wrote {g.config}" in said and "running: agent vmhost (background)" in said
    _finished(relay, "the relay script")
    assert set(g.pids()) == set(r.pids()) == {"ppn-agent", "ppn-vmhost"}
    assert 'role = ["relay"]' in r.config.read_text()
    # --endpoint keeps its order: the first one's port is the node's WireGuard port.
    offered = json.loads((r.state / "node.json").read_text())["endpoints"]
    assert offered == [f"{NET1}.2:51820", f"{NET2}.2:51820"]

    # The cloud node joins through the relay, the member on its network.
    invite = r.host.popen(
        [*PPN, "invite", "--state", str(r.state), "--listen", f"{NET2}.2:0", "--no-announce",
         "--events", "json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=_env(),
    )  # fmt: skip
    assert invite.stdout is not None
    code = _read_event(invite.stdout, "code", deadline)
    cloud = _script(
        c.host, CLOUD, "--join", code["code"], *c.options(), "--sponsor", code["address"],
        "--endpoint", f"{NET2}.3:51820", "--", "--events", "json",
    )  # fmt: skip
    _confirm_both(invite, cloud, deadline)
    assert invite.wait(timeout=120) == 0
    said = _finished(cloud, "the cloud script")
    assert "running: agent fleet vmhost (background)" in said
    assert set(c.pids()) == {"ppn-agent", "ppn-fleet", "ppn-vmhost"}

    # Every member sees every other as reachable; the cloud node and genesis only via the hub.
    wait_for(lambda: _all_see_all([g, r, c]), 120, "ppn status --check to pass on all three")
    paths = {m["name"]: m["path"] for m in _status(g)["members"]}
    assert paths == {"genesis": "self", "relay": "direct", "cloud": "via-hub"}
    wait_for(lambda: quick_ping(g.host, "10.8.0.3"), 60, "genesis to reach cloud over the mesh")
    wait_for(lambda: quick_ping(c.host, "10.8.0.1"), 60, "cloud to reach genesis over the mesh")

    # The fleet controller on the cloud node hears the three vm-hosts.
    def fleet_live() -> set[str]:
        done = c.ppn("fleet", "status", "--json", check=False)
        return {n["name"] for n in json.loads(done.stdout).get("nodes", [])} if done.returncode == 0 else set()  # fmt: skip

    wait_for(lambda: fleet_live() == {"genesis", "relay", "cloud"}, 90, "three live vm-hosts")

    # ppn doctor, with the state and run directory the script wrote into ppn.toml, finds
    # nothing blocking: the roles' ports are held by ppn and wireguard-go, the roles run.
    for node in (g, r, c):
        doctor = node.ppn("doctor", "--json", "--probe-timeout", "0.5", check=False)
        findings = json.loads(doctor.stdout)["findings"]
        assert doctor.returncode == 0, [f for f in findings if f["severity"] == "FAIL"]
        running = {f["message"].split()[0] for f in findings if "in the background" in f["message"]}  # fmt: skip
        assert running == set(node.pids())

    # Running a script again is harmless: no ceremony, the config kept, the same processes.
    before = {n.name: n.pids() for n in (g, r, c)}
    config_before = g.config.read_text()
    again = _script(g.host, ONPREM, "--genesis", *g.options())
    said = _finished(again, "the genesis script, again", timeout=120)
    assert "already a mesh member" in said and f"keeping {g.config}" in said
    again = _script(c.host, CLOUD, "--join", code["code"], *c.options())
    _finished(again, "the cloud script, again", timeout=120)
    assert {n.name: n.pids() for n in (g, r, c)} == before
    assert g.config.read_text() == config_before
    assert _all_see_all([g, r, c])

    # VM-Orchestration starts once the cloud node's configuration names its targets: the
    # operator edits ppn.toml and runs the script again, which adds only that role.
    with c.config.open("a") as f:
        f.write(
            f'\n[orchestration.serve]\nlisten = "10.8.0.3:{AGGREGATOR_PORT}"\nany-target = true\n'
        )
    again = _script(c.host, CLOUD, "--join", code["code"], *c.options())
    said = _finished(again, "the cloud script, after naming the aggregator's targets", timeout=120)
    assert "running: agent fleet vmhost orchestration (background)" in said
    after = c.pids()
    assert {k: v for k, v in after.items() if k != "ppn-orchestration"} == before["cloud"]
    assert "ppn-orchestration" in after
    # It serves on the cloud node's mesh address: genesis reaches it through the hub.
    probe = f"import socket; socket.create_connection(('10.8.0.3', {AGGREGATOR_PORT}), 5).close()"
    g.host.run([sys.executable, "-c", probe], timeout=30)
