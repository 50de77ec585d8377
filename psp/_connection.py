"""Sans-IO cores for both ends of a PSP connection (RFC-NOTES §9.5).

Bytes in with ``receive_data`` (``b""`` is EOF), events out with ``next_event``, events in with
``send``, bytes out with ``data_to_send``. One request at a time per connection; a client may
send its request right behind its hello (no extra round trip).

Flow control: a request carries an initial *credit* (row batches the client can take) and the
client grants more with ``Credit``. The server core refuses to emit a batch without credit, so a
vault adapter that honours ``credit`` never holds more than one batch for a slow reader; a server
that overruns a client's credit is a protocol error at the client.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import NoReturn, TypeVar

from ppn._framing import ConnectionClosed, FramedConnection
from ppn.wire import encode_frame

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._messages import (
    MAX_CREDIT,
    MAX_FRAME,
    PROTOCOL_VERSIONS,
    SEALED_VERSION,
    Cancel,
    ClientHello,
    Credit,
    End,
    Error,
    Event,
    Header,
    Request,
    RowBatch,
    RowDigest,
    ServerHello,
    decode_message,
    encode_message,
)

__all__ = ["ClientConnection", "ConnectionClosed", "ServerConnection", "State"]


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"
    IDLE = "idle"
    REQUESTED = "requested"  # request sent/received, header not yet
    STREAMING = "streaming"  # header sent/received, rows until end or error
    CLOSED = "closed"
    ERROR = "error"


# (state, message type) -> next state. The client's requests and the vault's responses each
# move both ends alike; only the opening differs: the vault reads the client's hello first,
# while the client may send its request right behind that hello, before the vault's answer.
_REQUESTS: dict[tuple[State, type], State] = {
    (State.IDLE, Request): State.REQUESTED,
    (State.REQUESTED, Credit): State.REQUESTED,
    (State.STREAMING, Credit): State.STREAMING,
    (State.REQUESTED, Cancel): State.REQUESTED,
    (State.STREAMING, Cancel): State.STREAMING,
}
_RESPONSES: dict[tuple[State, type], State] = {
    (State.REQUESTED, Header): State.STREAMING,
    (State.REQUESTED, Error): State.IDLE,
    (State.STREAMING, RowBatch): State.STREAMING,
    (State.STREAMING, End): State.IDLE,
    (State.STREAMING, Error): State.IDLE,
}
_SERVER_RECV = {(State.AWAIT_HELLO, ClientHello): State.IDLE, **_REQUESTS}
_CLIENT_SEND = {(State.AWAIT_HELLO, Request): State.REQUESTED, **_REQUESTS}
_SERVER_SEND = _CLIENT_RECV = _RESPONSES


S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E")


class PSPCore(FramedConnection[S, E | ConnectionClosed]):
    """What the ends of both PSP protocols share, the vault protocol here and aggregation
    (:mod:`psp.aggregation._connection`): PSP's error types, one request at a time with its
    credit, and the peer's close as ``closed`` plus :class:`ConnectionClosed`. Frames are read
    until ERROR (after a connection-level error the client is closed, and anything more from
    the peer is a violation)."""

    REMOTE_ERROR = RemoteProtocolError
    LOCAL_ERROR = LocalProtocolError

    def __init__(self, initial: S, *, error: S, closed: S) -> None:
        super().__init__(initial, error=error, max_frame=MAX_FRAME)
        self._closed_state = closed
        self.request_id = 0  # the current (or last) request
        self.credit = 0  # batches the client can still take

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer (``b""`` is EOF). Raises RemoteProtocolError."""
        self._receive_frames(data)

    def _check_usable(self) -> None:
        if self.state is self._error_state:
            raise LocalProtocolError("the connection already failed")

    def _on_eof(self) -> None:
        if self.state is not self._closed_state:
            self.state = self._closed_state
            self._events.append(ConnectionClosed())

    def _fail(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> NoReturn:
        self._violation(RemoteProtocolError(message, code))


class _Core(PSPCore[State, Event]):
    def __init__(self) -> None:
        super().__init__(State.AWAIT_HELLO, error=State.ERROR, closed=State.CLOSED)

    def _emit(self, event: Event) -> None:
        # The base's _write written out: one Python call less on every row batch (ARCHITECTURE
        # §8.2 counts the per-message cost).
        self._out += encode_frame(encode_message(event), max_size=MAX_FRAME)


class ServerConnection(_Core):
    """The vault's end. Answers the client's hello itself (with ``vault_id``)."""

    def __init__(self, *, vault_id: bytes, versions: tuple[int, ...] = PROTOCOL_VERSIONS) -> None:
        super().__init__()
        self.vault_id = vault_id
        self.versions = versions
        self.version = 0
        self._digest = RowDigest()
        self._finished: int = 0

    def _tell_peer(self, error: Exception) -> None:
        # Tell the client why before giving up: a connection-level error frame (id 0).
        code = error.code if isinstance(error, RemoteProtocolError) else ErrorCode.PROTOCOL
        self._emit(Error(request_id=0, code=code, message=str(error)[:500]))

    @property
    def rows_sent(self) -> int:
        return self._digest.count

    @property
    def rows_digest(self) -> bytes:
        return self._digest.digest()

    def _on_frame(self, payload: bytes) -> None:
        event = decode_message(payload, from_server=False)
        if isinstance(event, Credit | Cancel):
            if event.request_id == self._finished:
                return  # crossed our End or Error on the wire: harmless
            if event.request_id != self.request_id:
                self._fail("credit or cancel for an unknown request")
        if isinstance(event, ClientHello) and self.state is State.AWAIT_HELLO:
            common = set(event.versions) & set(self.versions)
            if not common:
                self._emit(
                    Error(
                        request_id=0,
                        code=ErrorCode.VERSION_MISMATCH,
                        message=ErrorCode.VERSION_MISMATCH.sentence,
                    )
                )
                self._fail("no common protocol version", ErrorCode.VERSION_MISMATCH)
            self.version = max(common)
            self._emit(ServerHello(version=self.version, vault=self.vault_id))
        self._transition(_SERVER_RECV, type(event), remote=True)
        if isinstance(event, Request):
            if event.request_id <= self.request_id:
                self._fail("request ids must increase")
            self.request_id, self.credit, self._digest = event.request_id, event.credit, RowDigest()
        elif isinstance(event, Credit):
            if self.credit + event.batches > MAX_CREDIT:
                self._fail("credit beyond the protocol limit")
            self.credit += event.batches
        self._events.append(event)

    def send(self, event: Event) -> None:
        self._check_usable()
        if isinstance(event, Error) and event.request_id == 0:
            self._emit(event)
            self.state = State.CLOSED
            return
        if getattr(event, "request_id", None) != self.request_id:
            self._misuse("event for a request that is not current")
        if isinstance(event, RowBatch) and self.credit <= 0:
            raise LocalProtocolError("no credit: wait for the client to grant more")
        if isinstance(event, End) and (
            event.count != self.rows_sent or event.digest != self.rows_digest
        ):
            self._misuse("End must carry rows_sent and rows_digest")
        self._transition(_SERVER_SEND, type(event), remote=False)
        if self.version < SEALED_VERSION:
            # Version 1 has neither field: a version-1 client would refuse the frame.
            if isinstance(event, Header) and event.replica is not None:
                event = replace(event, replica=None)
            elif isinstance(event, End) and event.seal is not None:
                event = replace(event, seal=None)
        if isinstance(event, RowBatch):
            self.credit -= 1
            self._digest.update(event.rows)
        if isinstance(event, End | Error):
            self._finished, self.credit = self.request_id, 0
        self._emit(event)


class ClientConnection(_Core):
    """The client's end: hello goes out at once; one request at a time; rows are checked
    against the end frame's count and digest before ``End`` is delivered."""

    def __init__(self, *, versions: tuple[int, ...] = PROTOCOL_VERSIONS) -> None:
        super().__init__()
        self.versions = versions
        self.server: ServerHello | None = None
        self._digest = RowDigest()
        self._emit(ClientHello(versions=versions))

    @property
    def rows_received(self) -> int:
        return self._digest.count

    def _on_frame(self, payload: bytes) -> None:
        event = decode_message(payload, from_server=True)
        if isinstance(event, ServerHello):
            if self.server is not None or self.state in (State.CLOSED, State.ERROR):
                self._fail("a second hello")
            if event.version not in self.versions:
                self._fail("the vault chose a version we did not offer", ErrorCode.VERSION_MISMATCH)
            self.server = event
            if self.state is State.AWAIT_HELLO:
                self.state = State.IDLE
            self._events.append(event)
            return
        if isinstance(event, Error) and event.request_id == 0:
            self.state = State.CLOSED
            self._events.append(event)
            return
        if self.server is None:
            self._fail("a response before the hello")
        if getattr(event, "request_id", None) != self.request_id:
            self._fail("a response for a request that is not current")
        self._transition(_CLIENT_RECV, type(event), remote=True)
        if self.server.version < SEALED_VERSION and (
            getattr(event, "replica", None) is not None or getattr(event, "seal", None) is not None
        ):
            self._fail("a version-2 field on a version-1 connection")
        if isinstance(event, RowBatch):
            if self.credit <= 0:
                self._fail("the vault sent rows beyond the granted credit")
            self.credit -= 1
            self._digest.update(event.rows)
        elif isinstance(event, End) and (
            event.count != self._digest.count or event.digest != self._digest.digest()
        ):
            self._fail("row count or digest does not match the rows received")
        self._events.append(event)

    def send(self, event: Event) -> None:
        self._check_usable()
        if isinstance(event, Request) and event.request_id <= self.request_id:
            raise LocalProtocolError("request ids must increase")
        if isinstance(event, Credit | Cancel) and event.request_id != self.request_id:
            raise LocalProtocolError("credit or cancel for a request that is not current")
        self._transition(_CLIENT_SEND, type(event), remote=False)
        if isinstance(event, Request):
            self.request_id, self.credit, self._digest = event.request_id, event.credit, RowDigest()
        elif isinstance(event, Credit):
            if self.credit + event.batches > MAX_CREDIT:
                raise LocalProtocolError("credit beyond the protocol limit")
            self.credit += event.batches
        self._emit(event)

    def next_request_id(self) -> int:
        return self.request_id + 1
