"""Every fleet decoder fed arbitrary bytes raises only RemoteProtocolError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ppn import RemoteProtocolError, wire
from ppn.fleet import NodeTable, SpawnClient, SpawnServer, VmSpec, decode_heartbeat
from ppn.fleet._heartbeat import HEARTBEAT_CONTEXT, decode_heartbeat_reply
from ppn.fleet._operator import decode_control_request

from ._fleet_support import fleet_directory, make_heartbeat, make_key, make_member

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


def _payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), _VALUES.map(wire.pack_canonical))


@settings(max_examples=300, deadline=None)
@given(_payloads())
def test_heartbeat_decoder(payload: bytes) -> None:
    for decode in (decode_heartbeat, decode_heartbeat_reply, decode_control_request):
        try:
            decode(payload)
        except RemoteProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*make_heartbeat(2).to_wire(), "x"]), _VALUES, max_size=14))
def test_signed_garbage_bodies(fields: dict[str, object]) -> None:
    """A validly signed body with arbitrary field values still only raises RemoteProtocolError."""
    body = wire.pack_canonical({**make_heartbeat(2).to_wire(), **fields})
    key = make_key(2)
    payload = wire.pack_canonical(
        {"body": body, "key": key.public, "sig": key.sign(HEARTBEAT_CONTEXT + body)}
    )
    table = NodeTable(fleet_directory())
    try:
        table.receive_heartbeat(payload, 0.0)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(_payloads(), max_size=3), st.booleans())
def test_spawn_cores(frames: list[bytes], raw: bool) -> None:
    node_a = make_member(2, "a").node_id
    server = SpawnServer(node_id=node_a, directory=fleet_directory(), nonce=b"N" * 16)
    client = SpawnClient(
        key=make_key(1),
        node_id=node_a,
        request_id=b"R" * 16,
        spec=VmSpec(vm_type="g", name="v", ram_mb=1),
    )
    data = (
        b"".join(frames)
        if raw
        else b"".join(wire.encode_frame(f, max_size=1 << 20) for f in frames)
    )
    for core in (server, client):
        try:
            core.receive_data(data)
            core.receive_data(b"")
        except RemoteProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(_payloads(), min_size=1, max_size=3))
def test_spawn_client_after_a_valid_challenge(answers: list[bytes]) -> None:
    """Past the challenge, whatever the host answers only raises RemoteProtocolError."""
    node_a = make_member(2, "a").node_id
    server = SpawnServer(node_id=node_a, directory=fleet_directory(), nonce=b"N" * 16)
    client = SpawnClient(
        key=make_key(1),
        node_id=node_a,
        request_id=b"R" * 16,
        spec=VmSpec(vm_type="g", name="v", ram_mb=1),
    )
    client.receive_data(server.data_to_send())
    try:
        for answer in answers:
            client.receive_data(wire.encode_frame(answer, max_size=1 << 20))
        client.receive_data(b"")
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_signed_garbage_spawn_bodies(value: object) -> None:
    """A body signed by the real controller but malformed only raises RemoteProtocolError."""
    from ppn.fleet._spawn import SPAWN_CONTEXT

    node_a = make_member(2, "a").node_id
    server = SpawnServer(node_id=node_a, directory=fleet_directory(), nonce=b"N" * 16)
    body = wire.pack_canonical(value)
    envelope = {
        "body": body,
        "key": make_key(1).public,
        "sig": make_key(1).sign(SPAWN_CONTEXT + body),
    }
    try:
        server.receive_data(wire.encode_frame(wire.pack_canonical(envelope), max_size=1 << 20))
    except RemoteProtocolError:
        pass
