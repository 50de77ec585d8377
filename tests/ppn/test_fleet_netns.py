"""Three network namespaces, default timings: every node runs a vm-host heartbeating every 10 s to
the controller on the cloud node; a VM is placed on the node with the most free RAM, confirmed and
provisioned; one node's link is cut and it is evicted 30-40 s after its last heartbeat.

The links are veth pairs with the mesh addresses routed over them (the WireGuard mesh itself
comes with the roster and node agent; these services only need mesh addresses to be routable).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from interop.fleet_scenario import NodePlan, live_names, poll_status, ppn, write_fleet_files
from interop.netns import Host, Lab

MESH = {"cloud": "10.8.0.1", "a": "10.8.0.2", "b": "10.8.0.3"}


def _evicted(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in status["evicted"] if e["name"] == name), None)


@pytest.mark.netns
def test_pool_placement_and_eviction_of_a_cut_node(lab: Lab, tmp_path: Path) -> None:
    cloud, a, b = lab.host("cloud"), lab.host("a"), lab.host("b")
    lab.link(cloud, "10.77.1.1/24", a, "10.77.1.2/24")
    _, b_if = lab.link(cloud, "10.77.2.1/24", b, "10.77.2.2/24")
    for host in (cloud, a, b):
        host.run(["ip", "addr", "add", f"{MESH[host.name]}/32", "dev", "lo"])
    a.run(["ip", "route", "add", "10.8.0.1/32", "via", "10.77.1.1", "src", MESH["a"]])
    b.run(["ip", "route", "add", "10.8.0.1/32", "via", "10.77.2.1", "src", MESH["b"]])
    cloud.run(["ip", "route", "add", "10.8.0.2/32", "via", "10.77.1.2", "src", MESH["cloud"]])
    cloud.run(["ip", "route", "add", "10.8.0.3/32", "via", "10.77.2.2", "src", MESH["cloud"]])
    assert a.ping(MESH["cloud"]) and b.ping(MESH["cloud"])

    files = write_fleet_files(
        tmp_path, [NodePlan(name, MESH[name], controller=name == "cloud") for name in MESH]
    )
    control = str(files.control)
    logs = {name: tmp_path / f"{name}.log" for name in ("controller", "cloud", "a", "b")}

    def start(host: Host, log: str, argv: list[str]) -> subprocess.Popen[Any]:
        with open(logs[log], "w") as out:
            return host.popen(argv, stderr=out, stdout=subprocess.DEVNULL)

    start(cloud, "controller", ppn("fleet", "serve", "--identity", str(files.keys["cloud"]),
                                   "--directory", str(files.directory), "--control", control))  # fmt: skip
    deadline = time.monotonic() + 15
    while not files.control.exists():  # the first heartbeats should find it listening
        assert time.monotonic() < deadline, logs["controller"].read_text()
        time.sleep(0.1)
    vmhosts = {}
    for host, ram, extra in ((cloud, "8000", ["--reserved"]), (a, "4000", []), (b, "2500", [])):
        vmhosts[host.name] = start(
            host, host.name,
            ppn("vmhost", "serve", "--identity", str(files.keys[host.name]), "--directory",
                str(files.directory), "--max-ram-mb", ram, "--provisioner",
                f"python3 {files.provisioner}", *extra),
        )  # fmt: skip

    def in_cloud(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return cloud.run(argv, check=False, timeout=60)

    status = poll_status(in_cloud, files.control, lambda s: live_names(s) == set(MESH), timeout=20)
    b_status = next(n for n in status["nodes"] if n["name"] == "b")
    assert b_status["mesh_address"] == MESH["b"]

    # Cut b's only link right after a heartbeat from b was received.
    status = poll_status(
        in_cloud,
        files.control,
        lambda s: any(n["name"] == "b" and n["heartbeat_age_ms"] < 2000 for n in s["nodes"]),
        timeout=15,
        interval=0.2,
    )
    age = next(n["heartbeat_age_ms"] for n in status["nodes"] if n["name"] == "b")
    last_heartbeat = time.monotonic() - age / 1000
    b.run(["ip", "link", "set", b_if, "down"])

    # While b goes silent: a VM is placed on a (most free RAM among non-reserved nodes),
    # confirmed with --yes, dispatched, provisioned, and reported in a's next heartbeat.
    created = in_cloud(
        ppn("vm", "create", "generic", "--ram", "1024", "--name", "app-1", "--yes", "--wait", "25",
            "--json", "--control", control)
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    outcome = json.loads(created.stdout)
    assert outcome["node"] == "a" and outcome["state"] == "running"
    (launched,) = [json.loads(line) for line in files.provisioned.read_text().splitlines()]
    assert launched["name"] == "app-1" and launched["env"]["PPN_VM_RAM_MB"] == "1024"

    status = poll_status(
        in_cloud, files.control, lambda s: _evicted(s, "b") is not None, timeout=45, interval=0.5
    )
    evicted_after = time.monotonic() - last_heartbeat
    assert 30.0 <= evicted_after <= 40.0, evicted_after
    entry = _evicted(status, "b")
    assert entry is not None and 30_000 <= entry["silent_for_ms"] <= 40_000
    assert live_names(status) == {"cloud", "a"}  # the others keep heartbeating
    assert "node b evicted" in logs["controller"].read_text()
    # b's missed sends were logged, and its vm-host kept running.
    assert vmhosts["b"].poll() is None
    assert "heartbeat not delivered" in logs["b"].read_text()
