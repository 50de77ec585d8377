"""``ppn rotate wireguard`` and ``ppn rotate identity`` on real wireguard-go in three namespaces, agents running, CLI only
(issue 18): every member swaps the rotating node's peer (old public key gone, new one present
with the same allowed IPs), pings keep flowing with a gap well under one handshake retry, and a
rotation signed while the node's agent was down (the crash window between staging the key and
publishing the record) is handed over by the next 'ppn up' without locking the node out; an
identity rotation keeps the member working, the members it admitted, and its power to admit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from interop.mesh_platform import Node, ceremony, quick_ping, start_agent, stop_agent, wait_for
from interop.netns import Lab
from interop.rotation_gap import address, build_mesh, longest_gap, peers, rotate_once
from ppn import decode_key

# One WireGuard handshake retry (REKEY_TIMEOUT): the bound for the swap.
HANDSHAKE_RETRY = 5.0


def allowed_ips(node: object, key: str) -> str:
    out = node.host.run(["wg", "show", node.interface, "allowed-ips"]).stdout  # type: ignore[attr-defined]
    return next((line.split("\t", 1)[1] for line in out.splitlines() if line.startswith(key)), "")


def test_longest_gap_counts_unanswered_requests() -> None:
    lines = "\n".join(
        f"64 bytes from 10.8.0.2: icmp_seq={n} ttl=64 time=0.3 ms" for n in (1, 2, 3, 7, 8)
    )
    assert longest_gap(lines) == pytest.approx(0.15)
    assert longest_gap(lines.replace("icmp_seq=7", "icmp_seq=4")) == pytest.approx(0.05 * 3)
    with pytest.raises(ValueError):
        longest_gap("")


@pytest.mark.netns
def test_rotate_wireguard_swaps_the_peer_everywhere_within_one_handshake(
    lab: Lab, tmp_path: Path
) -> None:
    nodes = build_mesh(lab, tmp_path)
    g, b, c = nodes["genesis"], nodes["bravo"], nodes["charlie"]
    before = {
        n: allowed_ips(nodes[n], json.loads((b.state / "node.json").read_text())["wg"])
        for n in ("genesis", "charlie")
    }
    bravo_identity = decode_key(json.loads((b.state / "node.json").read_text())["identity"])
    first_record = _signed(b).get(bravo_identity)
    for _ in range(2):
        rotation = rotate_once(nodes)
        for _retry in range(3):
            # An answered echo as slow as the bound means the box starved the pings (a qemu
            # guest beside the suite once made it 7 s): the gap then measures the box, not the
            # swap. Rotate again, up to three times; a responsive measurement is judged strictly.
            if rotation.worst_rtt < HANDSHAKE_RETRY:
                break
            rotation = rotate_once(nodes)
        assert rotation.gap < HANDSHAKE_RETRY, rotation
        assert rotation.worst_rtt < HANDSHAKE_RETRY, rotation
        assert rotation.old_key != rotation.new_key
        for other in (g, c):
            wait_for(
                lambda other=other, r=rotation: (
                    r.new_key in peers(other)  # type: ignore[misc]
                    and r.old_key not in peers(other)
                ),
                20,
                f"{other.name} to swap bravo's peer",
            )
        # Bravo's own interface uses the new key; node.json and wireguard.key agree.
        own = b.host.run(["wg", "show", b.interface, "public-key"]).stdout.strip()
        assert own == rotation.new_key
        assert json.loads((b.state / "node.json").read_text())["wg"] == rotation.new_key
        assert not (b.state / "wireguard.key.next").exists()
    for name, other in (("genesis", g), ("charlie", c)):
        assert allowed_ips(other, rotation.new_key) == before[name]
    # Replay: genesis's agent takes bravo's first record again (through its outbox, verified
    # like any record) and pushes nothing; the old key does not come back anywhere.
    from ppn.mesh._io_state import queue_records

    queue_records(g.state, [first_record])
    wait_for(lambda: not (g.state / "outbox.bin").exists(), 20, "genesis to take the replay")
    latest = _signed(g).get(bravo_identity)
    assert latest is not None and latest.version > first_record.version
    assert rotation.new_key in peers(g) and rotation.new_key in peers(c)
    assert rotation.old_key not in peers(g) and quick_ping(g.host, address(b))
    # The ceremony's preliminary peers never come back for a member the signed roster knows.
    assert len(peers(g)) == 2 and len(peers(c)) == 2
    status = g.status()
    bravo = next(m for m in status["members"] if m["name"] == "bravo")
    assert bravo["version"] >= 4 and bravo["reachable"]
    for node in nodes.values():
        assert stop_agent(node) == 0


@pytest.mark.netns
def test_rotation_signed_while_the_agent_is_down_is_handed_over_by_the_next_up(
    lab: Lab, tmp_path: Path
) -> None:
    nodes = build_mesh(lab, tmp_path)
    g, b = nodes["genesis"], nodes["bravo"]
    old = json.loads((b.state / "node.json").read_text())["wg"]
    assert stop_agent(b) == 0
    # As if the agent had crashed right after the key was staged and the record signed.
    out = json.loads(b.ppn("rotate", "wireguard", "--state", str(b.state), "--json").stdout)
    assert out["agent"] == "queued"
    assert (b.state / "wireguard.key.next").exists()
    # Still the old key everywhere: the record has not left bravo.
    assert json.loads((b.state / "node.json").read_text())["wg"] == old
    assert old in peers(g)
    again = b.ppn("rotate", "wireguard", "--state", str(b.state), check=False)
    assert again.returncode == 81
    assert b.status()["rotation_pending"] == ["wireguard"]
    start_agent(b)
    wait_for(lambda: out["new_key"] in peers(g), 30, "genesis to take bravo's new key")
    wait_for(lambda: quick_ping(g.host, address(b)), 30, "genesis to reach bravo again")
    wait_for(
        lambda: json.loads((b.state / "node.json").read_text())["wg"] == out["new_key"],
        30,
        "bravo to promote its new key",
    )
    assert quick_ping(b.host, address(g))
    for node in nodes.values():
        assert stop_agent(node) == 0


@pytest.mark.netns
def test_members_that_took_the_record_before_a_crash_are_found_with_the_new_key(
    lab: Lab, tmp_path: Path
) -> None:
    """The other crash window: the members have the new record, bravo never promoted its key
    (it crashed first). Its next 'ppn up' reaches no one with the old key, so the handover's
    next attempt uses the new one and finds them."""
    from ppn.mesh._io_state import load_mesh_files, load_roster, queue_records

    nodes = build_mesh(lab, tmp_path)
    g, b = nodes["genesis"], nodes["bravo"]
    assert stop_agent(b) == 0
    out = json.loads(b.ppn("rotate", "wireguard", "--state", str(b.state), "--json").stdout)
    files = load_mesh_files(b.state)
    saved = load_roster(b.state, mesh=files.mesh, cidr=files.cidr)
    assert saved is not None
    record = saved.roster.get(files.identity.public)
    # Hand bravo's new record to genesis's agent, which pushes it to charlie: the mesh has it.
    queue_records(g.state, [record])  # type: ignore[list-item]
    wait_for(lambda: out["new_key"] in peers(g), 30, "genesis to take bravo's new key")
    wait_for(lambda: out["new_key"] in peers(nodes["charlie"]), 30, "charlie to take it")
    start_agent(b)
    wait_for(
        lambda: json.loads((b.state / "node.json").read_text())["wg"] == out["new_key"],
        60,
        "bravo to find the members with its new key and promote it",
    )
    wait_for(lambda: quick_ping(g.host, address(b)), 30, "genesis to reach bravo again")
    for node in nodes.values():
        assert stop_agent(node) == 0


def _join_via(lab: Lab, nodes: dict[str, Node], sponsor: str, name: str, subnet: int) -> Node:
    """A new namespace linked to every member, admitted through ``sponsor``'s 'ppn invite'."""
    host = lab.host(name)
    endpoints = []
    for i, other in enumerate(nodes.values()):
        net = f"10.78.{subnet + i}"
        lab.link(other.host, f"{net}.1/24", host, f"{net}.2/24")
        endpoints.append(f"{net}.2:51820")
        if other.name == sponsor:
            listen = f"{net}.1:0"
    node = Node(host, name, nodes[sponsor].state.parent / name, lab.unique_ifname("ppn"))
    ceremony(nodes[sponsor], node, listen=listen, first=False, joiner_endpoints=endpoints)
    start_agent(node)
    nodes[name] = node
    return node


def _signed(node: Node) -> Any:
    from ppn.mesh._io_state import load_mesh_files, load_roster

    files = load_mesh_files(node.state)
    saved = load_roster(node.state, mesh=files.mesh, cidr=files.cidr)
    assert saved is not None
    return saved.roster


@pytest.mark.netns
def test_rotate_identity_keeps_the_member_working_and_able_to_admit(
    lab: Lab, tmp_path: Path
) -> None:
    nodes = build_mesh(lab, tmp_path)
    g, b = nodes["genesis"], nodes["bravo"]
    # delta is admitted by bravo before the rotation: it must stay.
    delta = _join_via(lab, nodes, "bravo", "delta", 20)
    wait_for(lambda: quick_ping(g.host, address(delta)), 60, "genesis to reach delta")
    # The genesis node's identity names the mesh: refused, nothing staged.
    refused = g.ppn("rotate", "identity", "--state", str(g.state), check=False)
    assert refused.returncode == 80 and "genesis" in refused.stderr
    assert not (g.state / "identity.key.next").exists()
    old_node = json.loads((b.state / "node.json").read_text())["identity"]
    agent_pid = b.agent.pid if b.agent else None
    out = json.loads(b.ppn("rotate", "identity", "--state", str(b.state), "--json").stdout)
    assert out["agent"] == "handed-over" and out["old_identity"] == old_node
    assert json.loads((b.state / "node.json").read_text())["identity"] == out["new_identity"]
    assert not (b.state / "identity.key.next").exists()
    assert b.agent is not None and b.agent.poll() is None and b.agent.pid == agent_pid
    for other in (g, nodes["charlie"], delta):
        wait_for(
            lambda other=other: any(  # type: ignore[misc]
                m["name"] == "bravo" and m["node_id"] == out["new_node_id"]
                for m in other.status()["members"]
            ),
            30,
            f"{other.name} to know bravo's new identity",
        )
        assert {m["name"] for m in other.status()["members"]} >= {"genesis", "bravo", "delta"}
    wait_for(lambda: quick_ping(g.host, address(b)), 30, "genesis to reach bravo")
    wait_for(lambda: quick_ping(b.host, address(g)), 30, "bravo to reach genesis")
    wait_for(lambda: quick_ping(g.host, address(delta)), 30, "genesis to reach delta")
    # The old identity is neither live nor removed on any member; its key's records are dead.
    view = _signed(g).view()
    old_raw, new_raw = decode_key(out["old_identity"]), decode_key(out["new_identity"])
    assert view.member(old_raw) is None and view.successor_of(old_raw) == new_raw
    assert not view.is_removed(old_raw)
    assert g.status()["rotated"] == [
        {"name": "bravo", "old_node_id": out["old_node_id"], "new_node_id": out["new_node_id"]}
    ]
    assert b.status()["rotation_pending"] == []
    # Still able to admit: echo joins through bravo's 'ppn invite' under the new identity.
    echo = _join_via(lab, nodes, "bravo", "echo", 40)
    wait_for(lambda: quick_ping(g.host, address(echo)), 60, "genesis to reach echo")
    record = _signed(g).get(
        decode_key(json.loads((echo.state / "node.json").read_text())["identity"])
    )
    assert record is not None and record.admission.admitter == new_raw
    assert _signed(g).view().member(record.identity) is not None
    # The same 'ppn up' process did all of it: it restarted itself in place as the successor.
    assert b.agent is not None and b.agent.poll() is None and b.agent.pid == agent_pid
    for node in nodes.values():
        assert stop_agent(node) == 0


@pytest.mark.netns
def test_identity_rotation_signed_while_the_agent_is_down_is_handed_over_by_the_next_up(
    lab: Lab, tmp_path: Path
) -> None:
    """The identity's crash window before delivery: the records wait in roster.bin, the next
    'ppn up' starts as the old identity, delivers, promotes and restarts as the new one."""
    nodes = build_mesh(lab, tmp_path)
    g, b = nodes["genesis"], nodes["bravo"]
    assert stop_agent(b) == 0
    out = json.loads(b.ppn("rotate", "identity", "--state", str(b.state), "--json").stdout)
    assert out["agent"] == "queued" and (b.state / "identity.key.next").exists()
    assert json.loads((b.state / "node.json").read_text())["identity"] == out["old_identity"]
    assert b.status()["rotation_pending"] == ["identity"]
    again = b.ppn("rotate", "identity", "--state", str(b.state), check=False)
    assert again.returncode == 81
    start_agent(b)
    wait_for(
        lambda: json.loads((b.state / "node.json").read_text())["identity"] == out["new_identity"],
        60,
        "bravo to hand its rotation over and promote the new identity",
    )
    wait_for(
        lambda: any(m["node_id"] == out["new_node_id"] for m in g.status()["members"]),
        30,
        "genesis to know bravo's new identity",
    )
    wait_for(lambda: quick_ping(g.host, address(b)), 30, "genesis to reach bravo")
    wait_for(lambda: quick_ping(b.host, address(g)), 30, "bravo to reach genesis")
    assert b.agent is not None and b.agent.poll() is None
    for node in nodes.values():
        assert stop_agent(node) == 0


@pytest.mark.netns
def test_members_that_took_the_identity_rotation_before_a_crash_still_route_the_old_address(
    lab: Lab, tmp_path: Path
) -> None:
    """The identity's other crash window: the members hold the rotation, bravo never promoted
    its new key. Its next 'ppn up' runs as the old identity (configuring its device as the
    successor, whose addresses the members route to it, the old control address included),
    delivers, promotes and restarts as the new identity."""
    from ppn.mesh._io_state import queue_records

    nodes = build_mesh(lab, tmp_path)
    g, b, c = nodes["genesis"], nodes["bravo"], nodes["charlie"]
    assert stop_agent(b) == 0
    out = json.loads(b.ppn("rotate", "identity", "--state", str(b.state), "--json").stdout)
    old, new = decode_key(out["old_identity"]), decode_key(out["new_identity"])
    roster = _signed(b)
    queue_records(g.state, [roster.get(old), roster.get(new)])
    for other in (g, c):
        wait_for(
            lambda other=other: _signed(other).view().successor_of(old) == new,  # type: ignore[misc]
            30,
            f"{other.name} to hold bravo's rotation",
        )
    start_agent(b)
    wait_for(
        lambda: json.loads((b.state / "node.json").read_text())["identity"] == out["new_identity"],
        60,
        "bravo to deliver from its old control address and promote the new identity",
    )
    wait_for(lambda: quick_ping(g.host, address(b)), 30, "genesis to reach bravo")
    wait_for(lambda: quick_ping(b.host, address(c)), 30, "bravo to reach charlie")
    for node in nodes.values():
        assert stop_agent(node) == 0
