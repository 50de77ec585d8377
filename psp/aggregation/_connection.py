"""The aggregation protocol's sans-IO cores (RFC-NOTES §10.2): the aggregator's end of a client
connection and the client's end.

Built on the framing base every PPN protocol shares (:mod:`ppn._framing`); the frames and their
codec are in :mod:`._messages` (re-exported here for the adapters). Bytes in with
``receive_data`` (``b""`` is EOF), events out with ``next_event``, events in with ``send``, bytes
out with ``data_to_send``. One aggregated request at a time: ``agg`` opens it, exactly ``n``
``tgt`` frames follow in index order, then merged output until ``done`` or ``err``; each
``mrows`` frame uses one unit of the client's credit.
"""

from __future__ import annotations

import enum

from ppn import wire
from ppn._framing import ConnectionClosed

from .._connection import PSPCore
from .._errors import ErrorCode, RemoteProtocolError
from .._messages import MAX_CREDIT, MAX_MESSAGE, Cancel, Credit, Error
from ._messages import (
    AGGREGATION_VERSIONS,
    MAX_CLIENT_FRAME,
    MAX_DEADLINE_MS,
    MAX_TARGETS,
    AggregateRequest,
    AggregatorHello,
    Done,
    Event,
    MergedRows,
    OrchestrationHello,
    Target,
    TargetReport,
    decode_orchestration,
    encode_orchestration,
)

__all__ = [
    "AGGREGATION_VERSIONS",
    "MAX_CLIENT_FRAME",
    "MAX_DEADLINE_MS",
    "MAX_TARGETS",
    "AggregateRequest",
    "AggregatorConnection",
    "AggregatorHello",
    "ConnectionClosed",
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


class Phase(enum.Enum):
    AWAIT_HELLO = "await-hello"
    IDLE = "idle"
    TARGETS = "targets"  # the request is open, its targets are still coming
    RUNNING = "running"  # every target is in; merged output until done or err
    CLOSED = "closed"
    ERROR = "error"


# (phase, message type) -> next phase; TARGETS -> RUNNING after the last target is a special
# case. As in the vault protocol, the client's requests and the aggregator's output move both
# ends alike; the aggregator reads the hello first, the client need not wait for the answer.
_REQUESTS: dict[tuple[Phase, type], Phase] = {
    (Phase.IDLE, AggregateRequest): Phase.TARGETS,
    (Phase.TARGETS, Target): Phase.TARGETS,
    (Phase.TARGETS, Credit): Phase.TARGETS,
    (Phase.RUNNING, Credit): Phase.RUNNING,
    (Phase.TARGETS, Cancel): Phase.TARGETS,
    (Phase.RUNNING, Cancel): Phase.RUNNING,
}
_OUTPUT: dict[tuple[Phase, type], Phase] = {
    (Phase.TARGETS, MergedRows): Phase.TARGETS,
    (Phase.RUNNING, MergedRows): Phase.RUNNING,
    (Phase.RUNNING, TargetReport): Phase.RUNNING,
    (Phase.RUNNING, Done): Phase.IDLE,
    (Phase.RUNNING, Error): Phase.IDLE,
}
_AGG_RECV = {(Phase.AWAIT_HELLO, OrchestrationHello): Phase.IDLE, **_REQUESTS}
_CLIENT_SEND = {(Phase.AWAIT_HELLO, AggregateRequest): Phase.TARGETS, **_REQUESTS}
_AGG_SEND = _CLIENT_RECV = _OUTPUT


class _Core(PSPCore[Phase, Event]):
    _from_server: bool
    _recv: dict[tuple[Phase, type], Phase]
    _send: dict[tuple[Phase, type], Phase]

    def __init__(self) -> None:
        super().__init__(Phase.AWAIT_HELLO, error=Phase.ERROR, closed=Phase.CLOSED)
        self._expected = 0  # targets of the open request
        self._seen = 0

    @property
    def phase(self) -> Phase:
        """The aggregation name for the base's ``state``."""
        return self.state

    @phase.setter
    def phase(self, value: Phase) -> None:
        self.state = value

    def _on_frame(self, payload: bytes) -> None:
        self._receive(decode_orchestration(payload, from_server=self._from_server))

    def _emit(self, event: Event) -> None:
        self._write(encode_orchestration(event))

    def _step(self, event: Event, *, remote: bool) -> None:
        """The checks both ends make of a message, sent (``remote=False``) or received."""
        nxt = self._lookup(self._recv if remote else self._send, type(event), remote=remote)
        if not isinstance(event, AggregateRequest) and (
            getattr(event, "request_id", self.request_id) != self.request_id
        ):
            self._refuse("a message for a request that is not current", remote=remote)
        self.state = nxt
        if isinstance(event, AggregateRequest):
            if event.request_id <= self.request_id:
                self._refuse("request ids must increase", remote=remote)
            self.request_id, self.credit = event.request_id, event.credit
            self._expected, self._seen = event.targets, 0
        elif isinstance(event, Target):
            if event.index != self._seen:
                self._refuse("targets must come in index order", remote=remote)
            self._seen += 1
            if self._seen == self._expected:
                self.state = Phase.RUNNING
        elif isinstance(event, Credit):
            if self.credit + event.batches > MAX_CREDIT:
                self._refuse("credit beyond the protocol limit", remote=remote)
            self.credit += event.batches
        elif isinstance(event, MergedRows):
            if self.credit <= 0:
                self._refuse(
                    "merged rows beyond the granted credit",
                    remote=remote,
                    local="no credit: wait for the client to grant more",
                )
            self.credit -= 1
        elif isinstance(event, TargetReport) and not 0 <= event.index < self._expected:
            self._refuse("a report for a target the request does not have", remote=remote)

    def _receive(self, event: Event) -> None:
        raise NotImplementedError


class AggregatorConnection(_Core):
    """The aggregator's end of one client connection.

    A client's frames are small (a ``tgt`` is under 13 KB), so a header announcing more than
    :data:`MAX_CLIENT_FRAME` is refused as soon as it arrives: a half-sent frame holds at most
    that much (RFC-NOTES §10.7). ``max_targets`` refuses a larger ``agg`` (at most 4096)."""

    _from_server = False
    _recv = _AGG_RECV
    _send = _AGG_SEND

    def __init__(
        self, *, versions: tuple[int, ...] = AGGREGATION_VERSIONS, max_targets: int = MAX_TARGETS
    ) -> None:
        super().__init__()
        self.versions = versions
        self.max_targets = max_targets
        self._decoder = wire.FrameDecoder(max_size=MAX_CLIENT_FRAME)
        self._finished = 0

    @property
    def partial(self) -> bool:
        """Whether bytes of a frame not yet complete are buffered (a request is being sent)."""
        return self._decoder.buffered > 0

    def _tell_peer(self, error: Exception) -> None:
        # Tell the client why before giving up: a connection-level error frame (id 0).
        code = error.code if isinstance(error, RemoteProtocolError) else ErrorCode.PROTOCOL
        self._emit(Error(request_id=0, code=code, message=str(error)[:MAX_MESSAGE]))

    def _receive(self, event: Event) -> None:
        if isinstance(event, Credit | Cancel) and event.request_id == self._finished:
            return  # crossed our done on the wire
        if isinstance(event, AggregateRequest) and event.targets > self.max_targets:
            self._refuse(f"this aggregator takes at most {self.max_targets} targets", remote=True)
        if isinstance(event, OrchestrationHello) and self.state is Phase.AWAIT_HELLO:
            common = set(event.versions) & set(self.versions)
            if not common:
                self._fail("no common aggregation protocol version", ErrorCode.VERSION_MISMATCH)
            self._emit(AggregatorHello(version=max(common)))
        self._step(event, remote=True)
        self._events.append(event)

    def send(self, event: Event) -> None:
        self._check_usable()
        if isinstance(event, Error) and event.request_id == 0:
            self._emit(event)
            self.state = Phase.CLOSED
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
            if self.state is Phase.AWAIT_HELLO:
                self.state = Phase.IDLE
            self._events.append(event)
            return
        if isinstance(event, Error) and event.request_id == 0:
            self.state = Phase.CLOSED
            self._events.append(event)
            return
        if self.server is None:
            self._fail("a response before the hello")
        self._step(event, remote=True)
        self._events.append(event)

    def send(self, event: Event) -> None:
        self._check_usable()
        self._step(event, remote=False)
        self._emit(event)

    def next_request_id(self) -> int:
        return self.request_id + 1
