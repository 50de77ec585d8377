"""The fleet over the real PPN mesh: three namespaces joined with ``ppn genesis``/``ppn join``
and running ``ppn up`` on wireguard-go (genesis and cloud talk only through the relay hub).
Every node runs ``ppn vmhost serve --state``, the cloud node ``ppn fleet serve --state``:
membership and the controller come from the signed roster. A VM is placed on the node with the
most free RAM, confirmed and provisioned; the genesis node's underlay link is cut and it is
evicted 30-40 s after its last heartbeat, with the default 10 s / 30 s timings."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from interop.fleet_scenario import live_names, poll_status, ppn, write_provisioner
from interop.mesh_platform import form_mesh
from interop.netns import Lab


def _evicted(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in status["evicted"] if e["name"] == name), None)


@pytest.mark.netns
def test_fleet_over_the_mesh_places_provisions_and_evicts(lab: Lab, tmp_path: Path) -> None:
    nodes, _ = form_mesh(lab, tmp_path)
    genesis, relay, cloud = nodes["genesis"], nodes["relay"], nodes["cloud"]
    control = tmp_path / "fleet.sock"
    provisioner, provisioned = tmp_path / "provision.py", tmp_path / "provisioned.jsonl"
    write_provisioner(provisioner, provisioned)
    logs = {name: tmp_path / f"fleet-{name}.log" for name in ("controller", *nodes)}

    def start(node: Any, log: str, argv: list[str]) -> subprocess.Popen[Any]:
        with open(logs[log], "w") as out:
            return node.host.popen(argv, stderr=out, stdout=subprocess.DEVNULL)  # type: ignore[no-any-return]

    start(
        cloud,
        "controller",
        ppn("fleet", "serve", "--state", str(cloud.state), "--control", str(control)),
    )
    deadline = time.monotonic() + 15
    while not control.exists():
        assert time.monotonic() < deadline, logs["controller"].read_text()
        time.sleep(0.1)
    vmhosts = {}
    for node, ram in ((genesis, "3000"), (relay, "6000"), (cloud, "2000")):
        argv = ppn("vmhost", "serve", "--state", str(node.state), "--max-ram-mb", ram)
        vmhosts[node.name] = start(
            node, node.name, [*argv, "--provisioner", f"python3 {provisioner}"]
        )

    def in_cloud(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return cloud.host.run(argv, check=False, timeout=60)

    status = poll_status(
        in_cloud, control, lambda s: live_names(s) == {"genesis", "relay", "cloud"}, timeout=20
    )
    addresses = {n["name"]: n["mesh_address"] for n in status["nodes"]}
    assert addresses == {"genesis": "10.8.0.1", "relay": "10.8.0.2", "cloud": "10.8.0.3"}
    assert status["controller"] == "cloud"

    # Cut genesis's only underlay link right after one of its heartbeats arrived.
    status = poll_status(
        in_cloud,
        control,
        lambda s: any(n["name"] == "genesis" and n["heartbeat_age_ms"] < 2000 for n in s["nodes"]),
        timeout=15,
        interval=0.2,
    )
    age = next(n["heartbeat_age_ms"] for n in status["nodes"] if n["name"] == "genesis")
    last_heartbeat = time.monotonic() - age / 1000
    veth = genesis.host.run(["ip", "-o", "link", "show", "type", "veth"]).stdout.split(":")[1]
    genesis.host.run(["ip", "link", "set", veth.strip().split("@")[0], "down"])

    # Meanwhile: placed on relay (most free RAM), confirmed, dispatched over the mesh, provisioned.
    created = in_cloud(
        ppn("vm", "create", "generic", "--ram", "1024", "--name", "app-1", "--yes", "--wait", "25",
            "--json", "--control", str(control))
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    outcome = json.loads(created.stdout)
    assert outcome["node"] == "relay" and outcome["state"] == "running"
    (launched,) = [json.loads(line) for line in provisioned.read_text().splitlines()]
    assert launched["name"] == "app-1"

    status = poll_status(
        in_cloud, control, lambda s: _evicted(s, "genesis") is not None, timeout=45, interval=0.5
    )
    evicted_after = time.monotonic() - last_heartbeat
    assert 30.0 <= evicted_after <= 40.0, evicted_after
    entry = _evicted(status, "genesis")
    assert entry is not None and 30_000 <= entry["silent_for_ms"] <= 40_000
    assert live_names(status) == {"relay", "cloud"}
    assert "node genesis evicted" in logs["controller"].read_text()
    assert vmhosts["genesis"].poll() is None  # missed sends are not fatal
    assert "heartbeat not delivered" in logs["genesis"].read_text()
