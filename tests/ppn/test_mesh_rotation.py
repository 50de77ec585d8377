"""Key rotation's cores (RFC-NOTES §7.15): the WireGuard rotation record, which key file a
node's own record names, the handover's alternation, replay of older versions, and the crash-safe
promotion of a staged key in the state directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genesis import StateError, load_node, promote_node_key, stage_node_key, staged_node_key
from ppn import WireGuardKeyPair
from ppn._errors import LocalProtocolError
from ppn.mesh._records import MemberRecord
from ppn.mesh._roster import Roster
from ppn.mesh._rotation import (
    Handover,
    KeyStatus,
    RotationRefusal,
    RotationRefused,
    sign_wireguard_rotation,
    wireguard_key_status,
)
from tests.ppn._mesh_support import CIDR, Fleet, identity, wg


def test_wireguard_rotation_is_the_next_self_signed_version_with_only_the_key_changed() -> None:
    fleet = Fleet()
    fleet.admit("alpha", endpoints=("192.0.2.2:51820",), roles=("relay",))
    alpha = fleet.keys["alpha"]
    before = fleet.roster.get(alpha.public)
    assert isinstance(before, MemberRecord)
    new = wg("alpha-2").public
    record = sign_wireguard_rotation(fleet.roster, alpha, new)
    assert record.version == before.version + 1 and record.signer == alpha.public
    assert (record.wg_key, record.address, record.endpoints, record.roles) == (
        new,
        before.address,
        before.endpoints,
        before.roles,
    )
    member = fleet.roster.view().member(alpha.public)
    assert member is not None and member.wg_key == new
    with pytest.raises(LocalProtocolError):
        sign_wireguard_rotation(fleet.roster, alpha, new)  # already the current key


def test_only_a_live_member_rotates() -> None:
    fleet = Fleet()
    fleet.admit("alpha")
    fleet.roster.remove(fleet.keys["alpha"], fleet.keys["alpha"].public, now=2000)
    with pytest.raises(RotationRefused) as refused:
        sign_wireguard_rotation(fleet.roster, fleet.keys["alpha"], wg("x").public)
    assert refused.value.kind is RotationRefusal.NOT_MEMBER
    with pytest.raises(RotationRefused):
        sign_wireguard_rotation(fleet.roster, identity("stranger"), wg("x").public)


def test_an_older_version_never_brings_the_old_key_back() -> None:
    """Replay and rollback: the record naming the old key is a lower version; whatever order
    a member receives the two in, and however often, the new key stays."""
    fleet = Fleet()
    fleet.admit("alpha")
    alpha = fleet.keys["alpha"]
    old = fleet.roster.update_self(alpha, endpoints=["192.0.2.2:51820"])
    new = sign_wireguard_rotation(fleet.roster, alpha, wg("alpha-2").public)
    assert fleet.roster.merge([old]).changed == ()
    assert fleet.roster.ingest([old.to_value()]).changed == ()
    for order in ([old, new], [new, old], [new, old, old]):
        roster = Roster(mesh=fleet.mesh, network=CIDR)
        genesis = fleet.roster.get(fleet.genesis.public)
        assert genesis is not None
        roster.merge([genesis, *order])
        member = roster.view().member(alpha.public)
        assert member is not None and member.wg_key == wg("alpha-2").public


def test_key_status_follows_the_node_s_own_record() -> None:
    fleet = Fleet()
    fleet.admit("alpha")
    alpha = fleet.keys["alpha"]
    current, staged = wg("alpha").public, wg("alpha-2").public
    status = wireguard_key_status
    assert status(fleet.roster, alpha.public, current=current, staged=None) is KeyStatus.CURRENT
    # Staged but not signed (a crash before signing): the old key stays in force.
    assert status(fleet.roster, alpha.public, current=current, staged=staged) is KeyStatus.CURRENT
    sign_wireguard_rotation(fleet.roster, alpha, staged)
    assert status(fleet.roster, alpha.public, current=current, staged=staged) is KeyStatus.PENDING
    # Promoted: the record names wireguard.key again.
    assert status(fleet.roster, alpha.public, current=staged, staged=None) is KeyStatus.CURRENT
    assert (
        status(fleet.roster, identity("x").public, current=current, staged=staged)
        is KeyStatus.UNSIGNED
    )


def test_handover_alternates_keys_until_one_attempt_is_acknowledged() -> None:
    handover = Handover()
    tried = []
    for delivered in (False, False, False, True):
        tried.append(handover.use_new_key())
        done = handover.attempt_finished(delivered=delivered)
        assert done is delivered
    assert tried == [False, True, False, True]
    assert handover.done


def _node_dir(tmp_path: Path) -> Path:
    from genesis._io_state import MeshState, new_node, write_membership

    node = new_node("alpha")
    mesh = MeshState(
        mesh_id=b"\x01" * 16, cidr=CIDR, address="10.8.0.2", sponsor=node.identity.public, roster=()
    )
    write_membership(tmp_path, node, mesh)
    return tmp_path


def test_promotion_is_crash_safe_at_every_step(tmp_path: Path) -> None:
    directory = _node_dir(tmp_path)
    old = load_node(directory)
    assert old is not None and staged_node_key(directory, "wireguard") is None
    new = WireGuardKeyPair.generate()
    stage_node_key(directory, "wireguard", new.private)
    # Staged only: the node still loads with its old key (crash before signing/handover).
    loaded = load_node(directory)
    assert loaded is not None and loaded.wg.public == old.wg.public
    assert staged_node_key(directory, "wireguard") == new.private
    # Crash after node.json names the new key, before the rename: load_node finishes it.
    info = json.loads((directory / "node.json").read_text())
    from ppn import encode_key

    info["wg"] = encode_key(new.public)
    (directory / "node.json").write_text(json.dumps(info))
    loaded = load_node(directory)
    assert loaded is not None and loaded.wg.public == new.public
    assert staged_node_key(directory, "wireguard") is None
    # The normal path: promote in one call.
    newer = WireGuardKeyPair.generate()
    stage_node_key(directory, "wireguard", newer.private)
    assert promote_node_key(directory, "wireguard")
    loaded = load_node(directory)
    assert loaded is not None and loaded.wg.public == newer.public
    assert not promote_node_key(directory, "wireguard")


def test_a_node_json_naming_an_unknown_key_is_still_refused(tmp_path: Path) -> None:
    directory = _node_dir(tmp_path)
    stage_node_key(directory, "wireguard", WireGuardKeyPair.generate().private)
    info = json.loads((directory / "node.json").read_text())
    from ppn import encode_key

    info["wg"] = encode_key(WireGuardKeyPair.generate().public)
    (directory / "node.json").write_text(json.dumps(info))
    with pytest.raises(StateError):
        load_node(directory)


def test_promotion_rekeys_this_node_s_mesh_json_entry_and_its_sponsorships(tmp_path: Path) -> None:
    from genesis._io_state import (
        MemberRecord as CeremonyMember,
    )
    from genesis._io_state import (
        MeshState,
        load_mesh,
        new_node,
        write_membership,
    )
    from ppn import IdentityKey

    node = new_node("alpha")
    joiner = CeremonyMember(
        name="bravo", identity=identity("bravo").public, wg=wg("bravo").public, address="10.8.0.3"
    )
    own = CeremonyMember(
        name="alpha", identity=node.identity.public, wg=node.wg.public, address="10.8.0.2"
    )
    mesh = MeshState(
        mesh_id=b"\x01" * 16,
        cidr=CIDR,
        address="10.8.0.2",
        sponsor=identity("genesis").public,
        roster=(own, joiner),
        sponsors={joiner.identity: node.identity.public},
    )
    write_membership(tmp_path, node, mesh)
    new_identity, new_wg = IdentityKey.generate(), WireGuardKeyPair.generate()
    stage_node_key(tmp_path, "identity", new_identity.seed)
    stage_node_key(tmp_path, "wireguard", new_wg.private)
    assert promote_node_key(tmp_path, "identity") and promote_node_key(tmp_path, "wireguard")
    after = load_mesh(tmp_path)
    assert after is not None
    me = after.member(new_identity.public)
    assert me is not None and me.wg == new_wg.public and me.name == "alpha"
    assert after.member(node.identity.public) is None
    assert after.sponsor_of(joiner.identity) == new_identity.public
    assert after.member(joiner.identity) == joiner
    loaded = load_node(tmp_path)
    assert loaded is not None
    assert (loaded.identity.public, loaded.wg.public) == (new_identity.public, new_wg.public)
