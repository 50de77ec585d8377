"""A mesh that outlives its genesis node (issue 18, RFC-NOTES §7.14), CLI only, on real
wireguard-go in namespaces: the genesis node names bravo an admin; the genesis machine is then
lost for good (its processes killed, its namespace deleted); bravo removes it, sponsors a new
member in a ceremony and removes another member, and every remaining member follows; a member
without admin rights still may not remove anyone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interop.mesh_lifecycle import lose_host
from interop.mesh_platform import Node, ceremony, quick_ping, start_agent, stop_agent, wait_for
from interop.netns import Lab


def peers(node: Node) -> set[str]:
    return set(node.host.run(["wg", "show", node.interface, "peers"]).stdout.split())


def wg_key(node: Node) -> str:
    return str(json.loads((node.state / "node.json").read_text())["wg"])


def admins(node: Node) -> list[str]:
    out = node.ppn("admin", "list", "--state", str(node.state), "--json").stdout
    return [a["name"] for a in json.loads(out)["admins"]]


def reach(src: Node, address: str, what: str) -> None:
    wait_for(lambda: quick_ping(src.host, address), 60, f"{src.name} to reach {what}")


@pytest.mark.netns
def test_a_delegated_admin_admits_and_removes_after_the_genesis_node_is_gone(
    lab: Lab, tmp_path: Path
) -> None:
    gh, bh, ch, dh = (lab.host(n) for n in ("gen", "bravo", "charlie", "delta"))
    lab.link(gh, "10.77.5.1/24", bh, "10.77.5.2/24")
    lab.link(bh, "10.77.6.2/24", ch, "10.77.6.3/24")
    lab.link(gh, "10.77.7.1/24", ch, "10.77.7.3/24")
    lab.link(bh, "10.77.8.2/24", dh, "10.77.8.4/24")
    lab.link(ch, "10.77.9.3/24", dh, "10.77.9.4/24")
    g = Node(gh, "genesis", tmp_path / "genesis", lab.unique_ifname("ppn"))
    b = Node(bh, "bravo", tmp_path / "bravo", lab.unique_ifname("ppn"))
    c = Node(ch, "charlie", tmp_path / "charlie", lab.unique_ifname("ppn"))
    d = Node(dh, "delta", tmp_path / "delta", lab.unique_ifname("ppn"))
    bravo_endpoints = ["10.77.5.2:51820", "10.77.6.2:51820", "10.77.8.2:51820"]
    ceremony(
        g,
        b,
        listen="10.77.5.1:0",
        first=True,
        sponsor_endpoint="10.77.5.1:51820",
        joiner_endpoints=bravo_endpoints,
    )
    start_agent(g, "--endpoint", "10.77.5.1:51820", "--endpoint", "10.77.7.1:51820")
    start_agent(b)
    ceremony(
        g,
        c,
        listen="10.77.7.1:0",
        first=False,
        joiner_endpoints=["10.77.7.3:51820", "10.77.6.3:51820", "10.77.9.3:51820"],
    )
    start_agent(c)
    reach(b, "10.8.0.3", "charlie")
    reach(g, "10.8.0.3", "charlie")

    # Before it is lost, the genesis node delegates.
    granted = g.ppn("admin", "grant", "bravo", "--state", str(g.state), "--yes", "--json")
    assert json.loads(granted.stdout)["agent"] == "taken"
    for node in (b, c):
        wait_for(
            lambda node=node: admins(node) == ["genesis", "bravo"],  # type: ignore[misc]
            30,
            f"{node.name} to see bravo's admin rights",
        )
    # charlie has no admin rights: it may not remove bravo.
    refused = c.ppn("remove", "bravo", "--state", str(c.state), "--yes", check=False)
    assert refused.returncode == 37
    genesis_wg = wg_key(g)

    lose_host(lab, gh, [g])
    removed = b.ppn("remove", "genesis", "--state", str(b.state), "--yes", "--json")
    outcome = json.loads(removed.stdout)
    assert outcome["signed"] == "admin-act" and outcome["agent"] == "taken"
    wait_for(lambda: genesis_wg not in peers(c), 30, "charlie to drop the genesis node's peer")
    assert c.status()["removed"] == ["genesis"]
    assert admins(c) == ["bravo"]

    # A new member, sponsored by the delegated admin.
    ceremony(
        b,
        d,
        listen="10.77.8.2:0",
        first=False,
        joiner_endpoints=["10.77.8.4:51820", "10.77.9.4:51820"],
    )
    delta_address = json.loads((d.state / "mesh.json").read_text())["address"]
    assert delta_address == "10.8.0.4"
    start_agent(d)
    reach(b, delta_address, "delta")
    reach(c, delta_address, "delta")
    reach(d, "10.8.0.3", "charlie")
    wait_for(
        lambda: {m["name"] for m in d.status()["members"]} == {"bravo", "charlie", "delta"},
        30,
        "delta to hold every live member's signed entry",
    )
    # A member without admin rights still removes nobody but itself.
    assert (
        d.ppn("remove", "charlie", "--state", str(d.state), "--yes", check=False).returncode == 37
    )

    # The delegated admin removes a member; every remaining member follows.
    charlie_wg = wg_key(c)
    removed = b.ppn("remove", "charlie", "--state", str(b.state), "--yes", "--json")
    assert json.loads(removed.stdout)["signed"] == "admin-act"
    for node in (b, d):
        wait_for(
            lambda node=node: charlie_wg not in peers(node),  # type: ignore[misc]
            30,
            f"{node.name} to drop charlie's peer",
        )
    status = d.status()
    assert sorted(status["removed"]) == ["charlie", "genesis"]
    assert {m["name"] for m in status["members"]} == {"bravo", "delta"}
    assert not quick_ping(d.host, "10.8.0.3")
    assert quick_ping(d.host, "10.8.0.2")
    for node in (b, c, d):
        assert stop_agent(node) == 0
