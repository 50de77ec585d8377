"""The controller's node table driven with explicit time (RFC-NOTES §8.4)."""

from __future__ import annotations

import pytest

from ppn import LocalProtocolError, RemoteProtocolError
from ppn.fleet import (
    HeartbeatAccepted,
    HeartbeatAuthError,
    NodeEvicted,
    NodeJoined,
    NodeTable,
    encode_heartbeat,
)

from ._fleet_support import fleet_directory, make_heartbeat, make_key


def beat(table: NodeTable, n: int, now: float, *, seq: int, boot: int = 1) -> None:
    table.receive_heartbeat(
        encode_heartbeat(make_heartbeat(n, seq=seq, boot=boot), make_key(n)), now
    )


def drain(table: NodeTable) -> list[object]:
    events = []
    while (e := table.next_event()) is not None:
        events.append(e)
    return events


def test_eviction_exactly_30_s_after_last_heartbeat_and_not_before() -> None:
    table = NodeTable(fleet_directory())
    assert table.get_timer() is None
    beat(table, 2, 100.0, seq=1)
    beat(table, 2, 110.0, seq=2)
    assert table.get_timer() == 140.0
    events = drain(table)
    assert isinstance(events[0], NodeJoined) and not events[0].rejoined
    assert [type(e) for e in events[1:]] == [HeartbeatAccepted, HeartbeatAccepted]

    table.handle_timer(139.999)
    assert [r.name for r in table.live_nodes()] == ["a"]
    assert drain(table) == []

    table.handle_timer(140.0)
    assert table.live_nodes() == []
    (evicted,) = drain(table)
    assert isinstance(evicted, NodeEvicted)
    assert (evicted.name, evicted.last_heartbeat_at, evicted.at) == ("a", 110.0, 140.0)
    assert evicted.silent_for == 30.0
    assert [e.name for e in table.evicted_nodes()] == ["a"]
    assert table.get_timer() is None


def test_timer_tracks_the_earliest_deadline_and_configurable_timeout() -> None:
    table = NodeTable(fleet_directory(), eviction_timeout=5.0)
    beat(table, 2, 0.0, seq=1)
    beat(table, 3, 2.0, seq=1)
    assert table.get_timer() == 5.0
    beat(table, 2, 4.0, seq=2)
    assert table.get_timer() == 7.0
    table.handle_timer(7.0)
    assert [r.name for r in table.live_nodes()] == ["a"]
    assert table.get_timer() == 9.0


def test_a_late_heartbeat_cannot_prevent_an_overdue_eviction() -> None:
    table = NodeTable(fleet_directory())
    beat(table, 2, 0.0, seq=1)
    drain(table)
    # No timer ran; the next heartbeat arrives at 31 s. The node was due out at 30 s.
    beat(table, 2, 31.0, seq=2)
    events = drain(table)
    assert isinstance(events[0], NodeEvicted) and events[0].at == 31.0
    assert isinstance(events[1], NodeJoined) and events[1].rejoined
    assert [r.name for r in table.live_nodes()] == ["a"]
    assert table.evicted_nodes() == []  # it came back


def test_status_fields_come_from_the_latest_heartbeat() -> None:
    table = NodeTable(fleet_directory())
    beat(table, 3, 1.0, seq=5)
    record = table.live_node("b")
    assert record is not None and record.heartbeat.seq == 5 and record.last_heartbeat_at == 1.0


def test_non_member_signer_is_refused_like_a_bad_signature() -> None:
    table = NodeTable(fleet_directory())
    stranger = make_key(9)
    hb = make_heartbeat(2)  # claims node a
    with pytest.raises(HeartbeatAuthError):
        table.receive_heartbeat(encode_heartbeat(hb, stranger), 0.0)
    assert table.live_nodes() == []


def test_member_cannot_heartbeat_for_another_node() -> None:
    table = NodeTable(fleet_directory())
    with pytest.raises(RemoteProtocolError, match="names node"):
        table.receive_heartbeat(encode_heartbeat(make_heartbeat(2), make_key(3)), 0.0)
    wrong_addr = make_heartbeat(2, mesh_address="10.8.0.77")
    with pytest.raises(RemoteProtocolError, match="mesh address"):
        table.receive_heartbeat(encode_heartbeat(wrong_addr, make_key(2)), 0.0)


def test_replayed_heartbeat_neither_refreshes_nor_changes_the_table() -> None:
    table = NodeTable(fleet_directory())
    recorded = encode_heartbeat(make_heartbeat(2, seq=1), make_key(2))
    table.receive_heartbeat(recorded, 0.0)
    beat(table, 2, 10.0, seq=2)
    with pytest.raises(RemoteProtocolError, match="stale"):
        table.receive_heartbeat(recorded, 20.0)
    record = table.live_node("a")
    assert record is not None and record.last_heartbeat_at == 10.0 and record.heartbeat.seq == 2
    # Also after an eviction: the replay guard outlives the table entry.
    table.handle_timer(40.0)
    with pytest.raises(RemoteProtocolError, match="stale"):
        table.receive_heartbeat(recorded, 41.0)
    assert table.live_nodes() == []


def test_new_boot_id_resets_the_sequence() -> None:
    table = NodeTable(fleet_directory())
    beat(table, 2, 0.0, seq=1000, boot=1)
    beat(table, 2, 10.0, seq=1, boot=2)
    record = table.live_node("a")
    assert record is not None and record.heartbeat.boot_id == bytes([2]) * 16
    with pytest.raises(RemoteProtocolError, match="boot"):
        beat(table, 2, 20.0, seq=5000, boot=1)


def test_time_must_not_go_backwards() -> None:
    table = NodeTable(fleet_directory())
    table.handle_timer(10.0)
    with pytest.raises(LocalProtocolError):
        table.handle_timer(9.0)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        NodeTable(fleet_directory(), eviction_timeout=0)
