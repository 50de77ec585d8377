"""Ceremony to signed roster and back out, on real wireguard-go in three namespaces, CLI only:
bravo joins via genesis and invites charlie *before* bravo's own first 'ppn up' (charlie then
sits in bravo's agent baseline, which once meant it was never admitted); charlie must still end
up on the signed roster and reachable; then 'ppn remove' on the genesis node drops charlie from
every other node's WireGuard device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interop.mesh_platform import (
    PPN,
    Node,
    _env,
    ceremony,
    quick_ping,
    start_agent,
    stop_agent,
    wait_for,
)
from interop.netns import Lab


def peers(node: Node) -> set[str]:
    out = node.host.run(["wg", "show", node.interface, "peers"]).stdout
    return set(out.split())


def members(node: Node) -> set[str]:
    return {m["name"] for m in node.status()["members"]}


@pytest.mark.netns
def test_member_invited_before_first_up_is_admitted_and_removal_reaches_every_device(
    lab: Lab, tmp_path: Path
) -> None:
    gh, bh, ch = lab.host("gen"), lab.host("bravo"), lab.host("charlie")
    lab.link(gh, "10.77.5.1/24", bh, "10.77.5.2/24")
    lab.link(bh, "10.77.6.2/24", ch, "10.77.6.3/24")
    lab.link(gh, "10.77.7.1/24", ch, "10.77.7.3/24")
    g = Node(gh, "genesis", tmp_path / "genesis", lab.unique_ifname("ppn"))
    b = Node(bh, "bravo", tmp_path / "bravo", lab.unique_ifname("ppn"))
    c = Node(ch, "charlie", tmp_path / "charlie", lab.unique_ifname("ppn"))

    ceremony(
        g,
        b,
        listen="10.77.5.1:0",
        first=True,
        sponsor_endpoint="10.77.5.1:51820",
        joiner_endpoints=["10.77.5.2:51820", "10.77.6.2:51820"],
    )
    start_agent(g, "--endpoint", "10.77.5.1:51820", "--endpoint", "10.77.7.1:51820")
    # bravo invites charlie before bravo's agent ever ran.
    ceremony(
        b,
        c,
        listen="10.77.6.2:0",
        first=False,
        joiner_endpoints=["10.77.6.3:51820", "10.77.7.3:51820"],
    )
    start_agent(b)
    start_agent(c)
    saved = json.loads((b.state / "mesh.json").read_text())
    assert {m["name"]: m.get("sponsor") for m in saved["roster"]}["charlie"] == json.loads(
        (b.state / "node.json").read_text()
    )["identity"]

    wait_for(lambda: "charlie" in members(g), 30, "genesis to hold charlie's signed entry")
    wait_for(lambda: quick_ping(g.host, "10.8.0.3"), 30, "genesis to reach charlie")
    assert members(b) == members(c) == {"genesis", "bravo", "charlie"}
    charlie_wg = json.loads((c.state / "node.json").read_text())["wg"]
    assert charlie_wg in peers(g) and charlie_wg in peers(b)

    # Only charlie itself or the genesis node may remove charlie; asking first, declining.
    refused = b.ppn("remove", "charlie", "--state", str(b.state), "--yes", check=False)
    assert refused.returncode == 37
    declined = g.host.run(
        [*PPN, "remove", "charlie", "--state", str(g.state)], input="no\n", env=_env(), check=False
    )
    assert declined.returncode == 38 and "charlie" in members(g)

    removed = g.ppn("remove", "charlie", "--state", str(g.state), "--yes", "--json")
    assert json.loads(removed.stdout)["agent"] == "taken"
    for node in (g, b):
        wait_for(
            lambda node=node: charlie_wg not in peers(node),  # type: ignore[misc]
            20,
            f"{node.name} to drop charlie's WireGuard peer",
        )
        status = node.status()
        assert status["removed"] == ["charlie"]
        assert {m["name"] for m in status["members"]} == {"genesis", "bravo"}
    assert not quick_ping(g.host, "10.8.0.3")
    # Minimal changes: bravo's own peer stayed (its handshake was never reset).
    assert quick_ping(g.host, "10.8.0.2")
    for node in (g, b, c):
        assert stop_agent(node) == 0
