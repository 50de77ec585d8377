"""The trio aggregator server for VM-Orchestration (RFC-NOTES §10).

Per client connection an :class:`AggregatorConnection`; per aggregated request one
:class:`Aggregation` fed by the request's vault exchanges (``_trio_exchange``), each driving a
:class:`ClientConnection` over a pooled TCP connection with the signed envelope relayed as-is.
The request's task writes merged rows as the client grants credit; a vault is granted another
batch only when the merge wants it (:meth:`Aggregation.wants_more`), so a slow client slows the
vaults. Every vault runs under the per-vault deadline, the request under its own; a client that
goes away cancels every vault exchange, whose connections are closed (the vault sees EOF).
Nothing is written anywhere and nothing survives a request but idle pooled connections.

How the vault exchanges are run is the server's ``fanout`` parameter: ``"epoll"`` (the default
on Linux, ``_trio_epoll``: one task serves every plain-TCP vault of a request) or ``"tasks"``
(a trio task per vault; used wherever epoll cannot be).
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal, Protocol

import trio

from ppn._trio_listener import Connection, ListenerGuard, ListenerLimits

from .._errors import ErrorCode, QueryError, RemoteProtocolError
from .._messages import Cancel, Credit, Error
from .._query import Query, decode_query
from ._connection import (
    MAX_TARGETS,
    AggregateRequest,
    AggregatorConnection,
    Done,
    MergedRows,
    Phase,
    Target,
    TargetReport,
)
from ._connection import ConnectionClosed as ClientGone
from ._merge import Aggregation, VaultStatus
from ._trio_exchange import ROW_BUDGET, Changed, FanOut, FanOutStrategy, fan_out_tasks, no_vault
from ._trio_pool import RECEIVE_SIZE, VaultPool, split_address

__all__ = [
    "EPOLL_AVAILABLE",
    "OUT_ROWS",
    "ROW_BUDGET",
    "AllowList",
    "FanOutObserver",
    "Fanout",
    "RequestBudget",
    "RequestLimits",
    "fan_out_strategy",
    "handle_client",
    "serve_orchestration",
]

log = logging.getLogger("psp.aggregation")

Fanout = Literal["epoll", "tasks"]
"""How a request's vault exchanges run: one epoll-driven task for them all, or a task each."""

EPOLL_AVAILABLE = hasattr(select, "epoll")
OUT_ROWS = 1024  # merged rows per mrows frame (and at most ~256 KB)
FINAL_WRITE = 5.0  # seconds to write the statuses after the deadline before giving up


def fan_out_strategy(fanout: Fanout, pool: VaultPool) -> FanOutStrategy:
    """The strategy for ``fanout``. Epoll needs Linux and a pool of plain TCP connections (it
    opens raw sockets itself); without them every request runs on tasks."""
    if fanout not in ("epoll", "tasks"):
        raise ValueError(f"fanout is 'epoll' or 'tasks', not {fanout!r}")
    if fanout == "epoll" and EPOLL_AVAILABLE and pool.plain_tcp:
        from ._trio_epoll import fan_out

        return fan_out
    return fan_out_tasks


TARGET_CHARGE = 2048  # bytes charged per target on top of its frame: its exchange's state


@dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """What a client may make the aggregator hold (RFC-NOTES §10.7). A request is *charged*
    its ``tgt`` frames' bytes plus :data:`TARGET_CHARGE` per target, from its first target until
    it ends: at most ``max_request`` per request and ``budget`` across the server (a request
    beyond either is refused and its connection closed). A request must arrive whole within
    ``request_deadline`` seconds of its first byte."""

    max_targets: int = MAX_TARGETS
    max_request: int = 16 << 20
    budget: int = 64 << 20
    request_deadline: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.max_targets <= MAX_TARGETS:
            raise ValueError(f"max_targets must be between 1 and {MAX_TARGETS}")
        for name in ("max_request", "budget", "request_deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


class RequestBudget:
    """Bytes charged to the requests in progress, shared by every connection of a server; one
    source address may hold at most half of it, so a single host cannot starve the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_source = max(1, limit // 2)
        self.used = 0
        self.by_source: dict[str, int] = {}

    def take(self, n: int, source: str = "") -> bool:
        mine = self.by_source.get(source, 0)
        if self.used + n > self.limit or mine + n > self.per_source:
            return False
        self.used += n
        self.by_source[source] = mine + n
        return True

    def give(self, n: int, source: str = "") -> None:
        if not n:
            return
        self.used -= n
        left = self.by_source[source] - n
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]


@dataclass(frozen=True)
class AllowList:
    """The vaults this aggregator may reach, as ``(vault id, host, port)`` (RFC-NOTES §10.7):
    a target is served only if its vault id and address are one entry. Hosts compare as
    written, lowercased (``[v6]`` without brackets)."""

    entries: frozenset[tuple[bytes, str, int]]

    @classmethod
    def of(cls, entries: Iterable[tuple[bytes, str, int]]) -> AllowList:
        return cls(frozenset((v, h.strip("[]").lower(), p) for v, h, p in entries))

    def allows(self, target: Target) -> bool:
        host, port = split_address(target.address)
        return (target.vault, host.lower(), port) in self.entries


class FanOutObserver(Protocol):
    """Told of every request the aggregator fanned out (the metrics of ``ppn orchestration
    serve --metrics``, RFC-NOTES §3.1): how many targets it named, how long it took from its
    last target to its ``done``, and each vault's status."""

    def finished(self, targets: int, seconds: float, statuses: Iterable[VaultStatus]) -> None: ...


@dataclass
class _Request:
    opened: AggregateRequest
    budget: RequestBudget
    source: str
    targets: list[Target] = field(default_factory=list)
    changed: Changed = field(default_factory=Changed)
    cancelled: bool = False
    charged: int = 0

    def release(self) -> None:
        """Give the request's charge back (once; idempotent)."""
        self.budget.give(self.charged, self.source)
        self.charged = 0


async def serve_orchestration(
    host: str | None,
    port: int,
    *,
    pool: VaultPool | None = None,
    fanout: Fanout = "epoll",
    row_budget: int = ROW_BUDGET,
    allowed: AllowList | None = None,
    limits: RequestLimits | None = None,
    listener: ListenerLimits | None = None,
    guard: ListenerGuard | None = None,
    observer: FanOutObserver | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (the CLI's default is ``ppn.ports.AGGREGATOR_PORT``; 0 picks one).
    ``row_budget``: bytes of vault rows a request queues before it stops granting credit.
    ``allowed``: the vaults targets may name; None serves any target (the CLI asks for one of
    ``--vaults`` and ``--any-target``). Connections are held within ``listener`` (the listener
    guard, RFC-NOTES §9.8): a connection is admitted by its first complete request."""
    pool = pool or VaultPool()
    fan_out_strategy(fanout, pool)  # a bad choice fails here, not per connection
    guard = guard or ListenerGuard(listener)
    limits = limits or RequestLimits()
    listeners = await trio.open_tcp_listeners(port, host=host)
    handler = partial(
        handle_client,
        pool=pool,
        fanout=fanout,
        row_budget=row_budget,
        allowed=allowed,
        limits=limits,
        budget=RequestBudget(limits.budget),
        observer=observer,
    )
    task_status.started(listeners)
    try:
        await guard.serve(handler, listeners)
    finally:
        pool.close()


async def handle_client(
    stream: trio.abc.Stream,
    connection: Connection | None = None,
    *,
    pool: VaultPool,
    fanout: Fanout = "epoll",
    row_budget: int = ROW_BUDGET,
    allowed: AllowList | None = None,
    limits: RequestLimits | None = None,
    budget: RequestBudget | None = None,
    observer: FanOutObserver | None = None,
) -> None:
    """Serve one client connection until it closes; its going away cancels its request. A bug
    while serving it ends that connection (reported on stderr), never the server.
    ``connection``: the listener guard's view of it (its deadlines follow the requests)."""
    strategy = fan_out_strategy(fanout, pool)
    limits = limits or RequestLimits()
    client = _Client(
        stream,
        connection,
        pool=pool,
        strategy=strategy,
        row_budget=row_budget,
        allowed=allowed,
        limits=limits,
        budget=budget or RequestBudget(limits.budget),
        observer=observer,
    )
    try:
        await client.run()
    except Exception as exc:
        log.warning("dropped a client connection: %r", exc, extra={"event": "client_dropped"})


class _Client:
    """One client connection: reads requests, charges them, runs each in a task."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection | None,
        *,
        pool: VaultPool,
        strategy: FanOutStrategy,
        row_budget: int,
        allowed: AllowList | None,
        limits: RequestLimits,
        budget: RequestBudget,
        observer: FanOutObserver | None = None,
    ) -> None:
        self.stream = stream
        self.observer = observer
        self.guarded = connection
        self.pool = pool
        self.strategy = strategy
        self.row_budget = row_budget
        self.allowed = allowed
        self.limits = limits
        self.budget = budget
        self.conn = AggregatorConnection(max_targets=limits.max_targets)
        self.send_lock = trio.Lock()
        self.current: _Request | None = None
        self.request_began: float | None = None  # the first byte of a request still arriving

    async def flush(self) -> None:
        async with self.send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def _refuse(self, code: ErrorCode, message: str) -> None:
        """Close the connection with ``err`` id 0 (the client learns why)."""
        self.conn.send(Error(request_id=0, code=code, message=message))
        with trio.move_on_after(1):
            await self.flush()

    async def run(self) -> None:
        conn, stream = self.conn, self.stream
        try:
            async with stream, trio.open_nursery() as nursery:
                try:
                    while True:
                        began = self.request_began
                        with trio.move_on_at(
                            math.inf if began is None else began + self.limits.request_deadline
                        ):
                            try:
                                data = await stream.receive_some(RECEIVE_SIZE)
                            except trio.BrokenResourceError:
                                data = b""
                        if began is not None and trio.current_time() >= (
                            began + self.limits.request_deadline
                        ):
                            await self._refuse(
                                ErrorCode.DEADLINE,
                                "a request must arrive whole within "
                                f"{self.limits.request_deadline:g} s of its first byte",
                            )
                            nursery.cancel_scope.cancel()
                            return
                        conn.receive_data(bytes(data))
                        while (event := conn.next_event()) is not None:
                            if isinstance(event, ClientGone):
                                nursery.cancel_scope.cancel()  # the client went away: stop all
                                return
                            refusal = self._on_event(event, nursery)
                            if refusal is not None:
                                await self._refuse(*refusal)
                                nursery.cancel_scope.cancel()
                                return
                        # The request deadline runs from the first byte of a request to its
                        # last target (a frame cut short counts as begun).
                        arriving = conn.phase is Phase.TARGETS or (
                            conn.partial and conn.phase in (Phase.AWAIT_HELLO, Phase.IDLE)
                        )
                        if not arriving:
                            self.request_began = None
                        elif self.request_began is None:
                            self.request_began = trio.current_time()
                        await self.flush()
                except RemoteProtocolError:
                    # The core queued an error frame for the connection; say it and hang up.
                    with trio.move_on_after(1):
                        await self.flush()
                    nursery.cancel_scope.cancel()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()
        finally:
            if self.current is not None:
                self.current.release()

    def _on_event(self, event: object, nursery: trio.Nursery) -> tuple[ErrorCode, str] | None:
        """Apply one client event; a refusal (code, message) closes the connection."""
        current = self.current
        if isinstance(event, AggregateRequest):
            if current is not None:
                current.release()  # (the previous request has ended: the core allows no other)
            source = self.guarded.source if self.guarded is not None else ""
            self.current = _Request(opened=event, budget=self.budget, source=source)
        elif isinstance(event, Target):
            assert current is not None
            cost = len(event.envelope) + len(event.query) + len(event.address) + TARGET_CHARGE
            if current.charged + cost > self.limits.max_request:
                return (
                    ErrorCode.PROTOCOL,
                    f"a request is charged at most {self.limits.max_request} bytes",
                )
            if not self.budget.take(cost, current.source):
                return ErrorCode.UNAVAILABLE, "the aggregator is busy: try again later"
            current.charged += cost
            current.targets.append(event)
            if len(current.targets) == current.opened.targets:
                self._running(True)
                nursery.start_soon(self._serve_request, current)
        elif isinstance(event, Credit) and current is not None:
            current.changed.notify()
        elif isinstance(event, Cancel) and current is not None:
            current.cancelled = True
            current.changed.notify()
        return None

    def _running(self, running: bool) -> None:
        """A running request is bounded by its own deadline; between requests the idle
        timeout applies. The first complete request admits the connection."""
        guarded = self.guarded
        if guarded is None:
            return
        if running:
            guarded.admit()
            guarded.scope.deadline = math.inf
        else:
            guarded.touch()

    async def _serve_request(self, request: _Request) -> None:
        try:
            await _run_request(
                self.conn,
                self.flush,
                request,
                self.pool,
                self.strategy,
                self.row_budget,
                self.allowed,
                self.observer,
            )
        finally:
            request.release()
            self._running(False)


def _validate(targets: list[Target]) -> tuple[Query, list[int]] | Error:
    """The shared query (as_of and offset aside) and each target's offset, or a refusal."""
    rid = targets[0].request_id
    shape: Query | None = None
    offsets: list[int] = []
    seen: set[bytes] = set()
    decoded: dict[bytes, Query] = {}  # most targets carry the very same query bytes
    for t in targets:
        try:
            q = decoded.get(t.query) or decode_query(t.query)
            decoded[t.query] = q
            split_address(t.address)
        except QueryError as exc:
            return Error(request_id=rid, code=exc.code, message=f"target {t.index}: {exc.detail}")
        except ValueError:
            return Error(
                request_id=rid, code=ErrorCode.PROTOCOL, message=f"target {t.index}: bad address"
            )
        if t.vault in seen:
            return Error(
                request_id=rid, code=ErrorCode.QUERY_INVALID, message="a vault is listed twice"
            )
        seen.add(t.vault)
        common = replace(q, as_of=0, offset=0) if q.as_of or q.offset else q
        if shape is None:
            shape = common
        elif common != shape:
            return Error(
                request_id=rid,
                code=ErrorCode.QUERY_INVALID,
                message="every target must carry the same query (as_of and offset aside)",
            )
        if q.order is not None and q.select and q.order[0] not in q.select:
            return Error(
                request_id=rid,
                code=ErrorCode.QUERY_INVALID,
                message="an ordered query through an aggregator must select its order field",
            )
        offsets.append(q.offset)
    assert shape is not None
    return shape, offsets


async def _run_request(
    conn: AggregatorConnection,
    flush: Callable[[], Awaitable[None]],
    request: _Request,
    pool: VaultPool,
    strategy: FanOutStrategy,
    row_budget: int,
    allowed: AllowList | None = None,
    observer: FanOutObserver | None = None,
) -> None:
    opened = request.opened
    rid = opened.request_id
    start = trio.current_time()
    deadline = start + opened.deadline_ms / 1000
    vault_deadline = start + min(opened.vault_deadline_ms, opened.deadline_ms) / 1000
    checked = _validate(request.targets)
    if isinstance(checked, Error):
        conn.send(checked)
        await flush()
        return
    query, offsets = checked
    agg = Aggregation(query, offsets, mode=opened.mode)
    targets = request.targets
    if allowed is not None:
        targets = [t for t in request.targets if allowed.allows(t)]
        for t in request.targets:
            if not allowed.allows(t):
                agg.fail(
                    t.index,
                    VaultStatus.DENIED,
                    ErrorCode.NOT_PERMITTED,
                    f"this aggregator does not serve that vault at {t.address}"[:400],
                )
        if agg.stopped:
            targets = []  # a strict request failed already: contact no vault
    job = FanOut(
        agg=agg,
        targets=targets,
        pool=pool,
        changed=request.changed,
        row_budget=row_budget,
    )
    with trio.move_on_at(deadline) as overall:
        async with trio.open_nursery() as nursery:
            vaults = trio.CancelScope(deadline=vault_deadline)  # one scope for every vault
            nursery.start_soon(_run_targets, job, strategy, vaults)
            while True:
                while conn.credit > 0 and not request.cancelled:
                    if conn.phase is not Phase.RUNNING:
                        return  # the client went away; handle_client cancels everything
                    out = agg.take(OUT_ROWS)
                    if not out:
                        break
                    request.changed.notify()  # room in the budget: vaults waiting may get credit
                    conn.send(MergedRows(request_id=rid, rows=tuple(out)))
                    await flush()
                if agg.finished or request.cancelled:
                    break
                await request.changed.wait()
            nursery.cancel_scope.cancel()
    if overall.cancelled_caught:
        agg.abandon(VaultStatus.TIMEOUT, ErrorCode.DEADLINE, "the request deadline passed")
    elif request.cancelled:
        agg.abandon(VaultStatus.CANCELLED, ErrorCode.CANCELLED, "the client cancelled")
    if conn.phase is not Phase.RUNNING:
        return
    statuses = agg.statuses()
    if observer is not None:
        observer.finished(
            len(request.targets), trio.current_time() - start, (s.status for s in statuses)
        )
    for status in statuses:
        conn.send(
            TargetReport(
                request_id=rid,
                index=status.index,
                status=status.status,
                rows=status.rows,
                as_of=status.as_of,
                code=status.code,
                message=status.message,
                cursor=status.cursor,
            )
        )
    conn.send(
        Done(
            request_id=rid,
            complete=all(s.status is VaultStatus.OK for s in statuses),
            failed=sum(s.status.failed for s in statuses),
            count=agg.emitted,
        )
    )
    with trio.move_on_after(FINAL_WRITE):
        await flush()


async def _run_targets(job: FanOut, strategy: FanOutStrategy, scope: trio.CancelScope) -> None:
    """Every target's exchange under the per-vault deadline; those still running when it
    passes time out — or are unreachable, if their connection never completed."""
    with scope:
        await strategy(job)
    if scope.cancelled_caught:
        for target in job.targets:  # (fail is a no-op for a target already settled)
            if target.index in job.connecting:
                job.agg.fail(
                    target.index,
                    VaultStatus.UNREACHABLE,
                    ErrorCode.UNAVAILABLE,
                    no_vault(target.address),
                )
            else:
                job.agg.fail(
                    target.index,
                    VaultStatus.TIMEOUT,
                    ErrorCode.DEADLINE,
                    "no answer within the per-vault deadline",
                )
    job.changed.notify()
