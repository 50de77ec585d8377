"""The platform's mesh on real wireguard-go in three namespaces, built with the CLI alone:
genesis and cloud cannot reach each other's underlay and talk through the relay hub; a member
admitted through one sponsor is reachable from all; restarts change nothing and lose no
handshake; SIGTERM leaves the tunnel up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from interop.mesh_platform import Node, form_mesh, start_agent, stop_agent, wait_for
from interop.netns import Lab


def handshakes(node: Node) -> dict[str, int]:
    out = node.host.run(["wg", "show", node.interface, "latest-handshakes"]).stdout
    result = {}
    for line in out.splitlines():
        key, stamp = line.split()
        result[key] = int(stamp)
    return result


@pytest.mark.netns
def test_three_node_platform_mesh(lab: Lab, tmp_path: Path) -> None:
    nodes, timings = form_mesh(lab, tmp_path)
    g, r, c = nodes["genesis"], nodes["relay"], nodes["cloud"]

    # The underlay really is split: genesis cannot reach the cloud node's underlay address.
    assert not g.host.ping("10.77.2.3", timeout=1)
    for src in nodes.values():
        for address in ("10.8.0.1", "10.8.0.2", "10.8.0.3"):
            assert src.host.ping(address, timeout=2), f"{src.name} -> {address}"

    # Every node's status shows the other two reachable; genesis and cloud go via the hub.
    for node in nodes.values():
        wait_for(
            lambda node=node: (
                node.ppn("status", "--state", str(node.state), "--check", check=False).returncode
                == 0
            ),
            30,
            f"status --check on {node.name}",
        )
    status = g.status()
    paths = {m["name"]: m["path"] for m in status["members"]}
    assert paths == {"genesis": "self", "relay": "direct", "cloud": "via-hub"}
    assert status["hub"] == "relay" and not status["problems"]
    assert {m["name"]: m["path"] for m in c.status()["members"]}["genesis"] == "via-hub"
    assert {m["name"]: m["path"] for m in r.status()["members"]}["cloud"] == "direct"

    # Names resolve on every member, including one admitted by another sponsor.
    assert g.ppn("resolve", "cloud", "--state", str(g.state)).stdout.strip() == "10.8.0.3"
    assert g.ppn("resolve", "nobody", "--state", str(g.state), check=False).returncode == 32
    hosts = (g.state / "hosts").read_text()
    assert "10.8.0.3\tcloud.ppn cloud" in hosts

    # The roster file carries a generation and the same signed records everywhere.
    digests = set()
    for node in nodes.values():
        from ppn import wire

        saved = wire.unpack_canonical((node.state / "roster.bin").read_bytes())
        assert saved["generation"] >= 1
        digests.add(tuple(sorted(saved["records"])))
    assert len(digests) == 1

    # One agent per state directory.
    second = g.ppn("up", "--state", str(g.state), "--interface", g.interface, check=False)
    assert second.returncode == 36 and "already" not in second.stdout

    # SIGTERM: the agent exits 0 and the tunnel stays up (the hub keeps forwarding).
    before = handshakes(r)
    assert stop_agent(r) == 0
    assert g.host.ping("10.8.0.3", timeout=2)
    # Restart (roles persist without repeating --role): nothing to change on a correctly
    # configured interface, no handshake lost.
    start_agent(r)
    assert r.status()["hub"] == "relay"
    info = json.loads((r.state / "agent.json").read_text())
    assert info["wireguard_operations"] == 0
    time.sleep(1)
    after = handshakes(r)
    assert set(after) == set(before)
    assert all(after[k] >= before[k] > 0 for k in before)
    assert g.host.ping("10.8.0.3", timeout=2) and c.host.ping("10.8.0.1", timeout=2)
    assert timings["joined_to_pingable"] < 30
    for node in nodes.values():
        assert stop_agent(node) == 0


@pytest.mark.netns
def test_concurrent_sponsors_never_leave_two_members_on_one_address(
    lab: Lab, tmp_path: Path
) -> None:
    from interop.mesh_platform import concurrent_sponsors, quick_ping

    nodes = concurrent_sponsors(lab, tmp_path)
    g, r, x, y = (nodes[n] for n in ("genesis", "relay", "xray", "yankee"))
    # Both ceremonies granted the same lowest free address.
    granted = {json.loads((n.state / "mesh.json").read_text())["address"] for n in (x, y)}
    assert granted == {"10.8.0.3"}

    def settled() -> bool:
        status = g.status()
        addresses = {m["name"]: m["address"] for m in status["members"]}
        return (
            not status["problems"]
            and set(addresses) == {"genesis", "relay", "xray", "yankee"}
            and len(set(addresses.values())) == 4
        )

    wait_for(settled, 45, "the address conflict to resolve")
    addresses = {m["name"]: m["address"] for m in g.status()["members"]}
    assert {addresses["xray"], addresses["yankee"]} == {"10.8.0.3", "10.8.0.4"}
    loser = x if addresses["xray"] == "10.8.0.4" else y
    # The loser moved itself: its interface carries the new address, not the old one.
    shown = loser.host.run(["ip", "-4", "-o", "addr", "show", "dev", loser.interface]).stdout
    assert "10.8.0.4/24" in shown and "10.8.0.3/" not in shown
    # And everyone agrees, and both are reachable from their sponsors at their final address.
    assert {m["name"]: m["address"] for m in r.status()["members"]} == addresses
    wait_for(lambda: quick_ping(g.host, addresses["xray"]), 30, "genesis to reach xray")
    wait_for(lambda: quick_ping(r.host, addresses["yankee"]), 30, "relay to reach yankee")
    for node in nodes.values():
        assert stop_agent(node) == 0
