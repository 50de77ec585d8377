"""Rejoin after disk loss (issue 18, RFC-NOTES §7.13), CLI only, on real wireguard-go in three
namespaces: charlie's disk dies (agent killed, device gone, state directory wiped); the
genesis node removes it with 'ppn remove'; a fresh charlie (new keys) joins under the same
name, gets 10.8.0.3 back and every member reaches it; the old identity can neither join again
nor revive its entry."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from interop.mesh_lifecycle import lose_disk, refused_join
from interop.mesh_platform import Node, ceremony, quick_ping, start_agent, stop_agent, wait_for
from interop.netns import Lab


def peers(node: Node) -> set[str]:
    return set(node.host.run(["wg", "show", node.interface, "peers"]).stdout.split())


def member_ids(node: Node) -> dict[str, str]:
    return {m["name"]: m["node_id"] for m in node.status()["members"]}


def revive_old_entry(node: Node, old_state: Path, version: int) -> None:
    """Sign a new version of the removed identity's own entry with its old key and hand it to
    ``node``'s agent (the outbox is verified like anything received, RFC-NOTES §7.10)."""
    from ppn import IdentityKey
    from ppn.mesh._io_state import load_roster, queue_records
    from ppn.mesh._records import sign_member

    files = json.loads((node.state / "mesh.json").read_text())
    seed = base64.b64decode((old_state / "identity.key").read_text().strip())
    old_key = IdentityKey.from_seed(seed)
    saved = load_roster(node.state, mesh=bytes.fromhex(files["mesh_id"]), cidr=files["cidr"])
    assert saved is not None
    tombstone = saved.roster.get(old_key.public)
    assert tombstone is not None and type(tombstone).__name__ == "Tombstone"
    record = sign_member(
        old_key,
        admission=tombstone.admission,
        wg_key=base64.b64decode(json.loads((old_state / "node.json").read_text())["wg"]),
        address="10.8.0.3",
        endpoints=(),
        roles=(),
        version=version,
    )
    queue_records(node.state, [record])


@pytest.mark.netns
def test_a_node_that_lost_its_disk_rejoins_under_its_name_and_address(
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
    start_agent(b)
    ceremony(g, c, listen="10.77.7.1:0", first=False, joiner_endpoints=["10.77.7.3:51820"])
    start_agent(c)
    for node in (g, b):
        wait_for(
            lambda node=node: quick_ping(node.host, "10.8.0.3"),  # type: ignore[misc]
            60,
            f"{node.name} to reach charlie",
        )
    old_ids = member_ids(g)
    old_wg = json.loads((c.state / "node.json").read_text())["wg"]
    old_state = tmp_path / "charlie-keys-kept-by-the-test"
    shutil.copytree(c.state, old_state)

    lose_disk(c)
    assert not c.state.exists()
    removed = g.ppn("remove", "charlie", "--state", str(g.state), "--yes", "--json")
    assert json.loads(removed.stdout)["agent"] == "taken"
    wait_for(lambda: old_wg not in peers(b), 30, "bravo to drop the lost charlie's peer")
    assert b.status()["removed"] == ["charlie"]

    # A fresh charlie: new keys, same name, same (now free) address.
    c2 = Node(ch, "charlie", c.state, lab.unique_ifname("ppn"))
    ceremony(g, c2, listen="10.77.7.1:0", first=False, joiner_endpoints=["10.77.7.3:51820"])
    assert json.loads((c2.state / "mesh.json").read_text())["address"] == "10.8.0.3"
    new_wg = json.loads((c2.state / "node.json").read_text())["wg"]
    assert new_wg != old_wg
    start_agent(c2)
    for node in (g, b):
        wait_for(
            lambda node=node: quick_ping(node.host, "10.8.0.3"),  # type: ignore[misc]
            60,
            f"{node.name} to reach the new charlie",
        )
    wait_for(lambda: quick_ping(c2.host, "10.8.0.2"), 30, "the new charlie to reach bravo")
    for node in (g, b, c2):
        wait_for(
            lambda node=node: "charlie" in member_ids(node),  # type: ignore[misc]
            30,
            f"{node.name} to hold the new charlie's signed entry",
        )
        ids = member_ids(node)
        assert set(ids) == {"genesis", "bravo", "charlie"}
        assert ids["charlie"] != old_ids["charlie"]
        assert new_wg in peers(node) or node is c2
        assert old_wg not in peers(node)
    # The sponsor's mesh.json no longer lists the removed identity.
    listed = [m["wg"] for m in json.loads((g.state / "mesh.json").read_text())["roster"]]
    assert new_wg in listed and old_wg not in listed

    # The old identity stays refused: its own newer entry changes nothing ...
    revive_old_entry(b, old_state, version=99)
    wait_for(lambda: not (b.state / "outbox.bin").exists(), 20, "bravo's agent to take its outbox")
    assert member_ids(b)["charlie"] == ids["charlie"]
    assert b.status()["removed"] == ["charlie"]
    # ... and a ceremony with its keys is refused by the sponsor (status 19).
    ghost = Node(ch, "charlie", tmp_path / "ghost", lab.unique_ifname("ppn"))
    ghost.state.mkdir(mode=0o700)
    for name in ("identity.key", "wireguard.key", "node.json"):
        shutil.copy2(old_state / name, ghost.state / name)
    assert refused_join(b, ghost, listen="10.77.6.2:0") == 19
    assert not (ghost.state / "mesh.json").exists()
    for node in (g, b, c2):
        assert stop_agent(node) == 0
