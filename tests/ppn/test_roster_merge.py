"""Roster merge is a join-semilattice: commutative, associative, idempotent, order-independent;
and what a roster *means* (members, conflicts, problems) depends only on the records it holds."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ppn.mesh._records import Record
from ppn.mesh._roster import Roster
from tests.ppn._mesh_support import CIDR, Fleet, record_pool, roster_of

POOL = record_pool()
MESH = Fleet().mesh

subsets = st.lists(st.sampled_from(POOL), max_size=len(POOL) + 4)


def meaning(roster: Roster) -> Any:
    view = roster.view()
    return (
        roster.state(),
        roster.digest(),
        [(m.identity, m.version, m.routed, m.named) for m in view.members],
        [t.identity for t in view.removed],
        [(p.kind, p.identity, p.winner, p.suggested_address) for p in view.problems],
    )


def merged(*parts: list[Record]) -> Roster:
    roster = Roster(mesh=MESH, network=CIDR)
    for part in parts:
        roster.merge_roster(roster_of(part, MESH))
    return roster


def test_the_pool_exercises_every_rule() -> None:
    view = roster_of(POOL, MESH).view()
    kinds = {p.kind.value for p in view.problems}
    assert {"broken-chain", "name-conflict"} <= kinds
    assert len(view.removed) == 2
    assert any(m.version == 3 for m in view.members)


@settings(max_examples=150, deadline=None)
@given(subsets, subsets)
def test_merge_is_commutative(a: list[Record], b: list[Record]) -> None:
    assert meaning(merged(a, b)) == meaning(merged(b, a))


@settings(max_examples=100, deadline=None)
@given(subsets, subsets, subsets)
def test_merge_is_associative(a: list[Record], b: list[Record], c: list[Record]) -> None:
    left = merged(a, b)
    left.merge_roster(roster_of(c, MESH))
    bc = merged(b, c)
    right = roster_of(a, MESH)
    right.merge_roster(bc)
    assert meaning(left) == meaning(right)


@settings(max_examples=100, deadline=None)
@given(subsets)
def test_merge_is_idempotent(a: list[Record]) -> None:
    once = roster_of(a, MESH)
    before = meaning(once)
    result = once.merge_roster(roster_of(a, MESH))
    assert not result.changed
    assert meaning(once) == before


@settings(max_examples=100, deadline=None)
@given(st.permutations(POOL))
def test_any_delivery_order_gives_the_same_roster(order: list[Record]) -> None:
    one_by_one = Roster(mesh=MESH, network=CIDR)
    for record in order:
        one_by_one.merge([record])
    assert meaning(one_by_one) == meaning(roster_of(POOL, MESH))


@settings(max_examples=60, deadline=None)
@given(subsets, subsets)
def test_anti_entropy_compare_converges(a: list[Record], b: list[Record]) -> None:
    left, right = roster_of(a, MESH), roster_of(b, MESH)
    # A record one side holds in quarantine (its admitter only on the other side) is stored
    # there during an exchange and goes across in the next: each round moves at least one
    # link of every chain, so the rounds are bounded by the pool's chain depth.
    for _ in range(len(POOL)):
        send, want = left.compare(right.summary())
        right.merge(send)
        left.merge([r for w in want if (r := right.get(w)) is not None])
        if left.digest() == right.digest():
            break
    assert left.digest() == right.digest()
    assert meaning(left) == meaning(merged(a, b))


def test_digest_distinguishes_states() -> None:
    empty = Roster(mesh=MESH, network=CIDR)
    full = roster_of(POOL, MESH)
    assert empty.digest() != full.digest()
    assert full.digest() == roster_of(list(reversed(POOL)), MESH).digest()


@settings(max_examples=150, deadline=None)
@given(subsets)
def test_every_view_keeps_its_invariants(a: list[Record]) -> None:
    roster = roster_of(a, MESH)
    view = roster.view()
    routed = [m.address for m in view.members if m.routed]
    named = [m.name for m in view.members if m.named]
    keys = [m.wg_key for m in view.members]
    assert len(routed) == len(set(routed))
    assert len(named) == len(set(named))
    assert len(keys) == len(set(keys))
    counted = {m.identity for m in view.members} | {t.identity for t in view.removed}
    for member in view.members:
        admission = member.record.admission
        # Every counted member's chain reaches genesis through counted records.
        assert admission.is_genesis or admission.admitter in counted
    broken = {p.identity for p in view.problems if p.kind.value == "broken-chain"}
    assert broken.isdisjoint(counted)
    unconfigured = {p.identity for p in view.problems if p.kind.value == "wg-key-conflict"}
    assert broken | counted | unconfigured == set(roster.state())
