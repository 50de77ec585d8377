"""The aggregation protocol between a client and VM-Orchestration (RFC-NOTES §10.2), sans-IO.

Same framing as the vault protocol (§9.5: 4-byte length, 1 MiB limit, one canonical msgpack map
per frame with a type ``t``), its own message types so neither port can be mistaken for the
other:

client → aggregator: ``ohello`` (versions), ``agg`` (one aggregated request: target count, mode,
deadlines, initial credit), then exactly ``n`` × ``tgt`` (target index, vault id, address, the
signed envelope and the exact query bytes for that vault), ``credit``, ``cancel``.
aggregator → client: ``ohello`` (chosen version), ``mrows`` (merged rows tagged with their target
index, or nil for a combined aggregate row), ``vstat`` (one per target, once it is final),
``done`` (completeness), ``err`` (the request was refused; id 0: the connection).

Flow control as in §9.5: each ``mrows`` frame uses one unit of the client's credit.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from ppn.wire import (
    EncodingError,
    FrameDecoder,
    WireError,
    encode_frame,
    pack_canonical,
    unpack_canonical,
)

from .._capability import MAX_ENVELOPE_SIZE
from .._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .._messages import MAX_CREDIT, MAX_FRAME, MAX_MESSAGE, Cancel, Credit, Error
from .._query import MAX_QUERY_SIZE
from ._merge import Mode, VaultStatus

__all__ = [
    "AGGREGATION_VERSIONS",
    "MAX_DEADLINE_MS",
    "MAX_TARGETS",
    "AggregateRequest",
    "AggregatorConnection",
    "AggregatorHello",
    "Done",
    "MergedRows",
    "OrchestrationClientConnection",
    "OrchestrationHello",
    "Phase",
    "Target",
    "TargetReport",
    "decode_orchestration",
    "encode_orchestration",
]

AGGREGATION_VERSIONS = (1,)
MAX_TARGETS = 4096
MAX_DEADLINE_MS = 300_000
MAX_MERGED_ROWS = 4096  # entries per mrows frame
MAX_ADDRESS = 300
_MAX_ID = 2**32 - 1


@dataclass(frozen=True, kw_only=True)
class OrchestrationHello:
    versions: tuple[int, ...] = AGGREGATION_VERSIONS


@dataclass(frozen=True, kw_only=True)
class AggregatorHello:
    version: int


@dataclass(frozen=True, kw_only=True)
class AggregateRequest:
    """Opens request ``request_id``; exactly ``targets`` :class:`Target` frames follow."""

    request_id: int
    targets: int
    mode: Mode
    deadline_ms: int  # the whole request, from when the aggregator reads this frame
    vault_deadline_ms: int  # each vault; below deadline_ms so statuses arrive in time
    credit: int = 8


@dataclass(frozen=True, kw_only=True)
class Target:
    request_id: int
    index: int
    vault: bytes
    address: str  # HOST:PORT of the vault
    envelope: bytes = b""
    query: bytes = b""


@dataclass(frozen=True, kw_only=True)
class MergedRows:
    request_id: int
    rows: tuple[tuple[int | None, bytes], ...]


@dataclass(frozen=True, kw_only=True)
class TargetReport:
    request_id: int
    index: int
    status: VaultStatus
    rows: int
    as_of: int = 0
    code: ErrorCode | None = None
    message: str = ""
    cursor: tuple[int, int] | None = None


@dataclass(frozen=True, kw_only=True)
class Done:
    request_id: int
    complete: bool  # every target ok
    failed: int  # targets neither ok nor truncated
    count: int  # merged rows sent


Event = (
    OrchestrationHello
    | AggregatorHello
    | AggregateRequest
    | Target
    | Credit
    | Cancel
    | MergedRows
    | TargetReport
    | Done
    | Error
)


def encode_orchestration(event: Event) -> bytes:
    m: dict[str, Any]
    if isinstance(event, OrchestrationHello):
        m = {"t": "ohello", "v": list(event.versions)}
    elif isinstance(event, AggregatorHello):
        m = {"t": "ohello", "v": event.version}
    elif isinstance(event, AggregateRequest):
        m = {
            "t": "agg",
            "id": event.request_id,
            "n": event.targets,
            "mode": event.mode.value,
            "deadline": event.deadline_ms,
            "vdeadline": event.vault_deadline_ms,
            "credit": event.credit,
        }
    elif isinstance(event, Target):
        m = {
            "t": "tgt",
            "id": event.request_id,
            "i": event.index,
            "vault": event.vault,
            "addr": event.address,
            "inv": event.envelope,
            "q": event.query,
        }
    elif isinstance(event, Credit):
        m = {"t": "credit", "id": event.request_id, "n": event.batches}
    elif isinstance(event, Cancel):
        m = {"t": "cancel", "id": event.request_id}
    elif isinstance(event, MergedRows):
        m = {"t": "mrows", "id": event.request_id, "rows": [[i, r] for i, r in event.rows]}
    elif isinstance(event, TargetReport):
        m = {
            "t": "vstat",
            "id": event.request_id,
            "i": event.index,
            "st": event.status.value,
            "rows": event.rows,
            "as_of": event.as_of,
        }
        if event.code is not None:
            m["code"] = int(event.code)
        if event.message:
            m["msg"] = event.message[:MAX_MESSAGE]
        if event.cursor is not None:
            m["cursor"] = list(event.cursor)
    elif isinstance(event, Done):
        m = {
            "t": "done",
            "id": event.request_id,
            "complete": event.complete,
            "failed": event.failed,
            "count": event.count,
        }
    else:
        m = {"t": "err", "id": event.request_id, "code": int(event.code), "msg": event.message}
    return pack_canonical(m)


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed aggregation message: {detail}")


def _keys(m: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()) -> None:
    if not required <= set(m) <= required | optional:
        raise _bad(f"keys {sorted(m)}")


def _int(m: dict[str, Any], key: str, low: int = 0, high: int = 2**63 - 1) -> int:
    v = m[key]
    if type(v) is not int or not low <= v <= high:
        raise _bad(f"{key!r} must be an integer in [{low}, {high}]")
    return v


def _bytes(m: dict[str, Any], key: str, low: int, high: int) -> bytes:
    v = m[key]
    if not isinstance(v, bytes) or not low <= len(v) <= high:
        raise _bad(f"{key!r} must be {low}..{high} bytes")
    return v


def _code(raw: int) -> ErrorCode:
    try:
        return ErrorCode(raw)
    except ValueError:
        return ErrorCode.INTERNAL if raw >= 200 else ErrorCode.PROTOCOL


def decode_orchestration(data: bytes, *, from_server: bool) -> Event:
    """Decode one frame payload sent by the aggregator (``from_server``) or by a client."""
    try:
        m = unpack_canonical(data, max_depth=4)
    except EncodingError as exc:
        raise _bad(str(exc)) from None
    if not isinstance(m, dict) or not isinstance(m.get("t"), str):
        raise _bad("not a typed map")
    t = m["t"]
    if t == "ohello" and not from_server:
        _keys(m, {"t", "v"})
        v = m["v"]
        if not isinstance(v, list) or not 1 <= len(v) <= 16:
            raise _bad("'v' must list versions")
        if not all(type(x) is int and 0 < x < 2**16 for x in v):
            raise _bad("'v' must list versions")
        return OrchestrationHello(versions=tuple(v))
    if t == "ohello":
        _keys(m, {"t", "v"})
        return AggregatorHello(version=_int(m, "v", 1, 2**16 - 1))
    if t == "agg" and not from_server:
        _keys(m, {"t", "id", "n", "mode", "deadline", "vdeadline", "credit"})
        if m["mode"] not in ("strict", "best_effort"):
            raise _bad("'mode' is strict or best_effort")
        deadline = _int(m, "deadline", 1, MAX_DEADLINE_MS)
        return AggregateRequest(
            request_id=_int(m, "id", 1, _MAX_ID),
            targets=_int(m, "n", 1, MAX_TARGETS),
            mode=Mode(m["mode"]),
            deadline_ms=deadline,
            vault_deadline_ms=_int(m, "vdeadline", 1, deadline),
            credit=_int(m, "credit", 0, MAX_CREDIT),
        )
    if t == "tgt" and not from_server:
        _keys(m, {"t", "id", "i", "vault", "addr", "inv", "q"})
        addr = m["addr"]
        if not isinstance(addr, str) or not 0 < len(addr) <= MAX_ADDRESS:
            raise _bad("'addr' is HOST:PORT")
        return Target(
            request_id=_int(m, "id", 1, _MAX_ID),
            index=_int(m, "i", 0, MAX_TARGETS - 1),
            vault=_bytes(m, "vault", 32, 32),
            address=addr,
            envelope=_bytes(m, "inv", 1, MAX_ENVELOPE_SIZE),
            query=_bytes(m, "q", 1, MAX_QUERY_SIZE),
        )
    if t == "credit" and not from_server:
        _keys(m, {"t", "id", "n"})
        return Credit(request_id=_int(m, "id", 1, _MAX_ID), batches=_int(m, "n", 1, MAX_CREDIT))
    if t == "cancel" and not from_server:
        _keys(m, {"t", "id"})
        return Cancel(request_id=_int(m, "id", 1, _MAX_ID))
    if t == "mrows" and from_server:
        _keys(m, {"t", "id", "rows"})
        raw = m["rows"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_MERGED_ROWS:
            raise _bad("'rows' must hold 1..4096 entries")
        rows: list[tuple[int | None, bytes]] = []
        for entry in raw:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not (entry[0] is None or (type(entry[0]) is int and 0 <= entry[0] < MAX_TARGETS))
                or not isinstance(entry[1], bytes)
            ):
                raise _bad("a merged row is [target index | nil, bytes]")
            rows.append((entry[0], entry[1]))
        return MergedRows(request_id=_int(m, "id", 1, _MAX_ID), rows=tuple(rows))
    if t == "vstat" and from_server:
        _keys(m, {"t", "id", "i", "st", "rows", "as_of"}, frozenset({"code", "msg", "cursor"}))
        try:
            status = VaultStatus(m["st"])
        except ValueError:
            raise _bad("unknown target status") from None
        msg = m.get("msg", "")
        if not isinstance(msg, str) or len(msg) > MAX_MESSAGE:
            raise _bad("'msg' must be a short text")
        cursor = None
        if "cursor" in m:
            c = m["cursor"]
            if (
                not isinstance(c, list)
                or len(c) != 2
                or not all(type(x) is int and 0 <= x < 2**63 for x in c)
            ):
                raise _bad("'cursor' must be [as_of, offset]")
            cursor = (c[0], c[1])
        return TargetReport(
            request_id=_int(m, "id", 1, _MAX_ID),
            index=_int(m, "i", 0, MAX_TARGETS - 1),
            status=status,
            rows=_int(m, "rows"),
            as_of=_int(m, "as_of"),
            code=_code(_int(m, "code", 0, 65535)) if "code" in m else None,
            message=msg,
            cursor=cursor,
        )
    if t == "done" and from_server:
        _keys(m, {"t", "id", "complete", "failed", "count"})
        if not isinstance(m["complete"], bool):
            raise _bad("'complete' is a boolean")
        return Done(
            request_id=_int(m, "id", 1, _MAX_ID),
            complete=m["complete"],
            failed=_int(m, "failed", 0, MAX_TARGETS),
            count=_int(m, "count"),
        )
    if t == "err" and from_server:
        _keys(m, {"t", "id", "code", "msg"})
        msg = m["msg"]
        if not isinstance(msg, str) or len(msg) > MAX_MESSAGE:
            raise _bad("'msg' must be a short text")
        return Error(
            request_id=_int(m, "id", 0, _MAX_ID),
            code=_code(_int(m, "code", 0, 65535)),
            message=msg,
        )
    raise _bad(f"unexpected message type {t!r}")


@dataclass(frozen=True, kw_only=True)
class ConnectionClosed:
    """The peer closed its side at a frame boundary."""


class Phase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    IDLE = "idle"
    TARGETS = "targets"  # the request is open, its targets are still coming
    RUNNING = "running"  # every target is in; merged output until done or err
    CLOSED = "closed"
    ERROR = "error"


# (phase, event type) -> next phase; TARGETS -> RUNNING after the last target is a special case.
_AGG_RECV: dict[tuple[Phase, type], Phase] = {
    (Phase.AWAIT_HELLO, OrchestrationHello): Phase.IDLE,
    (Phase.IDLE, AggregateRequest): Phase.TARGETS,
    (Phase.TARGETS, Target): Phase.TARGETS,
    (Phase.TARGETS, Credit): Phase.TARGETS,
    (Phase.RUNNING, Credit): Phase.RUNNING,
    (Phase.TARGETS, Cancel): Phase.TARGETS,
    (Phase.RUNNING, Cancel): Phase.RUNNING,
}
_AGG_SEND: dict[tuple[Phase, type], Phase] = {
    (Phase.TARGETS, MergedRows): Phase.TARGETS,
    (Phase.RUNNING, MergedRows): Phase.RUNNING,
    (Phase.RUNNING, TargetReport): Phase.RUNNING,
    (Phase.RUNNING, Done): Phase.IDLE,
    (Phase.RUNNING, Error): Phase.IDLE,
}
_CLIENT_SEND: dict[tuple[Phase, type], Phase] = {
    (Phase.AWAIT_HELLO, AggregateRequest): Phase.TARGETS,
    (Phase.IDLE, AggregateRequest): Phase.TARGETS,
    (Phase.TARGETS, Target): Phase.TARGETS,
    (Phase.TARGETS, Credit): Phase.TARGETS,
    (Phase.RUNNING, Credit): Phase.RUNNING,
    (Phase.TARGETS, Cancel): Phase.TARGETS,
    (Phase.RUNNING, Cancel): Phase.RUNNING,
}
_CLIENT_RECV: dict[tuple[Phase, type], Phase] = {
    (Phase.TARGETS, MergedRows): Phase.TARGETS,
    (Phase.RUNNING, MergedRows): Phase.RUNNING,
    (Phase.RUNNING, TargetReport): Phase.RUNNING,
    (Phase.RUNNING, Done): Phase.IDLE,
    (Phase.RUNNING, Error): Phase.IDLE,
}


class _Core:
    _from_server: bool
    _recv: dict[tuple[Phase, type], Phase]
    _send: dict[tuple[Phase, type], Phase]

    def __init__(self) -> None:
        self.phase = Phase.AWAIT_HELLO
        self._decoder = FrameDecoder(max_size=MAX_FRAME)
        self._out = bytearray()
        self._events: deque[Event | ConnectionClosed] = deque()
        self.request_id = 0
        self.credit = 0  # mrows frames the client can still take
        self._expected = 0  # targets of the open request
        self._seen = 0

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | ConnectionClosed | None:
        return self._events.popleft() if self._events else None

    def receive_data(self, data: bytes) -> None:
        if self.phase is Phase.ERROR:
            raise RemoteProtocolError("the connection already failed")
        self._decoder.feed(data)
        try:
            while (frame := self._decoder.next_frame()) is not None:
                self._receive(decode_orchestration(frame, from_server=self._from_server))
        except WireError as exc:
            self._fail(str(exc))
        except RemoteProtocolError as exc:
            self._fail(str(exc), exc.code)
        if self._decoder.at_eof and self.phase not in (Phase.CLOSED, Phase.ERROR):
            self.phase = Phase.CLOSED
            self._events.append(ConnectionClosed())

    def _fail(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        self.phase = Phase.ERROR
        raise RemoteProtocolError(message, code)

    def _emit(self, event: Event) -> None:
        self._out += encode_frame(encode_orchestration(event), max_size=MAX_FRAME)

    def _step(self, event: Event, *, remote: bool) -> None:
        table = self._recv if remote else self._send
        nxt = table.get((self.phase, type(event)))
        if nxt is None:
            what = f"{type(event).__name__} in phase {self.phase.value}"
            if remote:
                self._fail(f"peer sent {what}")
            self.phase = Phase.ERROR
            raise LocalProtocolError(f"cannot send {what}")
        if getattr(event, "request_id", self.request_id) != self.request_id and not isinstance(
            event, AggregateRequest
        ):
            if remote:
                self._fail("a message for a request that is not current")
            raise LocalProtocolError("a message for a request that is not current")
        self.phase = nxt
        if isinstance(event, AggregateRequest):
            if event.request_id <= self.request_id:
                if remote:
                    self._fail("request ids must increase")
                raise LocalProtocolError("request ids must increase")
            self.request_id, self.credit = event.request_id, event.credit
            self._expected, self._seen = event.targets, 0
        elif isinstance(event, Target):
            if event.index != self._seen:
                if remote:
                    self._fail("targets must come in index order")
                raise LocalProtocolError("targets must come in index order")
            self._seen += 1
            if self._seen == self._expected:
                self.phase = Phase.RUNNING
        elif isinstance(event, Credit):
            if self.credit + event.batches > MAX_CREDIT:
                if remote:
                    self._fail("credit beyond the protocol limit")
                raise LocalProtocolError("credit beyond the protocol limit")
            self.credit += event.batches
        elif isinstance(event, MergedRows):
            if self.credit <= 0:
                if remote:
                    self._fail("merged rows beyond the granted credit")
                raise LocalProtocolError("no credit: wait for the client to grant more")
            self.credit -= 1
        elif isinstance(event, TargetReport) and not 0 <= event.index < self._expected:
            if remote:
                self._fail("a report for a target the request does not have")
            raise LocalProtocolError("a report for a target the request does not have")

    def _receive(self, event: Event) -> None:
        raise NotImplementedError


class AggregatorConnection(_Core):
    """The aggregator's end of one client connection."""

    _from_server = False
    _recv = _AGG_RECV
    _send = _AGG_SEND

    def __init__(self, *, versions: tuple[int, ...] = AGGREGATION_VERSIONS) -> None:
        super().__init__()
        self.versions = versions
        self._finished = 0

    def _fail(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        if self.phase is not Phase.ERROR:
            self._emit(Error(request_id=0, code=code, message=message[:MAX_MESSAGE]))
        super()._fail(message, code)

    def _receive(self, event: Event) -> None:
        if isinstance(event, Credit | Cancel) and event.request_id == self._finished:
            return  # crossed our done on the wire
        if isinstance(event, OrchestrationHello) and self.phase is Phase.AWAIT_HELLO:
            common = set(event.versions) & set(self.versions)
            if not common:
                self._fail("no common aggregation protocol version", ErrorCode.VERSION_MISMATCH)
            self._emit(AggregatorHello(version=max(common)))
        self._step(event, remote=True)
        self._events.append(event)

    def send(self, event: Event) -> None:
        if self.phase is Phase.ERROR:
            raise LocalProtocolError("the connection already failed")
        if isinstance(event, Error) and event.request_id == 0:
            self._emit(event)
            self.phase = Phase.CLOSED
            return
        self._step(event, remote=False)
        if isinstance(event, Done | Error):
            self._finished, self.credit = self.request_id, 0
        self._emit(event)


class OrchestrationClientConnection(_Core):
    """The client's end: hello goes out at once; one aggregated request at a time."""

    _from_server = True
    _recv = _CLIENT_RECV
    _send = _CLIENT_SEND

    def __init__(self, *, versions: tuple[int, ...] = AGGREGATION_VERSIONS) -> None:
        super().__init__()
        self.versions = versions
        self.server: AggregatorHello | None = None
        self._emit(OrchestrationHello(versions=versions))

    def _receive(self, event: Event) -> None:
        if isinstance(event, AggregatorHello):
            if self.server is not None:
                self._fail("a second hello")
            if event.version not in self.versions:
                self._fail("the aggregator chose a version we did not offer")
            self.server = event
            if self.phase is Phase.AWAIT_HELLO:
                self.phase = Phase.IDLE
            self._events.append(event)
            return
        if isinstance(event, Error) and event.request_id == 0:
            self.phase = Phase.CLOSED
            self._events.append(event)
            return
        if self.server is None:
            self._fail("a response before the hello")
        self._step(event, remote=True)
        self._events.append(event)

    def send(self, event: Event) -> None:
        if self.phase is Phase.ERROR:
            raise LocalProtocolError("the connection already failed")
        self._step(event, remote=False)
        self._emit(event)

    def next_request_id(self) -> int:
        return self.request_id + 1
