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
connection core enters ERROR: the rule of the framing base every PPN protocol shares
(:mod:`ppn._framing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .. import wire
from .._errors import LocalProtocolError, RemoteProtocolError
from .._fields import Fields, unpack_typed
from .._framing import ConnectionClosed, FramedConnection
from ..ports import CONTROL_PORT  # re-exported: ppn.mesh.CONTROL_PORT
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


# role -> (state, message type received) -> next state. Anything else is a protocol error.
_RECEIVE: dict[Role, dict[tuple[ControlState, str], ControlState]] = {
    Role.CLIENT: {
        (ControlState.AWAIT_DIGEST_REPLY, "in-sync"): ControlState.IDLE,
        (ControlState.AWAIT_DIGEST_REPLY, "summary"): ControlState.AWAIT_RECORDS,
        (ControlState.AWAIT_RECORDS, "records"): ControlState.IDLE,
        (ControlState.AWAIT_ACK, "ack"): ControlState.IDLE,
    },
    Role.SERVER: {
        (ControlState.IDLE, "digest"): ControlState.IDLE,  # or AWAIT_EXCHANGE
        (ControlState.IDLE, "push"): ControlState.IDLE,
        (ControlState.AWAIT_EXCHANGE, "exchange"): ControlState.IDLE,
    },
}

# role -> (state, operation the local side starts) -> next state. The server only answers.
_SEND: dict[Role, dict[tuple[ControlState, str], ControlState]] = {
    Role.CLIENT: {
        (ControlState.IDLE, "pull"): ControlState.AWAIT_DIGEST_REPLY,
        (ControlState.IDLE, "push"): ControlState.AWAIT_ACK,
    },
    Role.SERVER: {},
}

_FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"t", "v", "mesh"}),
    "digest": frozenset({"t", "digest"}),
    "in-sync": frozenset({"t"}),
    "summary": frozenset({"t", "items"}),
    "exchange": frozenset({"t", "records", "want"}),
    "records": frozenset({"t", "records"}),
    "push": frozenset({"t", "records"}),
    "ack": frozenset({"t"}),
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


Event = RosterUpdated | SyncComplete | PushAcknowledged | ConnectionClosed


# --- the core ----------------------------------------------------------------------------------


class ControlConnection(FramedConnection[ControlState, Event]):
    """One PPN control connection, either side. Shares the node's :class:`Roster` (it merges
    into it directly; the owner learns of changes through :class:`RosterUpdated`)."""

    REMOTE_ERROR = ControlProtocolError
    LOCAL_ERROR = LocalProtocolError
    FRAME_ERROR_PREFIX = "bad frame: "

    def __init__(self, roster: Roster, *, role: Role, max_frame: int = MAX_FRAME) -> None:
        # Nothing is read once closed or failed.
        super().__init__(
            ControlState.IDLE,
            error=ControlState.ERROR,
            max_frame=max_frame,
            stop=(ControlState.CLOSED,),
        )
        self.roster = roster
        self.role = role
        self._receive_table = _RECEIVE[role]
        self._send_table = _SEND[role]
        # The peer's hello must be its first message; operations may be sent before it arrives.
        self._hello_received = False
        self._sent_in_exchange = 0
        self._emit({"t": "hello", "v": PROTOCOL_VERSION, "mesh": roster.mesh})

    # --- public sans-IO surface -----------------------------------------------------------

    def send(self, operation: Pull | Push) -> None:
        """Start a client operation (the server only answers)."""
        kind = "pull" if isinstance(operation, Pull) else "push"
        next_state = self._lookup(self._send_table, kind, remote=False)
        if isinstance(operation, Pull):
            self._emit({"t": "digest", "digest": self.roster.digest()})
        else:
            if len(operation.records) > MAX_RECORDS:
                self._misuse(f"a push carries at most {MAX_RECORDS} records")
            self._emit({"t": "push", "records": [r.to_value() for r in operation.records]})
        self.state = next_state

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means it closed its side."""
        self._receive_frames(data)

    # --- the framing base's hooks -----------------------------------------------------------

    def _receive_after_stop(self, data: bytes) -> None:
        if data:
            self._violation(ControlProtocolError("data after the connection ended"))

    def _on_eof(self) -> None:
        if self.state is not ControlState.IDLE:
            self._violation(ControlProtocolError(f"connection closed in state {self.state.value}"))
        self.state = ControlState.CLOSED
        self._events.append(ConnectionClosed())

    def _on_frame(self, payload: bytes) -> None:
        kind, value = unpack_typed(payload, error=ControlProtocolError, max_depth=16)
        fields = _FIELDS.get(kind)
        if fields is None:
            raise ControlProtocolError("unknown control message type")
        message = Fields(value, error=ControlProtocolError, required=fields, what=kind)
        if not self._hello_received:
            if kind != "hello":
                raise ControlProtocolError("the first control message must be hello")
            self._check_hello(message)
            self._hello_received = True
            return
        next_state = self._lookup(self._receive_table, kind, remote=True)
        handler = getattr(self, "_on_" + kind.replace("-", "_"))
        self.state = next_state
        handler(message)

    # --- internals --------------------------------------------------------------------------

    def _emit(self, message: dict[str, Any]) -> None:
        try:
            self._write(wire.pack_canonical(message))
        except wire.WireError as exc:
            self._misuse(f"message too large to send: {exc}")

    def _check_hello(self, message: Fields) -> None:
        if message["v"] != PROTOCOL_VERSION:
            raise ControlProtocolError("unsupported PPN control version")
        if message["mesh"] != self.roster.mesh:
            raise ControlProtocolError("the peer belongs to another mesh")

    def _ingest(self, values: Sequence[Any]) -> int:
        result: MergeResult = self.roster.ingest(values)
        if result.changed or result.rejected:
            self._events.append(RosterUpdated(changed=result.changed, rejected=result.rejected))
        return len(result.changed)

    # server side

    def _on_digest(self, message: Fields) -> None:
        if message.blob("digest", size=32) == self.roster.digest():
            self._emit({"t": "in-sync"})
            return
        items = [[identity, record_hash] for identity, record_hash in self.roster.summary()]
        self._emit({"t": "summary", "items": items})
        self.state = ControlState.AWAIT_EXCHANGE

    def _on_exchange(self, message: Fields) -> None:
        records = message.items("records", high=MAX_RECORDS)
        want = message.items("want", high=MAX_SUMMARY)
        if not all(isinstance(w, bytes) and len(w) == 32 for w in want):
            raise ControlProtocolError("want lists 32-byte identity keys")
        self._ingest(records)
        reply = [r.to_value() for w in want[:MAX_RECORDS] if (r := self.roster.get(w)) is not None]
        self._emit({"t": "records", "records": reply})

    def _on_push(self, message: Fields) -> None:
        self._ingest(message.items("records", high=MAX_RECORDS))
        self._emit({"t": "ack"})

    # client side

    def _on_in_sync(self, message: Fields) -> None:
        self._events.append(SyncComplete(in_sync=True, sent=0, received=0))

    def _on_summary(self, message: Fields) -> None:
        pairs: list[tuple[bytes, bytes]] = []
        for item in message.items("items", high=MAX_SUMMARY):
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(isinstance(x, bytes) and len(x) == 32 for x in item)
            ):
                raise ControlProtocolError("a summary item is [identity, record hash]")
            pairs.append((item[0], item[1]))
        send, want = self.roster.compare(pairs)
        send = send[:MAX_RECORDS]
        self._sent_in_exchange = len(send)
        self._emit(
            {"t": "exchange", "records": [r.to_value() for r in send], "want": want[:MAX_SUMMARY]}
        )

    def _on_records(self, message: Fields) -> None:
        received = self._ingest(message.items("records", high=MAX_RECORDS))
        self._events.append(
            SyncComplete(in_sync=False, sent=self._sent_in_exchange, received=received)
        )

    def _on_ack(self, message: Fields) -> None:
        self._events.append(PushAcknowledged())
