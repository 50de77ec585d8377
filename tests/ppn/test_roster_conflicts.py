"""Address allocation and the conflict rules: concurrent sponsors, losers re-addressed and told."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn import LocalProtocolError
from ppn.mesh._addressing import (
    AddressSpaceExhausted,
    first_host,
    is_host_address,
    lowest_free,
    parse_cidr,
)
from ppn.mesh._agent import MeshAgent
from ppn.mesh._roster import Roster
from ppn.mesh._view import ProblemKind
from tests.ppn._mesh_support import CIDR, Fleet, identity, wg


def test_genesis_takes_the_first_host_and_joins_the_lowest_free() -> None:
    fleet = Fleet()
    assert fleet.roster.get(fleet.genesis.public).address == "10.8.0.1"  # type: ignore[union-attr]
    assert fleet.admit("a").address == "10.8.0.2"  # type: ignore[union-attr]
    assert fleet.admit("b").address == "10.8.0.3"  # type: ignore[union-attr]
    fleet.roster.remove(fleet.keys["a"], fleet.keys["a"].public, now=2000)
    # A removed member's address is free again.
    assert fleet.admit("c", now=2001).address == "10.8.0.2"  # type: ignore[union-attr]


def test_custom_cidr_and_exhaustion() -> None:
    net = parse_cidr("10.9.0.0/30")
    assert first_host(net) == "10.9.0.1"
    assert lowest_free(net, ["10.9.0.1"]) == "10.9.0.2"
    with pytest.raises(AddressSpaceExhausted):
        lowest_free(net, ["10.9.0.1", "10.9.0.2"])
    assert not is_host_address(net, "10.9.0.3")  # broadcast
    assert not is_host_address(net, "10.9.0.0")
    assert parse_cidr("fd00:8::/64").version == 6
    with pytest.raises(LocalProtocolError):
        parse_cidr("10.8.0.1/24")


def _two_sponsors() -> tuple[Fleet, Roster, Roster, bytes, bytes]:
    """alpha and bravo both admit a member at once, each unaware of the other."""
    fleet = Fleet()
    fleet.admit("alpha", now=1001)
    fleet.admit("bravo", now=1002)
    left, right = fleet.roster.copy(), fleet.roster.copy()
    x, y = identity("xray"), identity("yankee")
    fleet.keys["xray"], fleet.keys["yankee"] = x, y
    rx = left.admit(
        fleet.keys["alpha"], name="xray", identity=x.public, wg_key=wg("x").public, now=1100
    )
    ry = right.admit(
        fleet.keys["bravo"], name="yankee", identity=y.public, wg_key=wg("y").public, now=1101
    )
    assert rx.address == ry.address == "10.8.0.4"
    left.merge_roster(right)
    right.merge_roster(left)
    return fleet, left, right, x.public, y.public


def test_concurrent_sponsors_resolve_alike_and_the_loser_is_told() -> None:
    _, left, right, x, y = _two_sponsors()
    for roster in (left, right):
        view = roster.view()
        assert view.member(x).routed  # type: ignore[union-attr]
        assert not view.member(y).routed  # type: ignore[union-attr]
        (problem,) = view.problems_of(y)
        assert problem.kind is ProblemKind.ADDRESS_CONFLICT
        assert problem.winner == x
        assert problem.suggested_address == "10.8.0.5"
    assert left.view() == right.view()


def test_the_loser_readdresses_itself_and_everyone_converges() -> None:
    fleet, left, right, _, y = _two_sponsors()
    agent = MeshAgent(right, identity=fleet.keys["yankee"], now=0.0)
    record = right.get(y)
    assert record is not None and record.address == "10.8.0.5"  # type: ignore[union-attr]
    assert record.signer == y  # signed by the loser itself
    pushed = []
    while (action := agent.next_action()) is not None:
        pushed.append(action)
    assert any(getattr(a, "records", None) for a in pushed)
    left.merge_roster(right)
    assert left.digest() == right.digest()
    assert not left.view().problems
    addresses = [m.address for m in left.view().members]
    assert len(addresses) == len(set(addresses))


def test_same_time_admissions_tie_break_on_node_id() -> None:
    fleet = Fleet()
    fleet.admit("alpha", now=1001)
    fleet.admit("bravo", now=1001)
    a, b = fleet.keys["alpha"].public, fleet.keys["bravo"].public
    left, right = fleet.roster.copy(), fleet.roster.copy()
    p, q = identity("p"), identity("q")
    left.admit(fleet.keys["alpha"], name="p", identity=p.public, wg_key=wg("p").public, now=1200)
    right.admit(fleet.keys["bravo"], name="q", identity=q.public, wg_key=wg("q").public, now=1200)
    left.merge_roster(right)
    view = left.view()
    winner = min((view.member(p.public), view.member(q.public)), key=lambda m: m.node_id)  # type: ignore[union-attr,return-value]
    assert winner.routed  # type: ignore[union-attr]
    assert a != b


def test_a_duplicated_wireguard_key_is_configured_once() -> None:
    fleet = Fleet()
    fleet.admit("alpha")
    clash = identity("clash")
    fleet.roster.admit(
        fleet.genesis, name="clash", identity=clash.public, wg_key=wg("alpha").public, now=1500
    )
    view = fleet.roster.view()
    assert view.member(clash.public) is None
    assert view.problems[0].kind is ProblemKind.WG_KEY_CONFLICT


def test_address_outside_the_mesh_is_not_routed() -> None:
    fleet = Fleet()
    record = fleet.admit("alpha", address="192.168.5.5")
    member = fleet.roster.view().member(record.identity)
    assert member is not None and not member.routed
    assert (
        fleet.roster.view().problems_of(record.identity)[0].kind is ProblemKind.ADDRESS_OUTSIDE_MESH
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1000, 1010)), min_size=1, max_size=8))
def test_partitioned_sponsors_never_leave_two_routed_members_on_one_address(
    admissions: list[tuple[int, int]],
) -> None:
    """Three sponsors admit members on their own copies; after merging and letting every loser
    re-address itself, every routed address is unique and no conflict is left."""
    fleet = Fleet()
    for name in ("s0", "s1"):
        fleet.admit(name, now=1000)
    sponsors = ["genesis", "s0", "s1"]
    copies = [fleet.roster.copy() for _ in sponsors]
    joined = []
    for i, (which, when) in enumerate(admissions):
        key = identity(f"j{i}")
        joined.append(key)
        copies[which].admit(
            fleet.keys[sponsors[which]],
            name=f"j{i}",
            identity=key.public,
            wg_key=wg(f"j{i}").public,
            now=when,
        )
    merged = Roster(mesh=fleet.mesh, network=CIDR)
    for copy in copies:
        merged.merge_roster(copy)
    for _ in range(len(joined) + 1):
        for key in joined:
            merged.readdress_if_needed(key)
    view = merged.view()
    routed = [m.address for m in view.members if m.routed]
    assert len(routed) == len(set(routed)) == len(view.members)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(CIDR) for a in routed)
    assert not [p for p in view.problems if p.kind is ProblemKind.ADDRESS_CONFLICT]
