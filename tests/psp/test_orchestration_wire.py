"""The aggregation protocol (RFC-NOTES §10.2): messages round-trip, the two sans-IO cores wired
in memory, flow control and ordering enforced, and arbitrary bytes raise only
RemoteProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn.ports import VAULT_PORT
from ppn.wire import encode_frame, pack_canonical
from psp import Cancel, Credit, Error, ErrorCode, LocalProtocolError, RemoteProtocolError
from psp.aggregation._connection import (
    AggregateRequest,
    AggregatorConnection,
    AggregatorHello,
    ConnectionClosed,
    Done,
    MergedRows,
    OrchestrationClientConnection,
    OrchestrationHello,
    Phase,
    Target,
    TargetReport,
    decode_orchestration,
    encode_orchestration,
)
from psp.aggregation._merge import Mode, VaultStatus

REQ = AggregateRequest(
    request_id=1, targets=2, mode=Mode.STRICT, deadline_ms=5000, vault_deadline_ms=4500, credit=1
)


def _target(i: int, rid: int = 1) -> Target:
    return Target(
        request_id=rid,
        index=i,
        vault=bytes([i + 1]) * 32,
        address=f"127.0.0.1:{VAULT_PORT}",
        envelope=b"env",
        query=b"q",
    )


MESSAGES = [
    (OrchestrationHello(), False),
    (AggregatorHello(version=1), True),
    (REQ, False),
    (_target(0), False),
    (Credit(request_id=1, batches=3), False),
    (Cancel(request_id=1), False),
    (MergedRows(request_id=1, rows=((0, b"{}"), (None, b'{"count":3}'))), True),
    (
        TargetReport(
            request_id=1,
            index=1,
            status=VaultStatus.TRUNCATED,
            rows=4,
            as_of=9,
            code=ErrorCode.DEADLINE,
            message="late",
            cursor=(9, 4),
        ),
        True,
    ),
    (TargetReport(request_id=1, index=0, status=VaultStatus.OK, rows=0), True),
    (Done(request_id=1, complete=False, failed=1, count=2), True),
    (Error(request_id=1, code=ErrorCode.QUERY_INVALID, message="no"), True),
]


@pytest.mark.parametrize(("event", "from_server"), MESSAGES)
def test_messages_round_trip(event: object, from_server: bool) -> None:
    data = encode_orchestration(event)  # type: ignore[arg-type]
    assert decode_orchestration(data, from_server=from_server) == event
    # The vault protocol's hello is not the aggregator's: the ports cannot be confused.
    with pytest.raises(RemoteProtocolError):
        decode_orchestration(pack_canonical({"t": "hello", "v": [1]}), from_server=False)


def _pair() -> tuple[OrchestrationClientConnection, AggregatorConnection]:
    client, server = OrchestrationClientConnection(), AggregatorConnection()
    server.receive_data(client.data_to_send())
    assert isinstance(server.next_event(), OrchestrationHello)
    client.receive_data(server.data_to_send())
    assert isinstance(client.next_event(), AggregatorHello)
    return client, server


def _deliver(
    src: OrchestrationClientConnection | AggregatorConnection, dst: object
) -> list[object]:
    dst.receive_data(src.data_to_send())  # type: ignore[attr-defined]
    out = []
    while (e := dst.next_event()) is not None:  # type: ignore[attr-defined]
        out.append(e)
    return out


def test_a_request_end_to_end_in_memory() -> None:
    client, server = _pair()
    client.send(REQ)
    client.send(_target(0))
    assert client.phase is Phase.TARGETS
    client.send(_target(1))
    assert client.phase is Phase.RUNNING
    assert _deliver(client, server) == [REQ, _target(0), _target(1)]
    assert server.phase is Phase.RUNNING and server.credit == 1
    server.send(MergedRows(request_id=1, rows=((0, b"{}"),)))
    with pytest.raises(LocalProtocolError):  # no credit left
        server.send(MergedRows(request_id=1, rows=((1, b"{}"),)))
    assert server.credit == 0  # the refused send used nothing


def test_flow_control_and_ordering() -> None:
    client, server = _pair()
    client.send(REQ)
    client.send(_target(0))
    client.send(_target(1))
    _deliver(client, server)
    server.send(MergedRows(request_id=1, rows=((0, b"{}"),)))
    _deliver(server, client)
    client.send(Credit(request_id=1, batches=1))
    _deliver(client, server)
    server.send(MergedRows(request_id=1, rows=((1, b"{}"),)))
    server.send(TargetReport(request_id=1, index=0, status=VaultStatus.OK, rows=1))
    server.send(Done(request_id=1, complete=True, failed=0, count=2))
    events = _deliver(server, client)
    assert [type(e) for e in events] == [MergedRows, TargetReport, Done]
    assert client.phase is Phase.IDLE and server.phase is Phase.IDLE
    # A credit crossing the done on the wire is harmless.
    client2, server2 = _pair()
    client2.send(REQ)
    for i in range(2):
        client2.send(_target(i))
    _deliver(client2, server2)
    server2.send(Done(request_id=1, complete=True, failed=0, count=0))
    server2.receive_data(
        encode_frame(encode_orchestration(Credit(request_id=1, batches=1)), max_size=1 << 20)
    )
    assert server2.next_event() is None


def test_a_peer_breaking_the_rules_is_a_remote_error() -> None:
    client, server = _pair()
    # Targets out of index order.
    bad = encode_orchestration(REQ), encode_orchestration(_target(1))
    with pytest.raises(RemoteProtocolError):
        server.receive_data(b"".join(encode_frame(m, max_size=1 << 20) for m in bad))
    assert server.phase is Phase.ERROR
    assert server.data_to_send()  # it says why: an error frame for the connection
    # Rows beyond the granted credit.
    client, server = _pair()
    client.send(REQ)
    for i in range(2):
        client.send(_target(i))
    rows = [MergedRows(request_id=1, rows=((0, b"{}"),))] * 2
    with pytest.raises(RemoteProtocolError):
        client.receive_data(
            b"".join(encode_frame(encode_orchestration(r), max_size=1 << 20) for r in rows)
        )
    # EOF is an event, not an error.
    client, server = _pair()
    server.receive_data(b"")
    assert isinstance(server.next_event(), ConnectionClosed)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes, to_server: bool) -> None:
    core = AggregatorConnection() if to_server else _pair()[0]
    try:
        core.receive_data(data)
        core.receive_data(b"")
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["t", "id", "n", "mode", "deadline", "vdeadline", "credit", "i", "rows", "st"]
        ),
        st.one_of(
            st.integers(-5, 2**33),
            st.text(max_size=8),
            st.binary(max_size=40),
            st.none(),
            st.booleans(),
            st.lists(st.one_of(st.integers(0, 9), st.binary(max_size=4), st.none()), max_size=3),
        ),
        max_size=8,
    ),
    st.booleans(),
)
def test_well_formed_maps_with_bad_fields_are_rejected_cleanly(
    m: dict[str, object], from_server: bool
) -> None:
    try:
        data = pack_canonical(m)
    except Exception:
        return
    try:
        decode_orchestration(data, from_server=from_server)
    except RemoteProtocolError:
        pass
