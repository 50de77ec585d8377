"""The signed roster as the fleet's member directory: heartbeats from roster members are
accepted, strangers and removed members refused, the controller is the earliest cloud member."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppn import IdentityKey, WireGuardKeyPair
from ppn.fleet import HeartbeatAuthError, NodeTable, derive_node_id, encode_heartbeat
from ppn.fleet._roster import RosterDirectory
from ppn.mesh._roster import Roster

from ._fleet_support import make_heartbeat


def _key(n: int) -> IdentityKey:
    return IdentityKey.from_seed(bytes([n]) * 32)


def _wg(n: int) -> bytes:
    return WireGuardKeyPair.from_private(bytes([n + 100]) * 32).public


@pytest.fixture
def roster() -> Roster:
    genesis = _key(1)
    r = Roster.found(genesis, name="laptop-a", wg_key=_wg(1), now=1000, roles=("genesis",))
    r.admit(
        genesis, name="cloud", identity=_key(2).public, wg_key=_wg(2), now=1001, roles=("cloud",)
    )
    r.admit(genesis, name="laptop-b", identity=_key(3).public, wg_key=_wg(3), now=1002)
    return r


def test_members_and_controller_come_from_the_roster(roster: Roster) -> None:
    directory = RosterDirectory(roster.view)
    controller = directory.controller()
    assert controller is not None and controller.name == "cloud"
    assert controller.identity == _key(2).public
    b = directory.member_by_name("laptop-b")
    assert b is not None and b.mesh_address == "10.8.0.3"
    assert b.node_id == derive_node_id(_key(3).public)  # the roster's node id, as hex
    assert {m.name for m in directory.members()} == {"laptop-a", "cloud", "laptop-b"}
    # A later member with the cloud role does not take the controller over.
    roster.admit(
        _key(1), name="cloud-2", identity=_key(4).public, wg_key=_wg(4), now=1003, roles=("cloud",)
    )
    assert directory.controller() == controller


def test_heartbeats_checked_against_the_live_roster(roster: Roster) -> None:
    table = NodeTable(RosterDirectory(roster.view))
    b = RosterDirectory(roster.view).member_by_name("laptop-b")
    assert b is not None
    hb = make_heartbeat(3, node_id=b.node_id, mesh_address=b.mesh_address)
    table.receive_heartbeat(encode_heartbeat(hb, _key(3)), 0.0)
    assert [r.name for r in table.live_nodes()] == ["laptop-b"]
    stranger = make_heartbeat(9, node_id=derive_node_id(_key(9).public), mesh_address="10.8.0.9")
    with pytest.raises(HeartbeatAuthError):
        table.receive_heartbeat(encode_heartbeat(stranger, _key(9)), 1.0)
    # Removed from the mesh: its next heartbeat is refused like a stranger's.
    roster.remove(_key(1), _key(3).public, now=1010)
    with pytest.raises(HeartbeatAuthError):
        table.receive_heartbeat(
            encode_heartbeat(hb.__class__(**{**hb.__dict__, "seq": 2}), _key(3)), 2.0
        )


def test_state_dir_roster_follows_the_agents_writes(tmp_path: Path, roster: Roster) -> None:
    from ppn.fleet._io_state import StateDirRoster
    from ppn.mesh._io_state import save_roster

    save_roster(tmp_path, roster, generation=1, baseline=[])
    source = StateDirRoster(tmp_path, mesh=roster.mesh, cidr="10.8.0.0/24")
    directory = RosterDirectory(source.view)
    assert {m.name for m in directory.members()} == {"laptop-a", "cloud", "laptop-b"}
    roster.admit(_key(1), name="laptop-c", identity=_key(5).public, wg_key=_wg(5), now=1004)
    save_roster(tmp_path, roster, generation=2, baseline=[])
    assert directory.member_by_name("laptop-c") is not None
    # A damaged file: keep serving the last good roster.
    (tmp_path / "roster.bin").write_bytes(b"\x00garbage")
    assert directory.member_by_name("laptop-c") is not None
