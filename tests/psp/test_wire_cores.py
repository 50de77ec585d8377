"""The PSP wire cores without I/O: golden frames, two cores in memory, flow control, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn.wire import encode_frame, pack_canonical
from psp import (
    MAX_FRAME,
    Cancel,
    ClientConnection,
    ConnectionClosed,
    Credit,
    Cursor,
    End,
    Error,
    ErrorCode,
    Header,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    RowBatch,
    ServerConnection,
    ServerHello,
    State,
    decode_message,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "psp-wire.json"
VAULT = bytes(range(32))


def test_golden_frames_regenerate_identically() -> None:
    from tests.psp.gen_wire_vectors import render

    assert render() == VECTORS.read_text(), "run: python -m tests.psp.gen_wire_vectors"


@pytest.mark.parametrize("case", json.loads(VECTORS.read_text())["cases"], ids=lambda c: c["name"])
def test_golden_frame_decodes_and_reencodes(case: dict[str, str]) -> None:
    from psp import encode_message

    frame = bytes.fromhex(case["frame"])
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    msg = decode_message(frame[4:], from_server=case["sender"] == "server")
    assert repr(msg) == case["repr"]
    assert encode_frame(encode_message(msg), max_size=MAX_FRAME) == frame


def pair() -> tuple[ClientConnection, ServerConnection]:
    return ClientConnection(), ServerConnection(vault_id=VAULT)


def shuttle(
    a: ClientConnection | ServerConnection, b: ClientConnection | ServerConnection
) -> list[object]:
    b.receive_data(a.data_to_send())
    events = []
    while (e := b.next_event()) is not None:
        events.append(e)
    return events


def test_request_rows_end_with_pipelined_hello() -> None:
    client, server = pair()
    client.send(Request(request_id=1, envelope=b"e", query=b"q", credit=2))
    events = shuttle(client, server)
    assert isinstance(events[-1], Request) and server.state is State.REQUESTED
    server.send(Header(request_id=1, vault=VAULT, query_id=b"i", as_of=7))
    server.send(RowBatch(request_id=1, rows=(b"a", b"b")))
    server.send(RowBatch(request_id=1, rows=(b"c",)))
    with pytest.raises(LocalProtocolError):
        server.send(RowBatch(request_id=1, rows=(b"d",)))  # out of credit
    got = shuttle(server, client)
    assert isinstance(got[0], ServerHello) and got[0].vault == VAULT
    assert [type(e) for e in got[1:]] == [Header, RowBatch, RowBatch]
    client.send(Credit(request_id=1, batches=1))
    shuttle(client, server)
    assert server.credit == 1
    server.send(RowBatch(request_id=1, rows=(b"d",)))
    server.send(
        End(
            request_id=1,
            count=server.rows_sent,
            digest=server.rows_digest,
            cursor=Cursor(as_of=7, offset=4),
        )
    )
    got = shuttle(server, client)
    assert isinstance(got[-1], End) and got[-1].count == 4
    assert client.state is State.IDLE and server.state is State.IDLE
    client.send(Request(request_id=2, envelope=b"e", query=b"q"))
    shuttle(client, server)
    server.send(Error(request_id=2, code=ErrorCode.NOT_PERMITTED, message="no"))
    got = shuttle(server, client)
    assert isinstance(got[0], Error) and not got[0].retryable
    client.receive_data(b"")
    assert isinstance(client.next_event(), ConnectionClosed)


def test_client_detects_a_tampered_row_digest() -> None:
    client, server = pair()
    client.send(Request(request_id=1, envelope=b"e", query=b"q"))
    shuttle(client, server)
    server.send(Header(request_id=1, vault=VAULT, query_id=b"i", as_of=7))
    server.send(RowBatch(request_id=1, rows=(b"a",)))
    shuttle(server, client)
    forged = End(request_id=1, count=1, digest=b"\x00" * 32)
    with pytest.raises(RemoteProtocolError):
        client.receive_data(
            encode_frame(__import__("psp").encode_message(forged), max_size=MAX_FRAME)
        )
    assert client.state is State.ERROR


def test_client_refuses_rows_beyond_its_credit() -> None:
    from psp import encode_message

    client, server = pair()
    client.send(Request(request_id=1, envelope=b"e", query=b"q", credit=1))
    shuttle(client, server)
    server.send(Header(request_id=1, vault=VAULT, query_id=b"i", as_of=7))
    shuttle(server, client)
    batch = encode_frame(encode_message(RowBatch(request_id=1, rows=(b"x",))), max_size=MAX_FRAME)
    client.receive_data(batch)
    with pytest.raises(RemoteProtocolError):
        client.receive_data(batch)


def test_version_mismatch_is_an_error_frame() -> None:
    client = ClientConnection(versions=(9,))
    server = ServerConnection(vault_id=VAULT)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(client.data_to_send())
    assert info.value.code is ErrorCode.VERSION_MISMATCH
    client.receive_data(server.data_to_send())
    event = client.next_event()
    assert isinstance(event, Error) and event.code is ErrorCode.VERSION_MISMATCH


def test_oversized_frame_header_is_refused_before_payload() -> None:
    server = ServerConnection(vault_id=VAULT)
    with pytest.raises(RemoteProtocolError):
        server.receive_data((MAX_FRAME + 1).to_bytes(4, "big"))
    assert server.state is State.ERROR


def test_misuse_is_local() -> None:
    client, server = pair()
    with pytest.raises(LocalProtocolError):
        client.send(Credit(request_id=1, batches=1))
    with pytest.raises(LocalProtocolError):
        server.send(Header(request_id=0, vault=VAULT, query_id=b"", as_of=0))
    client2 = ClientConnection()
    client2.send(Request(request_id=1, envelope=b"", query=b""))
    with pytest.raises(LocalProtocolError):
        client2.send(Request(request_id=2, envelope=b"", query=b""))


def test_cancel_and_stale_credit_are_handled() -> None:
    client, server = pair()
    client.send(Request(request_id=1, envelope=b"e", query=b"q"))
    shuttle(client, server)
    server.send(Error(request_id=1, code=ErrorCode.INTERNAL, message="x"))
    # a credit for the finished request that crossed the error on the wire is harmless
    server.receive_data(
        encode_frame(pack_canonical({"t": "credit", "id": 1, "n": 1}), max_size=MAX_FRAME)
    )
    assert server.state is State.IDLE
    client2, server2 = pair()
    client2.send(Request(request_id=1, envelope=b"e", query=b"q"))
    client2.send(Cancel(request_id=1))
    events = shuttle(client2, server2)
    assert isinstance(events[-1], Cancel)


message_maps = st.fixed_dictionaries(
    {
        "t": st.sampled_from(
            ["hello", "req", "credit", "cancel", "head", "rows", "end", "err", "zz"]
        )
    },
    optional={
        "id": st.integers(-5, 2**33),
        "v": st.one_of(st.integers(-1, 3), st.lists(st.integers(-1, 3), max_size=3)),
        "inv": st.binary(max_size=8),
        "q": st.binary(max_size=8),
        "credit": st.integers(-1, 2**17),
        "n": st.integers(-1, 2**17),
        "vault": st.binary(min_size=31, max_size=33),
        "qid": st.binary(max_size=70),
        "as_of": st.integers(-1, 2**64 - 1),
        "rows": st.lists(st.one_of(st.binary(max_size=4), st.integers(0, 9)), max_size=3),
        "count": st.integers(-1, 3),
        "digest": st.binary(min_size=31, max_size=33),
        "cursor": st.one_of(st.none(), st.lists(st.integers(-1, 3), max_size=3)),
        "code": st.integers(-1, 70000),
        "msg": st.text(max_size=4),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=40), message_maps.map(pack_canonical)), max_size=6),
    st.booleans(),
)
def test_cores_fed_arbitrary_frames_raise_only_protocol_errors(
    payloads: list[bytes], as_client: bool
) -> None:
    core: ClientConnection | ServerConnection = (
        ClientConnection() if as_client else ServerConnection(vault_id=VAULT)
    )
    if as_client:
        core.send(Request(request_id=1, envelope=b"", query=b""))
    try:
        for p in payloads:
            core.receive_data(len(p).to_bytes(4, "big") + p)
            while core.next_event() is not None:
                pass
        core.receive_data(b"")
    except RemoteProtocolError:
        assert core.state is State.ERROR


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_cores_fed_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for core in (ClientConnection(), ServerConnection(vault_id=VAULT)):
        try:
            core.receive_data(data)
            core.receive_data(b"")
        except RemoteProtocolError:
            pass
