"""From the ceremony to the signed roster: mesh.json records who sponsored each member, so a
member invited before its sponsor's first 'ppn up' is still admitted; and a sponsor's ceremony
allocates addresses (and refuses joiners) against the signed roster the agent keeps."""

from __future__ import annotations

import json
from pathlib import Path

from genesis import PartyInfo
from genesis._bundle import MemberRecord as CeremonyMember
from genesis._cli_run import grant_for
from genesis._derive import mesh_id_for
from genesis._io_state import (
    MeshState,
    NodeState,
    add_member,
    load_mesh,
    new_node,
    write_membership,
)
from ppn.mesh._bootstrap import sponsor_admissions
from ppn.mesh._io_state import load_mesh_files, save_roster
from ppn.mesh._roster import Roster
from ppn.mesh._trio_agent import _initial_roster

CIDR = "10.8.0.0/24"


def member(node: NodeState, address: str, roles: tuple[str, ...] = ()) -> CeremonyMember:
    return CeremonyMember(
        name=node.name,
        identity=node.identity.public,
        wg=node.wg.public,
        address=address,
        endpoints=node.endpoints,
        roles=roles,
    )


def party(node: NodeState) -> PartyInfo:
    return PartyInfo(name=node.name, identity=node.identity.public, wg=node.wg.public)


def signed_roster(genesis: NodeState) -> Roster:
    return Roster.found(
        genesis.identity, name=genesis.name, wg_key=genesis.wg.public, now=100, network=CIDR
    )


def genesis_state(directory: Path, genesis: NodeState) -> None:
    write_membership(
        directory,
        genesis,
        MeshState(
            mesh_id=mesh_id_for(genesis.identity.public),
            cidr=CIDR,
            address="10.8.0.1",
            sponsor=genesis.identity.public,
            roster=(member(genesis, "10.8.0.1", ("genesis",)),),
        ),
    )


def joined_state(directory: Path, genesis: NodeState, node: NodeState, address: str) -> None:
    """What 'ppn join' via the genesis node writes on the joiner."""
    write_membership(
        directory,
        node,
        MeshState(
            mesh_id=mesh_id_for(genesis.identity.public),
            cidr=CIDR,
            address=address,
            sponsor=genesis.identity.public,
            roster=(member(genesis, "10.8.0.1", ("genesis",)), member(node, address)),
        ),
    )


def test_the_ceremony_records_who_sponsored_each_member(tmp_path: Path) -> None:
    genesis, bravo, charlie = new_node("genesis"), new_node("bravo"), new_node("charlie")
    joined_state(tmp_path, genesis, bravo, "10.8.0.2")
    add_member(tmp_path, bravo, member(charlie, "10.8.0.3"))
    loaded = load_mesh(tmp_path)
    assert loaded is not None
    assert loaded.sponsor_of(charlie.identity.public) == bravo.identity.public
    assert loaded.sponsor_of(genesis.identity.public) is None  # not known to bravo
    files = load_mesh_files(tmp_path)
    sponsors = {m.name: m.sponsor for m in files.preliminary}
    assert sponsors == {
        "genesis": None,
        "bravo": genesis.identity.public,  # its own sponsor, from mesh.json's "sponsor"
        "charlie": bravo.identity.public,
    }


def test_a_member_invited_before_the_first_up_is_admitted(tmp_path: Path) -> None:
    # bravo joined via genesis, then invited charlie before its own agent ever ran.
    genesis, bravo, charlie = new_node("genesis"), new_node("bravo"), new_node("charlie")
    joined_state(tmp_path, genesis, bravo, "10.8.0.2")
    add_member(tmp_path, bravo, member(charlie, "10.8.0.3"))
    files = load_mesh_files(tmp_path)
    roster, _, baseline = _initial_roster(files, [], None)
    assert charlie.identity.public in baseline  # the agent's first run lists it already
    # bravo's agent pulls the roster on which genesis admitted bravo ...
    roster.merge(signed_roster(genesis).records())
    assert not sponsor_admissions(
        roster, files.preliminary, baseline=baseline, sponsor=bravo.identity, now=200
    )  # bravo is not a member yet: nothing to sign with
    pulled = signed_roster(genesis)
    pulled.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    roster.merge(pulled.records())
    # ... and then signs charlie's admission, at the address the ceremony gave it.
    admitted = sponsor_admissions(
        roster, files.preliminary, baseline=baseline, sponsor=bravo.identity, now=200
    )
    assert [(r.name, r.address, r.signer) for r in admitted] == [
        ("charlie", "10.8.0.3", bravo.identity.public)
    ]
    assert roster.view().member(charlie.identity.public) is not None
    assert not sponsor_admissions(
        roster, files.preliminary, baseline=baseline, sponsor=bravo.identity, now=201
    )


def test_members_sponsored_elsewhere_are_never_signed_here(tmp_path: Path) -> None:
    genesis, bravo, delta = new_node("genesis"), new_node("bravo"), new_node("delta")
    joined_state(tmp_path, genesis, bravo, "10.8.0.2")
    add_member(tmp_path, bravo, member(delta, "10.8.0.4"))
    # Rewrite delta's sponsor to genesis: bravo only heard of it, it must not sign it.
    path = tmp_path / "mesh.json"
    info = json.loads(path.read_text())
    for entry in info["roster"]:
        if entry["name"] == "delta":
            entry["sponsor"] = info["sponsor"]
    path.write_text(json.dumps(info))
    roster = signed_roster(genesis)
    roster.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    files = load_mesh_files(tmp_path)
    assert not sponsor_admissions(
        roster, files.preliminary, baseline=(), sponsor=bravo.identity, now=200
    )


def test_old_mesh_json_without_sponsors_loads_and_keeps_the_baseline_rule(
    tmp_path: Path,
) -> None:
    genesis, bravo, charlie = new_node("genesis"), new_node("bravo"), new_node("charlie")
    joined_state(tmp_path, genesis, bravo, "10.8.0.2")
    add_member(tmp_path, bravo, member(charlie, "10.8.0.3"))
    path = tmp_path / "mesh.json"
    info = json.loads(path.read_text())
    for entry in info["roster"]:
        entry.pop("sponsor", None)
    path.write_text(json.dumps(info))
    loaded = load_mesh(tmp_path)
    assert loaded is not None and loaded.sponsors == {} and len(loaded.roster) == 3
    files = load_mesh_files(tmp_path)
    assert files.own_preliminary() is not None
    roster = signed_roster(genesis)
    roster.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    charlie_id = charlie.identity.public
    # Listed at the first run: treated as sponsored elsewhere, as before.
    assert not sponsor_admissions(
        roster, files.preliminary, baseline=[charlie_id], sponsor=bravo.identity, now=200
    )
    # Added later (not in the baseline): admitted.
    assert [
        r.name
        for r in sponsor_admissions(
            roster, files.preliminary, baseline=(), sponsor=bravo.identity, now=200
        )
    ] == ["charlie"]


def test_the_sponsor_allocates_against_the_signed_roster(tmp_path: Path) -> None:
    genesis, bravo, xray = new_node("genesis"), new_node("bravo"), new_node("xray")
    genesis_state(tmp_path, genesis)
    add_member(tmp_path, genesis, member(bravo, "10.8.0.2"))
    joiner = new_node("yankee")
    # No roster.bin yet (the agent never ran): mesh.json alone decides, as before.
    grant = grant_for(tmp_path, party(joiner))
    assert grant is not None and grant.address == "10.8.0.3"
    # The agent's roster knows xray, which bravo admitted at 10.8.0.3: skip that address.
    roster = signed_roster(genesis)
    roster.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    roster.admit(
        bravo.identity,
        name="xray",
        identity=xray.identity.public,
        wg_key=xray.wg.public,
        now=160,
        address="10.8.0.3",
    )
    save_roster(tmp_path, roster, generation=1, baseline=[])
    grant = grant_for(tmp_path, party(joiner))
    assert grant is not None and grant.address == "10.8.0.4"
    assert [m.name for m in grant.roster] == ["genesis", "bravo"]
    # A name or key the signed roster already holds is refused before the SAS.
    assert grant_for(tmp_path, party(new_node("xray"))) is None
    assert grant_for(tmp_path, party(xray)) is None


def test_removed_members_are_refused_and_not_handed_on(tmp_path: Path) -> None:
    genesis, bravo = new_node("genesis"), new_node("bravo")
    genesis_state(tmp_path, genesis)
    add_member(tmp_path, genesis, member(bravo, "10.8.0.2"))
    roster = signed_roster(genesis)
    roster.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    roster.remove(genesis.identity, bravo.identity.public, now=300)
    save_roster(tmp_path, roster, generation=1, baseline=[])
    assert grant_for(tmp_path, party(bravo)) is None  # a removed identity never returns
    grant = grant_for(tmp_path, party(new_node("charlie")))
    assert grant is not None and [m.name for m in grant.roster] == ["genesis"]
    # mesh.json still lists bravo, so its address is not handed out again by this sponsor.
    assert grant.address == "10.8.0.3"
    # A damaged roster.bin is the agent's problem: the ceremony falls back to mesh.json.
    (tmp_path / "roster.bin").write_bytes(b"junk")
    fallback = grant_for(tmp_path, party(new_node("delta")))
    assert fallback is not None and fallback.address == "10.8.0.3"


def test_a_removed_name_is_free_again_and_gets_its_address_back(tmp_path: Path) -> None:
    """Rejoin after disk loss (RFC-NOTES §7.13): bravo lost its disk and was removed; a fresh
    node (new keys) joins as 'bravo' again and gets 10.8.0.2 back; the old entry leaves
    mesh.json when the new one is recorded, and the old identity stays refused."""
    genesis, bravo, charlie = new_node("genesis"), new_node("bravo"), new_node("charlie")
    genesis_state(tmp_path, genesis)
    add_member(tmp_path, genesis, member(bravo, "10.8.0.2"))
    add_member(tmp_path, genesis, member(charlie, "10.8.0.3"))
    roster = signed_roster(genesis)
    for node, address, now in ((bravo, "10.8.0.2", 150), (charlie, "10.8.0.3", 160)):
        roster.admit(
            genesis.identity,
            name=node.name,
            identity=node.identity.public,
            wg_key=node.wg.public,
            now=now,
            address=address,
        )
    save_roster(tmp_path, roster, generation=1, baseline=[])
    reborn = new_node("bravo")
    assert grant_for(tmp_path, party(reborn)) is None  # bravo is live: its name is taken
    roster.remove(genesis.identity, bravo.identity.public, now=300)
    save_roster(tmp_path, roster, generation=2, baseline=[])
    grant = grant_for(tmp_path, party(reborn))
    assert grant is not None and grant.address == "10.8.0.2"
    assert [m.name for m in grant.roster] == ["genesis", "charlie"]
    # Another name does not get the removed member's address while mesh.json lists it.
    other = grant_for(tmp_path, party(new_node("delta")))
    assert other is not None and other.address == "10.8.0.4"
    assert grant_for(tmp_path, party(bravo)) is None  # the old identity never returns
    joined = add_member(
        tmp_path, genesis, member(reborn, grant.address), drop={bravo.identity.public}
    )
    assert [(m.name, m.address) for m in joined.roster] == [
        ("genesis", "10.8.0.1"),
        ("charlie", "10.8.0.3"),
        ("bravo", "10.8.0.2"),
    ]
    assert joined.member(bravo.identity.public) is None
    assert joined.sponsor_of(reborn.identity.public) == genesis.identity.public
    saved = json.loads((tmp_path / "mesh.json").read_text())
    assert [m["identity"] for m in saved["roster"]].count(bravo.identity.public_b64) == 0


def test_the_former_address_is_not_reused_when_a_live_member_holds_it(tmp_path: Path) -> None:
    genesis, bravo, xray = new_node("genesis"), new_node("bravo"), new_node("xray")
    genesis_state(tmp_path, genesis)
    add_member(tmp_path, genesis, member(bravo, "10.8.0.2"))
    roster = signed_roster(genesis)
    roster.admit(
        genesis.identity,
        name="bravo",
        identity=bravo.identity.public,
        wg_key=bravo.wg.public,
        now=150,
        address="10.8.0.2",
    )
    roster.remove(genesis.identity, bravo.identity.public, now=300)
    # Another sponsor, whose mesh.json never listed bravo, gave 10.8.0.2 to xray meanwhile.
    roster.admit(
        genesis.identity,
        name="xray",
        identity=xray.identity.public,
        wg_key=xray.wg.public,
        now=310,
        address="10.8.0.2",
    )
    save_roster(tmp_path, roster, generation=1, baseline=[])
    grant = grant_for(tmp_path, party(new_node("bravo")))
    assert grant is not None and grant.address == "10.8.0.3"
