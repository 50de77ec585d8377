"""Identity rotation's merge and view rules (RFC-NOTES §7.15): the rotation record, its
successor, what happens to the old identity's admissions, removals and admin rights, replay of
old records, and the merge laws with rotations in the pool."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn._errors import LocalProtocolError
from ppn.mesh._records import (
    ActKind,
    InvalidRecord,
    MemberRecord,
    Record,
    Rotation,
    build_record,
    check_record,
    sign_act,
    sign_admission,
    sign_member,
    sign_rotation,
    sign_tombstone,
)
from ppn.mesh._roster import Roster
from ppn.mesh._rotation import RotationRefusal, RotationRefused, sign_identity_rotation
from ppn.mesh._view import ProblemKind
from tests.ppn._mesh_support import CIDR, Fleet, identity, record_pool, roster_of, wg

ROTATED_AT = 5000


def rotated_fleet() -> tuple[Fleet, Rotation, MemberRecord]:
    """genesis admits alpha (1001); alpha admits charlie (1003); alpha rotates to alpha2."""
    fleet = Fleet()
    fleet.admit("alpha", now=1001, endpoints=("192.0.2.2:51820",), roles=("relay",))
    fleet.admit("charlie", by="alpha", now=1003)
    fleet.keys["alpha2"] = identity("alpha2")
    rotation, successor = sign_identity_rotation(
        fleet.roster, fleet.keys["alpha"], fleet.keys["alpha2"], now=ROTATED_AT
    )
    return fleet, rotation, successor


def admitted_by(fleet: Fleet, admitter: str, name: str, at: int) -> MemberRecord:
    key = identity(name)
    fleet.keys[name] = key
    record = sign_member(
        fleet.keys[admitter],
        admission=sign_admission(
            fleet.keys[admitter], mesh=fleet.mesh, identity=key.public, name=name, admitted_at=at
        ),
        wg_key=wg(name).public,
        address=f"10.8.0.{50 + len(fleet.keys)}",
        endpoints=(),
        roles=(),
        version=1,
    )
    fleet.roster.merge([record])
    return record


def test_the_successor_takes_over_everything_but_the_key() -> None:
    fleet, rotation, _ = rotated_fleet()
    old, new = fleet.keys["alpha"].public, fleet.keys["alpha2"].public
    view = fleet.roster.view()
    assert view.member(old) is None and not view.is_removed(old)
    member = view.member(new)
    assert member is not None and member.named and member.routed
    before = rotation.admission
    assert (member.name, member.admitted_at) == (before.name, before.admitted_at)
    assert member.wg_key == wg("alpha").public and member.roles == ("relay",)
    assert member.endpoints == ("192.0.2.2:51820",) and member.address == "10.8.0.2"
    assert member.admitter == old and member.version == 1 and member.record.signer == new
    assert view.rotated == ((old, new),) and view.successor_of(old) == new
    assert fleet.roster.get(old) is rotation


def test_members_admitted_before_the_rotation_stay_and_the_successor_admits() -> None:
    fleet, _, _ = rotated_fleet()
    view = fleet.roster.view()
    assert view.member(fleet.keys["charlie"].public) is not None
    later = admitted_by(fleet, "alpha2", "delta", ROTATED_AT + 10)
    assert fleet.roster.view().member(later.identity) is not None
    # The roster's own admit() works for the successor too (what 'ppn up' signs).
    record = fleet.roster.admit(
        fleet.keys["alpha2"],
        name="echo",
        identity=identity("echo").public,
        wg_key=wg("echo").public,
        now=ROTATED_AT + 20,
    )
    assert fleet.roster.view().member(record.identity) is not None


def test_the_old_key_s_admissions_after_the_rotation_are_refused() -> None:
    fleet, _, _ = rotated_fleet()
    late = admitted_by(fleet, "alpha", "mallory", ROTATED_AT + 1)
    on_time = admitted_by(fleet, "alpha", "oscar", ROTATED_AT)
    view = fleet.roster.view()
    assert view.member(late.identity) is None
    assert any(
        p.kind is ProblemKind.BROKEN_CHAIN and "after the rotation" in p.detail
        for p in view.problems_of(late.identity)
    )
    # At or before the rotation time the old key still spoke for the member (and a leaked key
    # can back-date: RFC-NOTES §7.15, as §7.12 says of removed keys).
    assert view.member(on_time.identity) is not None


def test_the_old_key_s_removals_and_admin_acts_after_the_rotation_do_not_count() -> None:
    fleet, _, _ = rotated_fleet()
    genesis = fleet.genesis
    grant = sign_act(
        genesis,
        mesh=fleet.mesh,
        act=ActKind.GRANT_ADMIN,
        subject=fleet.keys["alpha"].public,
        at=2000,
    )
    fleet.roster.merge([grant])
    view = fleet.roster.view()
    # Granted to alpha before its rotation: the rights passed to alpha2.
    assert view.is_admin(fleet.keys["alpha2"].public)
    assert not view.is_admin(fleet.keys["alpha"].public)
    charlie = fleet.keys["charlie"].public
    stale = sign_act(
        fleet.keys["alpha"], mesh=fleet.mesh, act=ActKind.REMOVE, subject=charlie, at=ROTATED_AT + 5
    )
    fleet.roster.merge([stale])
    view = fleet.roster.view()
    assert view.member(charlie) is not None
    assert any(
        p.kind is ProblemKind.ACT_NOT_COUNTED for p in view.problems_of(fleet.keys["alpha"].public)
    )
    fresh = sign_act(
        fleet.keys["alpha2"],
        mesh=fleet.mesh,
        act=ActKind.REMOVE,
        subject=charlie,
        at=ROTATED_AT + 6,
    )
    fleet.roster.merge([fresh])
    assert fleet.roster.view().is_removed(charlie)


def test_older_records_of_the_old_identity_never_bring_it_back() -> None:
    """Replay/rollback: every member version of the old identity ranks below its rotation, so
    neither a replayed old entry nor a new version signed by the old key revives it."""
    fleet = Fleet()
    fleet.admit("alpha", now=1001)
    alpha = fleet.keys["alpha"]
    v1 = fleet.roster.get(alpha.public)
    v2 = fleet.roster.update_self(alpha, endpoints=["192.0.2.9:51820"])
    fleet.keys["alpha2"] = identity("alpha2")
    rotation, successor = sign_identity_rotation(
        fleet.roster, alpha, fleet.keys["alpha2"], now=ROTATED_AT
    )
    assert isinstance(v1, MemberRecord)
    v99 = sign_member(
        alpha,
        admission=v1.admission,
        wg_key=wg("evil").public,
        address="10.8.0.2",
        endpoints=(),
        roles=(),
        version=99,
    )
    for replay in (v1, v2, v99):
        assert fleet.roster.merge([replay]).changed == ()
        assert fleet.roster.ingest([replay.to_value()]).changed == ()
    genesis = fleet.roster.get(fleet.genesis.public)
    assert genesis is not None
    for order in (
        [v2, rotation, successor, v99],
        [successor, v99, rotation, v1],
        [rotation, v2, successor],
    ):
        roster = Roster(mesh=fleet.mesh, network=CIDR, records=[genesis])
        roster.merge(order)
        view = roster.view()
        assert view.member(alpha.public) is None
        assert view.member(fleet.keys["alpha2"].public) is not None


def test_a_removal_outranks_a_rotation_and_a_removed_key_cannot_rotate_back_in() -> None:
    fleet = Fleet()
    fleet.admit("alpha", now=1001)
    alpha = fleet.keys["alpha"]
    record = fleet.roster.get(alpha.public)
    assert record is not None
    removal = sign_tombstone(fleet.genesis, admission=record.admission, removed_at=2000)
    rotation = sign_rotation(alpha, identity("alpha2"), admission=record.admission, rotated_at=3000)
    for order in ([removal, rotation], [rotation, removal]):
        roster = Roster(
            mesh=fleet.mesh, network=CIDR, records=[fleet.roster.get(fleet.genesis.public)]
        )  # type: ignore[list-item]
        roster.merge([record, *order])
        assert roster.get(alpha.public) is removal
        assert roster.view().is_removed(alpha.public) and roster.view().rotated == ()


def test_removing_the_old_identity_after_the_rotation_leaves_the_successor() -> None:
    fleet, rotation, successor = rotated_fleet()
    fleet.roster.merge(
        [sign_tombstone(fleet.genesis, admission=rotation.admission, removed_at=ROTATED_AT + 100)]
    )
    assert fleet.roster.view().member(successor.identity) is not None


def test_a_successor_must_keep_its_predecessor_s_name_and_time() -> None:
    fleet = Fleet()
    fleet.admit("alpha", now=1001)
    alpha, new = fleet.keys["alpha"], identity("alpha2")
    record = fleet.roster.get(alpha.public)
    assert record is not None
    fleet.roster.merge([sign_rotation(alpha, new, admission=record.admission, rotated_at=4000)])
    for name, at in (("other", 1001), ("alpha", 1500)):
        forged = sign_member(
            new,
            admission=sign_admission(
                alpha, mesh=fleet.mesh, identity=new.public, name=name, admitted_at=at
            ),
            wg_key=wg("alpha").public,
            address="10.8.0.2",
            endpoints=(),
            roles=(),
            version=1,
        )
        roster = roster_of([*fleet.roster.records(), forged], fleet.mesh)
        assert roster.view().member(new.public) is None
        assert "successor keeps" in roster.view().problems_of(new.public)[0].detail


def test_rotation_records_are_checked_locally() -> None:
    fleet = Fleet()
    fleet.admit("alpha", now=1001)
    alpha = fleet.keys["alpha"]
    record = fleet.roster.get(alpha.public)
    assert record is not None
    good = sign_rotation(alpha, identity("alpha2"), admission=record.admission, rotated_at=3000)
    value: dict[str, Any] = good.to_value()
    bad_values = [
        {**value, "successor_sig": bytes(64)},
        {**value, "sig": bytes(64)},
        {**value, "successor": identity("x").public},
        {**value, "rotated_at": 1000},
        {**{k: v for k, v in value.items() if k != "successor_sig"}},
    ]
    for bad in bad_values:
        with pytest.raises(InvalidRecord):
            check_record(build_record(bad))
    check_record(build_record(value))
    with pytest.raises(LocalProtocolError):  # signed by someone else than the member
        sign_rotation(
            fleet.keys["genesis"], identity("y"), admission=record.admission, rotated_at=3000
        )
    with pytest.raises(LocalProtocolError):  # the genesis identity is not rotated
        genesis = fleet.roster.get(fleet.genesis.public)
        assert genesis is not None
        sign_rotation(fleet.genesis, identity("z"), admission=genesis.admission, rotated_at=3000)
    with pytest.raises(RotationRefused) as refused:
        sign_identity_rotation(fleet.roster, fleet.genesis, identity("z"), now=3000)
    assert refused.value.kind is RotationRefusal.GENESIS


def _rotation_pool() -> list[Record]:
    fleet, rotation, successor = rotated_fleet()
    extra: list[Record] = [rotation, successor]
    extra.append(admitted_by(fleet, "alpha2", "delta", ROTATED_AT + 10))
    extra.append(admitted_by(fleet, "alpha", "mallory", ROTATED_AT + 1))
    extra.append(
        sign_act(
            fleet.genesis,
            mesh=fleet.mesh,
            act=ActKind.GRANT_ADMIN,
            subject=fleet.keys["alpha"].public,
            at=2000,
        )
    )
    extra.append(
        sign_tombstone(fleet.genesis, admission=rotation.admission, removed_at=ROTATED_AT + 50)
    )
    return [*fleet.roster.records(), *extra]


POOL = record_pool() + _rotation_pool()
MESH = Fleet().mesh
subsets = st.lists(st.sampled_from(POOL), max_size=len(POOL) + 4)


def meaning(roster: Roster) -> Any:
    view = roster.view()
    return (
        roster.state(),
        [(m.identity, m.version, m.routed, m.named) for m in view.members],
        [r.identity for r in view.removed],
        view.rotated,
        sorted(view.admins),
        [(p.kind, p.identity, p.detail) for p in view.problems],
    )


@settings(max_examples=120, deadline=None)
@given(subsets, subsets)
def test_merge_with_rotations_is_commutative(a: list[Record], b: list[Record]) -> None:
    assert meaning(roster_of(a + b, MESH)) == meaning(roster_of(b + a, MESH))


@settings(max_examples=80, deadline=None)
@given(subsets)
def test_merge_with_rotations_is_idempotent(a: list[Record]) -> None:
    once = roster_of(a, MESH)
    twice = roster_of(a, MESH)
    twice.merge(a)
    assert meaning(once) == meaning(twice)


@settings(max_examples=80, deadline=None)
@given(st.permutations(POOL))
def test_any_delivery_order_gives_the_same_rotated_roster(order: list[Record]) -> None:
    assert meaning(roster_of(order, MESH)) == meaning(roster_of(POOL, MESH))


@settings(max_examples=80, deadline=None)
@given(subsets)
def test_a_rotated_identity_is_never_live_and_its_successor_never_doubles_it(
    a: list[Record],
) -> None:
    view = roster_of(a, MESH).view()
    live = {m.identity for m in view.members}
    for old, new in view.rotated:
        assert old not in live
        assert view.successor_of(old) == new
    names = [m.name for m in view.members if m.named]
    assert len(names) == len(set(names))


def test_members_route_a_successor_s_predecessor_control_addresses_to_it() -> None:
    """A node that crashed after its members took its rotation, before it promoted the key,
    still reaches them from its old control address (RFC-NOTES §7.8, §7.15)."""
    from ppn.mesh._ids import node_address6
    from ppn.mesh._topology import plan_topology

    fleet, rotation, successor = rotated_fleet()
    fleet.keys["alpha3"] = identity("alpha3")
    again, third = sign_identity_rotation(
        fleet.roster, fleet.keys["alpha2"], fleet.keys["alpha3"], now=ROTATED_AT + 1
    )
    topology = plan_topology(
        fleet.roster.view(),
        network=fleet.roster.network,
        self_identity=fleet.genesis.public,
        observations={},
        now=ROTATED_AT + 2,
    )
    config = topology.config
    assert config is not None
    peer = next(p for p in config.peers if p.wg_key == wg("alpha").public)
    for ident in (rotation.identity, again.identity, third.identity):
        assert f"{node_address6(fleet.mesh, ident)}/128" in peer.allowed_ips
    # And the rotating node itself, still running as the oldest identity, plans as the newest.
    assert fleet.roster.view().current_identity(rotation.identity) == third.identity
    assert successor.identity == again.identity
