"""'ppn remove': who may sign a removal, the outbox that hands it to the agent, the command's
confirmation and exit statuses, and the agent taking queued records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from genesis._bundle import MemberRecord as CeremonyMember
from genesis._derive import mesh_id_for
from genesis._io_state import MeshState, NodeState, new_node, write_membership
from ppn.cli import main
from ppn.mesh._io_state import (
    OUTBOX_FILE,
    StateDirError,
    claim_queued_records,
    load_roster,
    queue_records,
    save_roster,
    take_queued_records,
)
from ppn.mesh._records import Tombstone, record_from_bytes
from ppn.mesh._removal import RefusalKind, RemovalRefused, plan_removal, sign_removal
from ppn.mesh._roster import Roster
from ppn.mesh._trio_agent import _merge_queued
from tests.ppn._mesh_support import Fleet

CIDR = "10.8.0.0/24"


def fleet3() -> Fleet:
    fleet = Fleet()
    fleet.admit("relay", roles=("relay",))
    fleet.admit("cloud", by="relay", now=1002)
    return fleet


def test_genesis_may_remove_anyone_but_itself() -> None:
    fleet = fleet3()
    plan = plan_removal(fleet.roster, fleet.genesis, "cloud.ppn")
    assert plan.member.name == "cloud" and not plan.self_removal
    tombstone = sign_removal(fleet.roster, fleet.genesis, plan, now=5000)
    assert tombstone.signer == fleet.genesis.public
    # A valid record anywhere: it decodes and verifies from its bytes alone.
    assert record_from_bytes(tombstone.encoded).digest == tombstone.digest
    view = fleet.roster.view()
    assert view.by_name("cloud") is None and [t.name for t in view.removed] == ["cloud"]
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, fleet.genesis, "genesis")
    assert info.value.kind is RefusalKind.GENESIS


def test_a_member_may_remove_itself_and_nobody_else() -> None:
    fleet = fleet3()
    relay = fleet.keys["relay"]
    # relay admitted cloud, but sponsoring gives no right to remove (RFC-NOTES §7.2).
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, relay, "cloud")
    assert info.value.kind is RefusalKind.NOT_ALLOWED and "genesis node" in str(info.value)
    plan = plan_removal(fleet.roster, relay, "relay")
    assert plan.self_removal
    assert sign_removal(fleet.roster, relay, plan, now=5000).signer == relay.public


def test_unknown_and_already_removed_names_are_refused() -> None:
    fleet = fleet3()
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, fleet.genesis, "nobody")
    assert info.value.kind is RefusalKind.UNKNOWN
    plan = plan_removal(fleet.roster, fleet.genesis, "cloud")
    sign_removal(fleet.roster, fleet.genesis, plan, now=5000)
    with pytest.raises(RemovalRefused) as info:
        plan_removal(fleet.roster, fleet.genesis, "cloud")
    assert info.value.kind is RefusalKind.UNKNOWN
    # By node id prefix too.
    relay_id = fleet.roster.get(fleet.keys["relay"].public).node_id.hex()  # type: ignore[union-attr]
    assert plan_removal(fleet.roster, fleet.genesis, relay_id[:8]).member.name == "relay"


def test_outbox_round_trip_is_claimed_once(tmp_path: Path) -> None:
    fleet = fleet3()
    first = fleet.roster.remove(fleet.genesis, fleet.keys["cloud"].public, now=5000)
    second = fleet.roster.remove(fleet.keys["relay"], fleet.keys["relay"].public, now=5001)
    assert take_queued_records(tmp_path) == []
    queue_records(tmp_path, [first])
    queue_records(tmp_path, [second, first])  # appended, no duplicates
    taken = take_queued_records(tmp_path)
    assert sorted(r.digest for r in taken) == sorted([first.digest, second.digest])
    assert take_queued_records(tmp_path) == []
    assert not list(tmp_path.iterdir())  # neither the outbox nor the claimed copy remain
    (tmp_path / OUTBOX_FILE).write_bytes(b"junk")
    with pytest.raises(StateDirError, match=r"damaged.*set aside as outbox\.bin\.damaged-"):
        take_queued_records(tmp_path)
    (aside,) = tmp_path.iterdir()  # kept for the operator, byte for byte, never deleted
    assert aside.name.startswith(f"{OUTBOX_FILE}.damaged-") and aside.read_bytes() == b"junk"
    assert take_queued_records(tmp_path) == []  # and not claimed again


def test_the_agent_merges_queued_records_once(tmp_path: Path) -> None:
    fleet = fleet3()
    held = fleet.roster.copy()
    tombstone = fleet.roster.remove(fleet.genesis, fleet.keys["cloud"].public, now=5000)
    queue_records(tmp_path, [tombstone])
    changed, claim = _merge_queued(held, tmp_path)
    assert [r.digest for r in changed] == [tombstone.digest] and claim is not None
    assert held.view().by_name("cloud") is None
    claim.release()
    assert not list(tmp_path.iterdir())
    queue_records(tmp_path, [tombstone])
    changed, claim = _merge_queued(held, tmp_path)
    assert changed == [] and claim is not None  # already held: nothing to push
    claim.release()
    assert _merge_queued(held, tmp_path) == ([], None)  # nothing queued
    (tmp_path / OUTBOX_FILE).write_bytes(b"junk")
    changed, claim = _merge_queued(held, tmp_path)  # logged and set aside, the agent runs on
    assert changed == [] and claim is None
    assert [p.name.startswith(f"{OUTBOX_FILE}.damaged-") for p in tmp_path.iterdir()] == [True]


def test_an_agent_that_dies_before_saving_loses_no_queued_record(tmp_path: Path) -> None:
    fleet = fleet3()
    first = fleet.roster.remove(fleet.genesis, fleet.keys["cloud"].public, now=5000)
    second = fleet.roster.remove(fleet.keys["relay"], fleet.keys["relay"].public, now=5001)
    queue_records(tmp_path, [first])
    dead = claim_queued_records(tmp_path)  # claimed, merged in memory, then the agent died
    assert [r.digest for r in dead.records] == [first.digest]
    queue_records(tmp_path, [second])  # a command queues more meanwhile
    again = claim_queued_records(tmp_path)  # the next agent finds both
    assert sorted(r.digest for r in again.records) == sorted([first.digest, second.digest])
    assert set(again.files) >= set(dead.files)
    again.release()
    assert not list(tmp_path.iterdir())


def _member(node: NodeState, address: str) -> CeremonyMember:
    return CeremonyMember(
        name=node.name,
        identity=node.identity.public,
        wg=node.wg.public,
        address=address,
        endpoints=node.endpoints,
        roles=(),
    )


def _mesh_dirs(tmp_path: Path) -> tuple[Path, Path, NodeState, NodeState]:
    """A genesis node and a member bravo, each with a saved signed roster of both."""
    genesis, bravo = new_node("genesis"), new_node("bravo")
    roster = Roster.found(
        genesis.identity, name="genesis", wg_key=genesis.wg.public, now=100, network=CIDR
    )
    roster.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    members = (_member(genesis, "10.8.0.1"), _member(bravo, "10.8.0.2"))
    for node, address in ((genesis, "10.8.0.1"), (bravo, "10.8.0.2")):
        state = tmp_path / node.name
        write_membership(
            state,
            node,
            MeshState(
                mesh_id=mesh_id_for(genesis.identity.public),
                cidr=CIDR,
                address=address,
                sponsor=genesis.identity.public,
                roster=members,
            ),
        )
        save_roster(state, roster, generation=3, baseline=[b"b" * 32])
    return tmp_path / "genesis", tmp_path / "bravo", genesis, bravo


def test_remove_command_statuses_and_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gdir, bdir, genesis, bravo = _mesh_dirs(tmp_path)
    assert main(["remove", "nobody", "--state", str(gdir), "--yes"]) == 32
    assert main(["remove", "genesis", "--state", str(bdir), "--yes"]) == 37
    assert "genesis node" in capsys.readouterr().err
    assert main(["remove", "bravo", "--state", str(tmp_path / "none"), "--yes"]) == 30
    # Declined (and EOF) changes nothing.
    before = (gdir / "roster.bin").read_bytes()
    for answer in ("n\n", ""):
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        assert main(["remove", "bravo", "--state", str(gdir)]) == 38
        assert (gdir / "roster.bin").read_bytes() == before
        assert not (gdir / OUTBOX_FILE).exists()
    assert "for good" in capsys.readouterr().err
    # Confirmed, no agent running: written to roster.bin (next generation) and queued.
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    assert main(["remove", "bravo", "--state", str(gdir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["removed"] == "bravo" and result["agent"] == "queued" and not result["self"]
    saved = load_roster(gdir, mesh=mesh_id_for(genesis.identity.public), cidr=CIDR)
    assert saved is not None and saved.generation == 4 and saved.baseline == {b"b" * 32}
    assert isinstance(saved.roster.get(bravo.identity.public), Tombstone)
    assert [r.name for r in take_queued_records(gdir)] == ["bravo"]
    assert main(["status", "--state", str(gdir), "--interface", "ppnnone0", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["removed"] == ["bravo"] and [m["name"] for m in status["members"]] == ["genesis"]
    assert main(["status", "--state", str(gdir), "--interface", "ppnnone0"]) == 0
    assert "removed: bravo" in capsys.readouterr().out
    # mesh.json still lists bravo, but a removed member no longer resolves.
    assert main(["resolve", "bravo", "--state", str(gdir)]) == 32
    # A member removes itself.
    assert main(["remove", "bravo", "--state", str(bdir), "--yes"]) == 0
    assert "removed bravo" in capsys.readouterr().out
