"""PPN control: the roster-sync protocol spoken on TCP 9206 between mesh members (sans-IO).

Every message is one ``ppn.wire`` frame holding a canonical msgpack map with a text field ``t``
(RFC-NOTES §7.6). Both sides open with ``hello`` (version and mesh id). Then the client runs
operations, one at a time:

* pull (anti-entropy): ``digest`` → ``in-sync`` | ``summary``; after a summary the client sends
  ``exchange`` (the records the server lacks or holds differently, and the identities it wants)
  and the server answers ``records``;
* push: ``push`` (records that just changed the sender's roster) → ``ack``.

Authority comes only from record signatures: whatever a peer sends goes through
:meth:`Roster.ingest`, which verifies, reports and drops what does not check out. A peer that
breaks the message grammar gets :class:`ControlProtocolError` (a ``RemoteProtocolError``) and the
connection core enters ERROR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

from .. import wire
from .._errors import LocalProtocolError, RemoteProtocolError
from ._records import Record
from ._roster import MergeResult, Rejection, Roster

__all__ = [
    "CONTROL_PORT",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "ConnectionClosed",
    "ControlConnection",
    "ControlProtocolError",
    "ControlState",
    "Event",
    "Pull",
    "Push",
    "PushAcknowledged",
    "Role",
    "RosterUpdated",
    "SyncComplete",
]

CONTROL_PORT = 9206
PROTOCOL_VERSION = 1
MAX_FRAME = 8 * 1024 * 1024
MAX_RECORDS = 4096
MAX_SUMMARY = 65536


class ControlProtocolError(RemoteProtocolError):
    """The peer broke the PPN control message grammar."""


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class ControlState(Enum):
    IDLE = "idle"
    AWAIT_DIGEST_REPLY = "await-digest-reply"  # client, after digest
    AWAIT_RECORDS = "await-records"  # client, after exchange
    AWAIT_ACK = "await-ack"  # client, after push
    AWAIT_EXCHANGE = "await-exchange"  # server, after summary
    CLOSED = "closed"
    ERROR = "error"


# (role, state, message type received) -> next state. Anything else is a protocol error.
_RECEIVE: dict[tuple[Role, ControlState, str], ControlState] = {
    (Role.CLIENT, ControlState.AWAIT_DIGEST_REPLY, "in-sync"): ControlState.IDLE,
    (Role.CLIENT, ControlState.AWAIT_DIGEST_REPLY, "summary"): ControlState.AWAIT_RECORDS,
    (Role.CLIENT, ControlState.AWAIT_RECORDS, "records"): ControlState.IDLE,
    (Role.CLIENT, ControlState.AWAIT_ACK, "ack"): ControlState.IDLE,
    (Role.SERVER, ControlState.IDLE, "digest"): ControlState.IDLE,  # or AWAIT_EXCHANGE
    (Role.SERVER, ControlState.IDLE, "push"): ControlState.IDLE,
    (Role.SERVER, ControlState.AWAIT_EXCHANGE, "exchange"): ControlState.IDLE,
}

# (role, state, operation the local side starts) -> next state.
_SEND: dict[tuple[Role, ControlState, str], ControlState] = {
    (Role.CLIENT, ControlState.IDLE, "pull"): ControlState.AWAIT_DIGEST_REPLY,
    (Role.CLIENT, ControlState.IDLE, "push"): ControlState.AWAIT_ACK,
}

_FIELDS: dict[str, set[str]] = {
    "hello": {"t", "v", "mesh"},
    "digest": {"t", "digest"},
    "in-sync": {"t"},
    "summary": {"t", "items"},
    "exchange": {"t", "records", "want"},
    "records": {"t", "records"},
    "push": {"t", "records"},
    "ack": {"t"},
}


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Pull:
    """Client operation: run one anti-entropy exchange."""


@dataclass(frozen=True, kw_only=True)
class Push:
    """Client operation: send records that just changed this node's roster."""

    records: tuple[Record, ...]


@dataclass(frozen=True, kw_only=True)
class RosterUpdated:
    """Records from the peer changed the local roster and/or were refused (and why)."""

    changed: tuple[Record, ...]
    rejected: tuple[Rejection, ...]


@dataclass(frozen=True, kw_only=True)
class SyncComplete:
    """A pull finished. ``in_sync``: the digests already matched, nothing was exchanged."""

    in_sync: bool
    sent: int
    received: int


@dataclass(frozen=True, kw_only=True)
class PushAcknowledged:
    pass


@dataclass(frozen=True, kw_only=True)
class ConnectionClosed:
    pass


Event = RosterUpdated | SyncComplete | PushAcknowledged | ConnectionClosed


# --- the core ----------------------------------------------------------------------------------


class ControlConnection:
    """One PPN control connection, either side. Shares the node's :class:`Roster` (it merges
    into it directly; the owner learns of changes through :class:`RosterUpdated`)."""

    def __init__(self, roster: Roster, *, role: Role, max_frame: int = MAX_FRAME) -> None:
        self.roster = roster
        self.role = role
        self.state = ControlState.IDLE
        # The peer's hello must be its first message; operations may be sent before it arrives.
        self._hello_received = False
        self._max_frame = max_frame
        self._decoder = wire.FrameDecoder(max_size=max_frame)
        self._outgoing = bytearray()
        self._events: list[Event] = []
        self._sent_in_exchange = 0
        self._emit({"t": "hello", "v": PROTOCOL_VERSION, "mesh": roster.mesh})

    # --- public sans-IO surface -----------------------------------------------------------

    def send(self, operation: Pull | Push) -> None:
        """Start a client operation (the server only answers)."""
        kind = "pull" if isinstance(operation, Pull) else "push"
        next_state = _SEND.get((self.role, self.state, kind))
        if next_state is None:
            self._fail_local(
                f"cannot start a {kind} in state {self.state.value} as {self.role.value}"
            )
        if isinstance(operation, Pull):
            self._emit({"t": "digest", "digest": self.roster.digest()})
        else:
            if len(operation.records) > MAX_RECORDS:
                self._fail_local(f"a push carries at most {MAX_RECORDS} records")
            self._emit({"t": "push", "records": [r.to_value() for r in operation.records]})
        self.state = next_state

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means it closed its side."""
        if self.state in (ControlState.ERROR, ControlState.CLOSED):
            if data:
                self._fail_remote("data after the connection ended")
            return
        self._decoder.feed(data)
        try:
            while self.state not in (ControlState.ERROR, ControlState.CLOSED):
                payload = self._decoder.next_frame()
                if payload is None:
                    break
                self._handle(self._decode(payload))
        except wire.WireError as exc:
            self._fail_remote(f"bad frame: {exc}")
        if self._decoder.at_eof and self.state not in (ControlState.ERROR, ControlState.CLOSED):
            if self.state is ControlState.IDLE:
                self.state = ControlState.CLOSED
                self._events.append(ConnectionClosed())
            else:
                self._fail_remote(f"connection closed in state {self.state.value}")

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    # --- internals --------------------------------------------------------------------------

    def _emit(self, message: dict[str, Any]) -> None:
        try:
            self._outgoing += wire.encode_frame(
                wire.pack_canonical(message), max_size=self._max_frame
            )
        except wire.WireError as exc:
            self._fail_local(f"message too large to send: {exc}")

    def _fail_local(self, why: str) -> NoReturn:
        self.state = ControlState.ERROR
        raise LocalProtocolError(why)

    def _fail_remote(self, why: str) -> NoReturn:
        self.state = ControlState.ERROR
        raise ControlProtocolError(why)

    def _decode(self, payload: bytes) -> dict[str, Any]:
        try:
            value = wire.unpack_canonical(payload)
        except wire.EncodingError:
            self._fail_remote("a control message is not canonical msgpack")
        if not isinstance(value, dict) or not isinstance(value.get("t"), str):
            self._fail_remote("a control message is a map with a text field 't'")
        fields = _FIELDS.get(value["t"])
        if fields is None:
            self._fail_remote("unknown control message type")
        if set(value) != fields:
            self._fail_remote(f"{value['t']} message has missing or unknown fields")
        return value

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if not self._hello_received:
            if kind != "hello":
                self._fail_remote("the first control message must be hello")
            self._check_hello(message)
            self._hello_received = True
            return
        next_state = _RECEIVE.get((self.role, self.state, kind))
        if next_state is None:
            self._fail_remote(f"unexpected {kind} in state {self.state.value}")
        handler = getattr(self, "_on_" + kind.replace("-", "_"))
        self.state = next_state
        handler(message)

    def _check_hello(self, message: dict[str, Any]) -> None:
        if message["v"] != PROTOCOL_VERSION:
            self._fail_remote("unsupported PPN control version")
        if message["mesh"] != self.roster.mesh:
            self._fail_remote("the peer belongs to another mesh")

    def _records_of(self, message: dict[str, Any]) -> list[Any]:
        records = message["records"]
        if not isinstance(records, list) or len(records) > MAX_RECORDS:
            self._fail_remote(f"records is a list of at most {MAX_RECORDS}")
        return records

    def _ingest(self, values: Sequence[Any]) -> int:
        result: MergeResult = self.roster.ingest(values)
        if result.changed or result.rejected:
            self._events.append(RosterUpdated(changed=result.changed, rejected=result.rejected))
        return len(result.changed)

    # server side

    def _on_digest(self, message: dict[str, Any]) -> None:
        digest = message["digest"]
        if not isinstance(digest, bytes) or len(digest) != 32:
            self._fail_remote("a digest is 32 bytes")
        if digest == self.roster.digest():
            self._emit({"t": "in-sync"})
            return
        items = [[identity, record_hash] for identity, record_hash in self.roster.summary()]
        self._emit({"t": "summary", "items": items})
        self.state = ControlState.AWAIT_EXCHANGE

    def _on_exchange(self, message: dict[str, Any]) -> None:
        records = self._records_of(message)
        want = message["want"]
        if not isinstance(want, list) or len(want) > MAX_SUMMARY:
            self._fail_remote("want is a list of identities")
        if not all(isinstance(w, bytes) and len(w) == 32 for w in want):
            self._fail_remote("want lists 32-byte identity keys")
        self._ingest(records)
        reply = [r.to_value() for w in want[:MAX_RECORDS] if (r := self.roster.get(w)) is not None]
        self._emit({"t": "records", "records": reply})

    def _on_push(self, message: dict[str, Any]) -> None:
        self._ingest(self._records_of(message))
        self._emit({"t": "ack"})

    # client side

    def _on_in_sync(self, message: dict[str, Any]) -> None:
        self._events.append(SyncComplete(in_sync=True, sent=0, received=0))

    def _on_summary(self, message: dict[str, Any]) -> None:
        items = message["items"]
        if not isinstance(items, list) or len(items) > MAX_SUMMARY:
            self._fail_remote(f"a summary lists at most {MAX_SUMMARY} items")
        pairs: list[tuple[bytes, bytes]] = []
        for item in items:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(x, bytes) and len(x) == 32 for x in item)
            ):
                self._fail_remote("a summary item is [identity, record hash]")
            pairs.append((item[0], item[1]))
        send, want = self.roster.compare(pairs)
        send = send[:MAX_RECORDS]
        self._sent_in_exchange = len(send)
        self._emit(
            {"t": "exchange", "records": [r.to_value() for r in send], "want": want[:MAX_SUMMARY]}
        )

    def _on_records(self, message: dict[str, Any]) -> None:
        received = self._ingest(self._records_of(message))
        self._events.append(
            SyncComplete(in_sync=False, sent=self._sent_in_exchange, received=received)
        )

    def _on_ack(self, message: dict[str, Any]) -> None:
        self._events.append(PushAcknowledged())
