"""PPN control core: two cores wired in memory (pull, push, in-sync), grammar errors, fuzz."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn import LocalProtocolError, RemoteProtocolError, wire
from ppn.mesh._control import (
    ConnectionClosed,
    ControlConnection,
    ControlProtocolError,
    ControlState,
    Pull,
    Push,
    PushAcknowledged,
    Role,
    RosterUpdated,
    SyncComplete,
)
from ppn.mesh._roster import Roster
from tests.ppn._mesh_support import CIDR, Fleet, identity, record_pool

POOL = record_pool()
MESH = Fleet().mesh


def pump(a: ControlConnection, b: ControlConnection) -> tuple[list[Any], list[Any]]:
    """Shuttle bytes both ways until quiet; return each side's events."""
    events_a: list[Any] = []
    events_b: list[Any] = []
    while True:
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            break
        if out_a:
            b.receive_data(out_a)
        if out_b:
            a.receive_data(out_b)
    while (e := a.next_event()) is not None:
        events_a.append(e)
    while (e := b.next_event()) is not None:
        events_b.append(e)
    return events_a, events_b


def pair(left: Roster, right: Roster) -> tuple[ControlConnection, ControlConnection]:
    return ControlConnection(left, role=Role.CLIENT), ControlConnection(right, role=Role.SERVER)


def test_pull_when_in_sync_exchanges_only_digests() -> None:
    left, right = (
        Roster(mesh=MESH, network=CIDR, records=POOL),
        Roster(mesh=MESH, network=CIDR, records=POOL),
    )
    client, server = pair(left, right)
    client.send(Pull())
    ev_c, ev_s = pump(client, server)
    assert ev_c == [SyncComplete(in_sync=True, sent=0, received=0)]
    assert ev_s == []
    assert client.state is server.state is ControlState.IDLE


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(POOL)), st.lists(st.sampled_from(POOL)))
def test_one_pull_converges_both_sides(a: list[Any], b: list[Any]) -> None:
    left, right = (
        Roster(mesh=MESH, network=CIDR, records=a),
        Roster(mesh=MESH, network=CIDR, records=b),
    )
    expected = Roster(mesh=MESH, network=CIDR, records=a + b).digest()
    client, server = pair(left, right)
    # Rosters as members hold them (nothing quarantined) converge in exactly one pull.
    chained = not left.quarantined and not right.quarantined
    # Otherwise a record one side held in quarantine until the pull brought its admitter goes
    # across with the next pull (RFC-NOTES §7.3, §7.6).
    pulls = 0
    while pulls < len(POOL):
        client.send(Pull())
        pulls += 1
        ev_c, _ = pump(client, server)
        assert isinstance(ev_c[-1], SyncComplete)
        if left.digest() == right.digest() == expected:
            break
    assert left.digest() == right.digest() == expected
    assert pulls == 1 or not chained, f"two chained rosters took {pulls} pulls"
    # A second pull finds them in sync.
    client.send(Pull())
    ev_c, _ = pump(client, server)
    assert ev_c == [SyncComplete(in_sync=True, sent=0, received=0)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(POOL)), st.lists(st.sampled_from(POOL)))
def test_one_pull_converges_rosters_as_members_hold_them(a: list[Any], b: list[Any]) -> None:
    # What a member holds is chained (its quarantine is never passed on or saved): keep only
    # the stored records of each side. Two such rosters converge in exactly one pull (RFC-NOTES
    # §7.6); benchmarks roster relies on it.
    left, right = (
        Roster(
            mesh=MESH, network=CIDR, records=Roster(mesh=MESH, network=CIDR, records=r).records()
        )
        for r in (a, b)
    )
    assert not left.quarantined and not right.quarantined
    expected = Roster(mesh=MESH, network=CIDR, records=left.records() + right.records()).digest()
    client, server = pair(left, right)
    client.send(Pull())
    ev_c, _ = pump(client, server)
    assert isinstance(ev_c[-1], SyncComplete)
    assert left.digest() == right.digest() == expected


def test_push_is_merged_and_acknowledged_then_eof_closes() -> None:
    fleet = Fleet()
    record = fleet.admit("alpha")
    left = fleet.roster
    right = Roster(mesh=MESH, network=CIDR, records=[left.get(fleet.genesis.public)])  # type: ignore[list-item]
    client, server = pair(left, right)
    client.send(Push(records=(record,)))
    ev_c, ev_s = pump(client, server)
    assert ev_c == [PushAcknowledged()]
    assert ev_s == [RosterUpdated(changed=(record,), rejected=())]
    server.receive_data(b"")
    assert server.next_event() == ConnectionClosed()
    assert server.state is ControlState.CLOSED


def test_forged_records_are_reported_not_merged() -> None:
    fleet = Fleet()
    record = fleet.admit("alpha")
    right = Roster(mesh=MESH, network=CIDR)
    client = ControlConnection(fleet.roster, role=Role.CLIENT)
    server = ControlConnection(right, role=Role.SERVER)
    client.send(Push(records=()))
    forged = {**record.to_value(), "address": "10.8.0.66"}
    frame = wire.encode_frame(
        wire.pack_canonical({"t": "push", "records": [forged]}), max_size=2**20
    )
    server.receive_data(client.data_to_send() + frame)
    events = []
    while (e := server.next_event()) is not None:
        events.append(e)
    rejected = [r for e in events if isinstance(e, RosterUpdated) for r in e.rejected]
    assert rejected and "did not verify" in rejected[0].detail
    assert right.get(record.identity) is None


def test_another_mesh_is_refused_at_hello() -> None:
    other = Fleet(genesis=identity("elsewhere"))
    client = ControlConnection(other.roster, role=Role.CLIENT)
    server = ControlConnection(Roster(mesh=MESH, network=CIDR), role=Role.SERVER)
    with pytest.raises(ControlProtocolError, match="another mesh"):
        server.receive_data(client.data_to_send())
    assert server.state is ControlState.ERROR


def test_grammar_errors() -> None:
    roster = Roster(mesh=MESH, network=CIDR)
    hello = wire.encode_frame(
        wire.pack_canonical({"t": "hello", "v": 1, "mesh": MESH}), max_size=99
    )
    for bad in (
        {"t": "ack"},  # server never receives ack
        {"t": "digest"},  # missing field
        {"t": "digest", "digest": b"short"},
        {"t": "mystery"},
        {"t": "hello", "v": 1, "mesh": MESH},  # second hello
        [1, 2],
    ):
        server = ControlConnection(roster, role=Role.SERVER)
        frame = wire.encode_frame(wire.pack_canonical(bad), max_size=999)
        with pytest.raises(ControlProtocolError):
            server.receive_data(hello + frame)
        assert server.state is ControlState.ERROR
    # Nothing before hello.
    server = ControlConnection(roster, role=Role.SERVER)
    with pytest.raises(ControlProtocolError, match="first"):
        server.receive_data(wire.encode_frame(wire.pack_canonical({"t": "ack"}), max_size=99))
    # EOF in the middle of an exchange is the peer's fault.
    client = ControlConnection(roster, role=Role.CLIENT)
    client.send(Pull())
    client.receive_data(hello)
    with pytest.raises(ControlProtocolError, match="closed"):
        client.receive_data(b"")


def test_local_misuse() -> None:
    roster = Roster(mesh=MESH, network=CIDR)
    server = ControlConnection(roster, role=Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.send(Pull())
    client = ControlConnection(roster, role=Role.CLIENT)
    client.send(Pull())
    with pytest.raises(LocalProtocolError):
        client.send(Pull())  # one operation at a time
    assert client.state is ControlState.ERROR


def test_oversized_frame_header_is_rejected_before_buffering() -> None:
    server = ControlConnection(Roster(mesh=MESH, network=CIDR), role=Role.SERVER, max_frame=1024)
    with pytest.raises(ControlProtocolError):
        server.receive_data((10**6).to_bytes(4, "big"))


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_fuzz_raw_bytes(role: Role, data: bytes) -> None:
    conn = ControlConnection(Roster(mesh=MESH, network=CIDR), role=role)
    if role is Role.CLIENT:
        conn.send(Pull())
    try:
        conn.receive_data(data)
        conn.receive_data(b"")
    except RemoteProtocolError:
        assert conn.state is ControlState.ERROR


message_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 2**33)
    | st.text(max_size=6)
    | st.binary(max_size=34)
    | st.just(MESH),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["t", "v", "mesh", "digest", "items", "records", "want", "type"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)
message_types = st.sampled_from(
    ["hello", "digest", "in-sync", "summary", "exchange", "records", "push", "ack", "x"]
)


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            message_types,
            st.dictionaries(
                st.sampled_from(["v", "mesh", "digest", "items", "records", "want"]),
                message_values,
                max_size=3,
            ),
        )
    ),
    with_hello=st.booleans(),
)
def test_fuzz_well_framed_messages(
    role: Role, messages: list[tuple[str, dict[str, Any]]], with_hello: bool
) -> None:
    conn = ControlConnection(Roster(mesh=MESH, network=CIDR, records=POOL[:3]), role=role)
    if role is Role.CLIENT:
        conn.send(Pull())
    stream = b""
    if with_hello:
        stream += wire.encode_frame(
            wire.pack_canonical({"t": "hello", "v": 1, "mesh": MESH}), max_size=2**20
        )
    for kind, fields in messages:
        stream += wire.encode_frame(wire.pack_canonical({**fields, "t": kind}), max_size=2**20)
    try:
        conn.receive_data(stream)
        while conn.next_event() is not None:
            pass
    except RemoteProtocolError:
        assert conn.state is ControlState.ERROR


def test_a_roster_larger_than_a_summary_still_syncs(monkeypatch: Any) -> None:
    """Issue 14 finding 6: beyond MAX_SUMMARY identities a pull used to fail (the summary
    broke the item limit); now the summary is a moving window and pulls converge."""
    import ppn.mesh._control as control

    monkeypatch.setattr(control, "MAX_SUMMARY", 8)
    fleet = Fleet()
    for i in range(30):
        fleet.admit(f"m{i:02}")
    server_side = fleet.roster.copy()
    client_side = Roster(mesh=MESH, network=CIDR, records=[])
    client_side.merge([r for r in server_side.records() if r.admission.is_genesis])
    mine = fleet.admit("late")  # only the client holds it
    client_side.merge([mine])
    client, server = pair(client_side, server_side)
    for _ in range(40):
        client.send(Pull())
        ev_c, _ = pump(client, server)
        assert isinstance(ev_c[-1], SyncComplete)
        if client_side.digest() == server_side.digest():
            break
    assert client_side.digest() == server_side.digest() == fleet.roster.digest()
