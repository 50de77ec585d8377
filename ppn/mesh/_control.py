"""PPN control: the roster-sync protocol spoken on TCP 9206 between mesh members (sans-IO).

Every message is one ``ppn.wire`` frame holding a canonical msgpack map with a text field ``t``
(RFC-NOTES §7.6). Both sides open with ``hello`` (version and mesh id). Then the client runs
operations, one at a time:

* pull (anti-entropy): ``digest`` → ``in-sync`` | ``summary``; after a summary the client sends
  ``exchange`` (the records the server lacks or holds differently, and the identities it wants)
  and the server answers ``records``;
* push: ``push`` (records that just changed the sender's roster) → ``ack``.

Authority comes only from record signatures: whatever a peer sends goes through
:meth:`Roster.ingest`, which verifies, reports and drops what does not check out. With
``defer_checks`` the core hands the records out instead (:class:`RecordsToCheck`) and waits in
CHECKING until the adapter returns them verified (:meth:`ControlConnection.checked`), so the
signature work of a 4,096-record message can run on a worker thread, off the event loop.
:class:`RecordBudget` is the per-peer rate limit on received records (RFC-NOTES §7.6). A peer that
breaks the message grammar gets :class:`ControlProtocolError` (a ``RemoteProtocolError``) and the
connection core enters ERROR: the rule of the framing base every PPN protocol shares
(:mod:`ppn._framing`).
"""

from __future__ import annotations

import hashlib
import itertools
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
from ._roster import CheckedBatch, MergeResult, Rejection, Roster

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
    "RecordBudget",
    "RecordsToCheck",
    "Role",
    "RosterUpdated",
    "SyncComplete",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 8 * 1024 * 1024
MAX_RECORDS = 4096
MAX_SUMMARY = 65536
# Moves the window of a summary from one pull to the next (any varying value does).
_WINDOWS = itertools.count()


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
    CHECKING = "checking"  # either side: received records are being verified (defer_checks)
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
    held_back: int = 0  # verified records left waiting for their admitter (RFC-NOTES §7.3)


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
class RecordsToCheck:
    """``defer_checks``: verify these received values (``Roster.check``, thread-safe) and hand
    the result to :meth:`ControlConnection.checked`. ``count`` is what the rate limit charges."""

    values: tuple[Any, ...]

    @property
    def count(self) -> int:
        return len(self.values)


Event = RosterUpdated | SyncComplete | PushAcknowledged | RecordsToCheck | ConnectionClosed


class RecordBudget:
    """Per-peer token buckets for received records: ``burst`` at once, ``rate`` per second
    after that (RFC-NOTES §7.6). :meth:`take` charges and says how long the caller waits
    before verifying, so a peer that pushes faster is slowed, not served at its pace. Sources
    idle long enough to be full again are forgotten, so the table is bounded by the peers
    active within ``burst / rate`` seconds."""

    def __init__(self, *, rate: float = 256.0, burst: int = MAX_RECORDS) -> None:
        if not rate > 0 or burst < 1:
            raise LocalProtocolError("a record budget needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self._level: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def take(self, source: str, count: int, now: float) -> float:
        """Charge ``count`` records to ``source`` at ``now``; the seconds to wait first."""
        tokens, at = self._level.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate) - count
        self._level[source] = (tokens, now)
        if len(self._level) > 1024:
            full = [
                k for k, (t, a) in self._level.items() if t + (now - a) * self.rate >= self.burst
            ]
            for key in full:
                del self._level[key]
        return 0.0 if tokens >= 0 else -tokens / self.rate


# --- the core ----------------------------------------------------------------------------------


class ControlConnection(FramedConnection[ControlState, Event]):
    """One PPN control connection, either side. Shares the node's :class:`Roster` (it merges
    into it directly; the owner learns of changes through :class:`RosterUpdated`)."""

    REMOTE_ERROR = ControlProtocolError
    LOCAL_ERROR = LocalProtocolError
    FRAME_ERROR_PREFIX = "bad frame: "

    def __init__(
        self,
        roster: Roster,
        *,
        role: Role,
        max_frame: int = MAX_FRAME,
        defer_checks: bool = False,
    ) -> None:
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
        self._defer = defer_checks
        # While CHECKING: the message whose records are out, and (exchange) what the peer wants.
        self._checking: str | None = None
        self._want: list[bytes] = []
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

    @property
    def hello_received(self) -> bool:
        return self._hello_received

    def checked(self, batch: CheckedBatch) -> None:
        """The verified form of the last :class:`RecordsToCheck`: merge it and answer."""
        kind = self._checking
        if self.state is not ControlState.CHECKING or kind is None:
            self._misuse("checked() answers a RecordsToCheck event")
        self._checking = None
        self.state = ControlState.IDLE
        received = self._merge(self.roster.accept(batch))
        self._answer(kind, received)

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

    def _ingest(self, kind: str, values: Sequence[Any]) -> None:
        """Merge received records and answer ``kind``, or hand them out to be checked first."""
        if self._defer:
            self._checking = kind
            self.state = ControlState.CHECKING
            self._events.append(RecordsToCheck(values=tuple(values)))
            return
        self._answer(kind, self._merge(self.roster.ingest(values)))

    def _merge(self, result: MergeResult) -> int:
        if result.changed or result.rejected or result.held_back:
            self._events.append(
                RosterUpdated(
                    changed=result.changed, rejected=result.rejected, held_back=result.held_back
                )
            )
        return len(result.changed)

    def _answer(self, kind: str, received: int) -> None:
        if kind == "push":
            self._emit({"t": "ack"})
        elif kind == "exchange":
            want, self._want = self._want, []
            reply = [r.to_value() for w in want if (r := self.roster.get(w)) is not None]
            self._emit({"t": "records", "records": reply})
        else:  # "records": the client's pull is complete
            self._events.append(
                SyncComplete(in_sync=False, sent=self._sent_in_exchange, received=received)
            )

    # server side

    def _on_digest(self, message: Fields) -> None:
        if message.blob("digest", size=32) == self.roster.digest():
            self._emit({"t": "in-sync"})
            return
        # A roster of any size answers: beyond MAX_SUMMARY identities the summary is a window
        # starting at a point that moves from pull to pull, so successive pulls cover it all.
        start = hashlib.sha256(
            message.blob("digest", size=32) + next(_WINDOWS).to_bytes(8, "big")
        ).digest()
        pairs = self.roster.summary_window(start, MAX_SUMMARY)
        items = [[identity, record_hash] for identity, record_hash in pairs]
        self._emit({"t": "summary", "items": items})
        self.state = ControlState.AWAIT_EXCHANGE

    def _on_exchange(self, message: Fields) -> None:
        records = message.items("records", high=MAX_RECORDS)
        want = message.items("want", high=MAX_SUMMARY)
        if not all(isinstance(w, bytes) and len(w) == 32 for w in want):
            raise ControlProtocolError("want lists 32-byte identity keys")
        self._want = want[:MAX_RECORDS]
        self._ingest("exchange", records)

    def _on_push(self, message: Fields) -> None:
        self._ingest("push", message.items("records", high=MAX_RECORDS))

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
        # A full summary may be a window of a larger roster: send only what it covers.
        window = (pairs[0][0], pairs[-1][0]) if len(pairs) >= MAX_SUMMARY else None
        send, want = self.roster.compare(pairs, window=window)
        send = send[:MAX_RECORDS]
        self._sent_in_exchange = len(send)
        self._emit(
            {"t": "exchange", "records": [r.to_value() for r in send], "want": want[:MAX_SUMMARY]}
        )

    def _on_records(self, message: Fields) -> None:
        self._ingest("records", message.items("records", high=MAX_RECORDS))

    def _on_ack(self, message: Fields) -> None:
        self._events.append(PushAcknowledged())
