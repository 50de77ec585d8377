"""Admin delegation (issue 18, RFC-NOTES §7.14): who may grant, revoke and remove, how admin
acts merge and count, and 'ppn admin' on a state directory."""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesis import PartyInfo
from genesis._bundle import MemberRecord as CeremonyMember
from genesis._cli_run import grant_for
from genesis._derive import mesh_id_for
from genesis._io_state import MeshState, NodeState, new_node, write_membership
from ppn._errors import LocalProtocolError
from ppn.cli import main
from ppn.mesh._admin import AdminRefusal, AdminRefused, admins, plan_admin_act
from ppn.mesh._io_state import OUTBOX_FILE, load_roster, save_roster, take_queued_records
from ppn.mesh._records import (
    ActKind,
    AdminAct,
    InvalidRecord,
    MemberRecord,
    Record,
    decode_record,
    record_from_bytes,
    sign_act,
    sign_admission,
    sign_member,
    sign_tombstone,
)
from ppn.mesh._removal import RefusalKind, RemovalRefused, plan_removal, sign_removal
from ppn.mesh._roster import MAX_CLOCK_LEAD, Roster
from ppn.mesh._view import ProblemKind
from tests.ppn._mesh_support import Fleet, identity, wg

CIDR = "10.8.0.0/24"
GRANT, REVOKE, REMOVE = ActKind.GRANT_ADMIN, ActKind.REVOKE_ADMIN, ActKind.REMOVE


def fleet4() -> Fleet:
    fleet = Fleet()
    fleet.admit("bravo", now=1001)
    fleet.admit("charlie", now=1002)
    fleet.admit("delta", by="bravo", now=1003)
    return fleet


def names(fleet: Fleet) -> tuple[set[str], set[str], set[str]]:
    """(live members, removed members, admins) by name."""
    view = fleet.roster.view()
    by_id = {k.public: n for n, k in fleet.keys.items()}
    return (
        {m.name for m in view.members},
        {r.name for r in view.removed},
        {by_id[i] for i in view.admins},
    )


def act(fleet: Fleet, signer: str, kind: ActKind, subject: str, at: int) -> AdminAct:
    """An act stamped exactly ``at`` (Roster.act would stamp it no earlier than the roster's
    latest time), merged into the fleet's roster."""
    record = sign_act(
        fleet.keys[signer], mesh=fleet.mesh, act=kind, subject=fleet.keys[subject].public, at=at
    )
    fleet.roster.merge([record])
    return record


def test_an_act_is_stamped_no_earlier_than_the_roster_it_was_signed_on() -> None:
    """A lagging clock: bravo's clock says 1500, but its roster holds the grant of 2000."""
    fleet = fleet4()
    act(fleet, "genesis", GRANT, "bravo", 2000)
    record = fleet.roster.act(fleet.keys["bravo"], REMOVE, fleet.keys["charlie"].public, now=1500)
    assert record.at == 2000
    assert fleet.roster.view().is_removed(fleet.keys["charlie"].public)
    later = fleet.roster.act(fleet.keys["bravo"], REMOVE, fleet.keys["delta"].public, now=9000)
    assert later.at == 9000
    # Only what counts moves the clock: charlie's act (no rights) stamped far ahead does not.
    act(fleet, "charlie", GRANT, "bravo", 10**12)
    assert fleet.roster.view().clock == 9000
    revoked = fleet.roster.act(fleet.genesis, REVOKE, fleet.keys["bravo"].public, now=9100)
    assert revoked.at == 9100
    # A counted time far ahead is followed at most MAX_CLOCK_LEAD past the signer's clock.
    act(fleet, "genesis", GRANT, "bravo", 10**12)
    assert fleet.roster.view().clock == 10**12
    capped = fleet.roster.act(fleet.genesis, REVOKE, fleet.keys["bravo"].public, now=9200)
    assert capped.at == 9200 + MAX_CLOCK_LEAD


def test_genesis_is_the_only_admin_until_it_grants() -> None:
    fleet = fleet4()
    assert names(fleet)[2] == {"genesis"}
    assert [m.name for m in admins(fleet.roster)] == ["genesis"]
    act(fleet, "genesis", GRANT, "bravo", 2000)
    assert names(fleet)[2] == {"genesis", "bravo"}
    # An admin names more admins; a member without the right names nobody.
    act(fleet, "bravo", GRANT, "delta", 2100)
    act(fleet, "charlie", GRANT, "bravo", 2150)  # no right (and bravo already is one)
    no_right = act(fleet, "charlie", REVOKE, "delta", 2200)
    assert names(fleet)[2] == {"genesis", "bravo", "delta"}
    problems = fleet.roster.view().problems_of(fleet.keys["charlie"].public)
    assert [p.kind for p in problems] == [ProblemKind.ACT_NOT_COUNTED] * 2
    assert "not an admin" in problems[0].detail
    assert fleet.roster.get(no_right.identity) == no_right  # stored, in its own slot


def test_a_removal_by_a_non_admin_overwrites_nothing_and_counts_nowhere() -> None:
    fleet = fleet4()
    bravo = fleet.roster.get(fleet.keys["bravo"].public)
    act(fleet, "charlie", REMOVE, "bravo", 2000)
    assert "bravo" in names(fleet)[0] and not names(fleet)[1]
    assert fleet.roster.get(fleet.keys["bravo"].public) == bravo
    # Once charlie is an admin, only acts signed from then on count.
    act(fleet, "genesis", GRANT, "charlie", 3000)
    assert "bravo" in names(fleet)[0]
    act(fleet, "charlie", REMOVE, "bravo", 3100)
    live, removed, admin = names(fleet)
    assert "bravo" not in live and removed == {"bravo"} and admin == {"genesis", "charlie"}
    # A member removed by an act stays removed whatever its own key signs next.
    fleet.roster.update_self(fleet.keys["bravo"], endpoints=["192.0.2.9:51820"])
    assert fleet.roster.view().is_removed(fleet.keys["bravo"].public)


def test_revocation_and_removal_end_rights_from_their_time_on() -> None:
    fleet = fleet4()
    act(fleet, "genesis", GRANT, "bravo", 2000)
    act(fleet, "bravo", REMOVE, "delta", 2500)  # while an admin: counts
    act(fleet, "genesis", REVOKE, "bravo", 3000)
    act(fleet, "bravo", REMOVE, "charlie", 3500)  # after the revocation: does not
    live, removed, admin = names(fleet)
    assert removed == {"delta"} and "charlie" in live and admin == {"genesis"}
    # Granted again later, then removed: its rights end with it.
    act(fleet, "genesis", GRANT, "bravo", 4000)
    assert names(fleet)[2] == {"genesis", "bravo"}
    act(fleet, "genesis", GRANT, "charlie", 4100)
    act(fleet, "charlie", REMOVE, "bravo", 4200)
    act(fleet, "bravo", REMOVE, "genesis", 4300)  # removed at 4200: counts nowhere
    live, removed, admin = names(fleet)
    assert removed == {"delta", "bravo"} and admin == {"genesis", "charlie"}
    # An admin may resign.
    act(fleet, "charlie", REVOKE, "charlie", 4400)
    assert names(fleet)[2] == {"genesis"}


def test_a_delegated_admin_removes_the_lost_genesis_node_and_the_mesh_goes_on() -> None:
    fleet = fleet4()
    act(fleet, "genesis", GRANT, "bravo", 2000)
    plan = plan_removal(fleet.roster, fleet.keys["bravo"], "genesis")
    assert plan.by_admin_act and not plan.self_removal
    record = sign_removal(fleet.roster, fleet.keys["bravo"], plan, now=3000)
    assert isinstance(record, AdminAct) and record.act is REMOVE
    live, removed, admin = names(fleet)
    assert removed == {"genesis"} and live == {"bravo", "charlie", "delta"} and admin == {"bravo"}
    # The genesis key's later acts count nowhere; a member it "admits" later has no chain.
    act(fleet, "genesis", REVOKE, "bravo", 3100)
    with pytest.raises(LocalProtocolError):
        fleet.admit("mallory", now=3200)  # the roster will not sign it; a stolen key would:
    mallory = identity("mallory")
    admission = sign_admission(
        fleet.genesis, mesh=fleet.mesh, identity=mallory.public, name="mallory", admitted_at=3200
    )
    fleet.roster.merge(
        [
            sign_member(
                fleet.genesis,
                admission=admission,
                wg_key=wg("mallory").public,
                address="10.8.0.9",
                endpoints=(),
                roles=(),
                version=1,
            )
        ]
    )
    view = fleet.roster.view()
    assert view.is_admin(fleet.keys["bravo"].public)
    assert view.by_name("mallory") is None
    assert any(p.kind is ProblemKind.BROKEN_CHAIN for p in view.problems)
    with pytest.raises(RemovalRefused) as refused:
        plan_removal(fleet.roster, fleet.genesis, "charlie")  # a removed node removes no one
    assert refused.value.kind is RefusalKind.NOT_ALLOWED
    # The remaining admin still admits and removes.
    fleet.admit("echo", by="bravo", now=3300)
    sign_removal(
        fleet.roster,
        fleet.keys["bravo"],
        plan_removal(fleet.roster, fleet.keys["bravo"], "charlie"),
        now=3400,
    )
    live, removed, _ = names(fleet)
    assert live == {"bravo", "delta", "echo"} and removed == {"genesis", "charlie"}


def test_who_may_remove_whom() -> None:
    fleet = fleet4()
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, fleet.genesis, "genesis")  # no delegated admin: never
    assert info.value.kind is RefusalKind.GENESIS
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, fleet.keys["charlie"], "genesis")
    assert info.value.kind is RefusalKind.GENESIS
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, fleet.keys["bravo"], "delta")  # sponsoring is no right
    assert info.value.kind is RefusalKind.NOT_ALLOWED
    act(fleet, "genesis", GRANT, "bravo", 2000)
    assert plan_removal(fleet.roster, fleet.keys["bravo"], "charlie").by_admin_act
    assert not plan_removal(fleet.roster, fleet.genesis, "charlie").by_admin_act  # a tombstone
    assert not plan_removal(fleet.roster, fleet.keys["charlie"], "charlie").by_admin_act
    with pytest.raises(RemovalRefused):
        plan_removal(fleet.roster, fleet.genesis, "genesis")  # the genesis node: by others only


def test_who_may_grant_and_revoke() -> None:
    fleet = fleet4()
    with pytest.raises(AdminRefused) as info:
        plan_admin_act(fleet.roster, fleet.keys["bravo"], "charlie", GRANT)
    assert info.value.kind is AdminRefusal.NOT_ALLOWED
    with pytest.raises(AdminRefused) as info:
        plan_admin_act(fleet.roster, fleet.genesis, "genesis", REVOKE)
    assert info.value.kind is AdminRefusal.NOT_ALLOWED
    with pytest.raises(AdminRefused) as info:
        plan_admin_act(fleet.roster, fleet.genesis, "bravo", REVOKE)
    assert info.value.kind is AdminRefusal.UNKNOWN
    with pytest.raises(AdminRefused) as info:
        plan_admin_act(fleet.roster, fleet.genesis, "nobody", GRANT)
    assert info.value.kind is AdminRefusal.UNKNOWN
    assert plan_admin_act(fleet.roster, fleet.genesis, "bravo.ppn", GRANT).member.name == "bravo"
    act(fleet, "genesis", GRANT, "bravo", 2000)
    with pytest.raises(AdminRefused) as info:
        plan_admin_act(fleet.roster, fleet.genesis, "bravo", GRANT)
    assert info.value.kind is AdminRefusal.UNCHANGED
    assert plan_admin_act(fleet.roster, fleet.keys["bravo"], "bravo", REVOKE).act is REVOKE


def test_acts_are_checked_locally() -> None:
    fleet = fleet4()
    mesh, bravo, genesis = fleet.mesh, fleet.keys["bravo"], fleet.genesis
    record = sign_act(genesis, mesh=mesh, act=GRANT, subject=bravo.public, at=2000)
    assert record_from_bytes(record.encoded) == record
    assert decode_record(record.to_value()).digest == record.digest
    for kind, signer, subject in (
        (GRANT, bravo, bravo.public),  # no self-grant
        (REMOVE, bravo, bravo.public),  # self-removal is a tombstone
        (GRANT, bravo, genesis.public),  # the genesis node is an admin by definition
        (REVOKE, bravo, genesis.public),
    ):
        with pytest.raises(LocalProtocolError):
            sign_act(signer, mesh=mesh, act=kind, subject=subject, at=2000)
    forged = {**record.to_value(), "subject": fleet.keys["charlie"].public}
    with pytest.raises(InvalidRecord, match="did not verify"):
        decode_record(forged)
    with pytest.raises(InvalidRecord, match="grant-admin, revoke-admin or remove"):
        decode_record({**record.to_value(), "act": "promote"})
    result = Roster(mesh=mesh, network=CIDR).ingest([forged])
    assert len(result.rejected) == 1
    # Hostile values are refused, never raised: times outside 0..2**64-1, wrong types.
    hostile = [
        {**record.to_value(), "at": -1},
        {**record.to_value(), "at": 2**64 - 1 + 1},
        {**record.to_value(), "at": True},
        {**record.to_value(), "subject": b"short"},
        {**record.to_value(), "act": 7},
        {k: v for k, v in record.to_value().items() if k != "signer"},
    ]
    result = fleet.roster.ingest(hostile)
    assert len(result.rejected) == len(hostile) and not result.changed


def test_an_act_waits_for_its_signer_and_merges_in_any_order() -> None:
    fleet = fleet4()
    records = [
        act(fleet, "genesis", GRANT, "bravo", 2000),
        act(fleet, "bravo", GRANT, "charlie", 2000),  # same time: still counted in order
        act(fleet, "charlie", REVOKE, "bravo", 2100),
        act(fleet, "bravo", REVOKE, "charlie", 2100),  # mutual revocation at one time
        act(fleet, "bravo", REMOVE, "delta", 2200),
        act(fleet, "charlie", REMOVE, "genesis", 2050),
    ]
    everything = fleet.roster.records()
    reference = fleet.roster.view()
    lone = Roster(mesh=fleet.mesh, network=CIDR)
    lone.merge([records[1]])  # bravo's identity is not held: the act waits
    assert len(lone) == 0 and lone.quarantined == 1
    rng = random.Random(18)
    for _ in range(30):
        shuffled = everything[:]
        rng.shuffle(shuffled)
        roster = Roster(mesh=fleet.mesh, network=CIDR)
        for record in shuffled:
            roster.merge([record])
        assert roster.state() == fleet.roster.state()
        view = roster.view()
        assert view.admins == reference.admins and view.removed == reference.removed
    # Exactly one of the mutual revocations counted (the first in the deterministic order).
    assert len(reference.admins & {fleet.keys["bravo"].public, fleet.keys["charlie"].public}) == 1


def test_merge_of_acts_is_a_semilattice() -> None:
    fleet = fleet4()
    act(fleet, "genesis", GRANT, "bravo", 2000)
    act(fleet, "genesis", GRANT, "bravo", 2500)  # its own slot: neither replaces the other
    act(fleet, "bravo", REMOVE, "charlie", 2600)
    pool = fleet.roster.records()
    base = [r for r in pool if isinstance(r, MemberRecord)]
    acts = [r for r in pool if isinstance(r, AdminAct)]
    assert sorted(a.at for a in acts if a.act is GRANT) == [2000, 2500]
    subsets = [c for n in range(len(acts) + 1) for c in itertools.combinations(acts, n)]
    for a, b in itertools.product(subsets, repeat=2):
        left = Roster(mesh=fleet.mesh, network=CIDR, records=[*base, *a])
        right = Roster(mesh=fleet.mesh, network=CIDR, records=[*base, *b])
        union = Roster(mesh=fleet.mesh, network=CIDR, records=[*base, *a, *b])
        left.merge_roster(right)
        right.merge_roster(left)
        assert left.state() == right.state() == union.state()
        assert left.view().admins == union.view().admins
    # Everything merged: bravo's rights from 2000 on, so charlie's removal counts.
    assert fleet.roster.view().is_removed(fleet.keys["charlie"].public)


# --- the commands and the ceremony -------------------------------------------------------------


def _member(node: NodeState, address: str) -> CeremonyMember:
    return CeremonyMember(
        name=node.name,
        identity=node.identity.public,
        wg=node.wg.public,
        address=address,
        endpoints=node.endpoints,
        roles=(),
    )


def _three_dirs(tmp_path: Path) -> tuple[dict[str, Path], dict[str, NodeState], Roster]:
    nodes = {n: new_node(n) for n in ("genesis", "bravo", "charlie")}
    genesis = nodes["genesis"]
    roster = Roster.found(
        genesis.identity, name="genesis", wg_key=genesis.wg.public, now=100, network=CIDR
    )
    for i, name in enumerate(("bravo", "charlie"), start=2):
        roster.admit(
            genesis.identity,
            name=name,
            identity=nodes[name].identity.public,
            wg_key=nodes[name].wg.public,
            now=100 + i,
            address=f"10.8.0.{i}",
        )
    members = tuple(_member(nodes[n], f"10.8.0.{i}") for i, n in enumerate(nodes, start=1))
    dirs = {}
    for i, (name, node) in enumerate(nodes.items(), start=1):
        dirs[name] = tmp_path / name
        write_membership(
            dirs[name],
            node,
            MeshState(
                mesh_id=mesh_id_for(genesis.identity.public),
                cidr=CIDR,
                address=f"10.8.0.{i}",
                sponsor=genesis.identity.public,
                roster=members,
            ),
        )
        save_roster(dirs[name], roster, generation=1, baseline=[])
    return dirs, nodes, roster


def test_admin_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs, nodes, _ = _three_dirs(tmp_path)
    mesh = mesh_id_for(nodes["genesis"].identity.public)
    assert main(["admin", "grant", "charlie", "--state", str(dirs["bravo"]), "--yes"]) == 37
    assert "no admin" in capsys.readouterr().err
    assert main(["admin", "grant", "nobody", "--state", str(dirs["genesis"]), "--yes"]) == 32
    assert main(["admin", "revoke", "genesis", "--state", str(dirs["genesis"]), "--yes"]) == 37
    assert main(["admin", "revoke", "bravo", "--state", str(dirs["genesis"]), "--yes"]) == 32
    before = (dirs["genesis"] / "roster.bin").read_bytes()
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    assert main(["admin", "grant", "bravo", "--state", str(dirs["genesis"])]) == 38
    assert (dirs["genesis"] / "roster.bin").read_bytes() == before
    assert not (dirs["genesis"] / OUTBOX_FILE).exists()
    capsys.readouterr()
    assert main(["status", "--state", str(dirs["genesis"]), "--interface", "ppnnone0"]) == 0
    assert "only genesis (the genesis node) is an admin" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    assert main(["admin", "grant", "bravo", "--state", str(dirs["genesis"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["admin"] == "bravo" and out["act"] == "grant-admin" and out["agent"] == "queued"
    (queued,) = take_queued_records(dirs["genesis"])
    assert isinstance(queued, AdminAct) and queued.act is GRANT
    assert main(["admin", "grant", "bravo", "--state", str(dirs["genesis"]), "--yes"]) == 0
    assert "nothing signed" in capsys.readouterr().out
    assert main(["admin", "list", "--state", str(dirs["genesis"]), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["admins"]
    assert [(a["name"], a["genesis"]) for a in listed] == [("genesis", True), ("bravo", False)]
    assert main(["admin", "list", "--state", str(dirs["genesis"])]) == 0
    assert "(genesis)" in capsys.readouterr().out
    # bravo learns of its rights (here: the saved roster; in a mesh, the agent's pull).
    saved = load_roster(dirs["genesis"], mesh=mesh, cidr=CIDR)
    assert saved is not None
    save_roster(dirs["bravo"], saved.roster, generation=2, baseline=[])
    assert main(["remove", "charlie", "--state", str(dirs["bravo"]), "--yes", "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert removed["signed"] == "admin-act" and removed["removed"] == "charlie"
    assert main(["status", "--state", str(dirs["bravo"]), "--interface", "ppnnone0", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["removed"] == ["charlie"] and status["admins"] == ["genesis", "bravo"]
    assert main(["status", "--state", str(dirs["bravo"]), "--interface", "ppnnone0"]) == 0
    text = capsys.readouterr().out
    assert "admins: genesis, bravo" in text and "note: only" not in text
    # Rejoin after an admin's removal: the name is free, the address comes back.
    reborn = new_node("charlie")
    peer = PartyInfo(name="charlie", identity=reborn.identity.public, wg=reborn.wg.public)
    grant = grant_for(dirs["bravo"], peer)
    assert grant is not None and grant.address == "10.8.0.3"
    assert [m.name for m in grant.roster] == ["genesis", "bravo"]
    old = nodes["charlie"]
    ghost = PartyInfo(name="charlie", identity=old.identity.public, wg=reborn.wg.public)
    assert grant_for(dirs["bravo"], ghost) is None
    with pytest.raises(SystemExit) as exited:
        main(["admin", "--help"])
    assert exited.value.code == 0
    assert "admin by definition" in capsys.readouterr().out


# --- property tests: acts keep the merge a semilattice and the view a function of the state ---


def _act_pool() -> tuple[bytes, list[Record]]:
    """Members, tombstones and acts exercising every timeline rule: a grant, a transitive
    grant, an act before rights, a revocation, a mutual revocation in one second, a removal by
    an admin, acts after the signer's removal, the removal of the genesis node."""
    fleet = fleet4()
    fleet.admit("echo", by="delta", now=1004)
    pool: list[Record] = list(fleet.roster.records())
    pool += [
        act(fleet, "charlie", REMOVE, "delta", 1500),  # before charlie had rights
        act(fleet, "genesis", GRANT, "bravo", 2000),
        act(fleet, "bravo", GRANT, "charlie", 2100),
        act(fleet, "charlie", REVOKE, "bravo", 2200),
        act(fleet, "bravo", REVOKE, "charlie", 2200),
        act(fleet, "genesis", GRANT, "delta", 2300),
        act(fleet, "delta", REMOVE, "echo", 2400),
        act(fleet, "genesis", REVOKE, "delta", 2500),
        act(fleet, "delta", REMOVE, "charlie", 2600),  # after its revocation
        act(fleet, "genesis", GRANT, "echo", 2700),  # echo is already removed
    ]
    bravo = fleet.roster.get(fleet.keys["bravo"].public)
    assert isinstance(bravo, MemberRecord)
    pool.append(sign_tombstone(fleet.keys["bravo"], admission=bravo.admission, removed_at=2800))
    pool += [
        act(fleet, "bravo", REMOVE, "delta", 2900),  # after its own removal
        act(fleet, "genesis", GRANT, "charlie", 3000),
        act(fleet, "charlie", REMOVE, "genesis", 3100),
        act(fleet, "genesis", REMOVE, "delta", 3200),  # after its removal
    ]
    return fleet.mesh, pool


ACT_MESH, ACT_POOL = _act_pool()
act_subsets = st.lists(st.sampled_from(ACT_POOL), max_size=len(ACT_POOL) + 4)


def _meaning(roster: Roster) -> Any:
    view = roster.view()
    return (
        roster.state(),
        sorted(view.admins),
        [m.identity for m in view.members],
        [(r.identity, r.removed_at, r.by) for r in view.removed],
        [(p.kind, p.identity, p.detail) for p in view.problems],
    )


def _roster(*parts: list[Record]) -> Roster:
    roster = Roster(mesh=ACT_MESH, network=CIDR)
    for part in parts:
        other = Roster(mesh=ACT_MESH, network=CIDR)
        other.merge(part)
        roster.merge_roster(other)
    return roster


def test_the_act_pool_reaches_every_outcome() -> None:
    view = _roster(ACT_POOL).view()
    by_id = {identity(n).public: n for n in ("genesis", "bravo", "charlie", "delta", "echo")}
    assert {by_id[i] for i in view.admins} == {"charlie"}
    assert {by_id[r.identity] for r in view.removed} == {"bravo", "echo", "genesis"}
    assert any(p.kind is ProblemKind.ACT_NOT_COUNTED for p in view.problems)


@settings(max_examples=120, deadline=None)
@given(act_subsets, act_subsets)
def test_merging_acts_is_commutative(a: list[Record], b: list[Record]) -> None:
    assert _meaning(_roster(a, b)) == _meaning(_roster(b, a))


@settings(max_examples=80, deadline=None)
@given(act_subsets, act_subsets, act_subsets)
def test_merging_acts_is_associative(a: list[Record], b: list[Record], c: list[Record]) -> None:
    def join(x: Roster, y: Roster) -> Roster:
        out = x.copy()
        out.merge_roster(y)  # quarantined records go along
        return out

    ra, rb, rc = _roster(a), _roster(b), _roster(c)
    assert _meaning(join(join(ra, rb), rc)) == _meaning(join(ra, join(rb, rc)))


@settings(max_examples=80, deadline=None)
@given(st.permutations(ACT_POOL))
def test_any_delivery_order_gives_the_same_admins(order: list[Record]) -> None:
    one_by_one = Roster(mesh=ACT_MESH, network=CIDR)
    for record in order:
        one_by_one.merge([record])
    assert _meaning(one_by_one) == _meaning(_roster(ACT_POOL))


act_values = st.fixed_dictionaries(
    {
        "type": st.just("act"),
        "act": st.sampled_from(["grant-admin", "revoke-admin", "remove", "x"]) | st.integers(),
        "at": st.integers(-(2**70), 2**70) | st.booleans() | st.text(max_size=3),
        "mesh": st.binary(max_size=20),
        "subject": st.binary(max_size=40),
        "signer": st.binary(max_size=40),
        "sig": st.binary(max_size=70),
    },
    optional={"extra": st.integers()},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(act_values, max_size=4))
def test_hostile_acts_are_refused_by_ingest_never_raised(values: list[Any]) -> None:
    roster = Roster(mesh=ACT_MESH, network=CIDR)
    roster.merge([r for r in ACT_POOL if not isinstance(r, AdminAct)])
    before = roster.state()
    result = roster.ingest(values)
    assert len(result.rejected) == len(values) and roster.state() == before
