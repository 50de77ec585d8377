"""``ppn rotate wireguard`` on real wireguard-go in three namespaces, agents running, CLI only
(issue 18): every member swaps the rotating node's peer (old public key gone, new one present
with the same allowed IPs), pings keep flowing with a gap well under one handshake retry, and a
rotation signed while the node's agent was down (the crash window between staging the key and
publishing the record) is handed over by the next 'ppn up' without locking the node out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interop.mesh_platform import quick_ping, start_agent, stop_agent, wait_for
from interop.netns import Lab
from interop.rotation_gap import address, build_mesh, longest_gap, peers, rotate_once

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
    for _ in range(2):
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
