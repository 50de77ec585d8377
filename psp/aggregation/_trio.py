"""The trio adapter for VM-Orchestration (RFC-NOTES §10): the aggregator server and its client.

Server (:func:`serve_orchestration`): per client connection an :class:`AggregatorConnection`;
per aggregated request one :class:`Aggregation` fed by one task per target vault, each driving a
:class:`ClientConnection` over a pooled TCP connection with the signed envelope relayed as-is.
The request's task writes merged rows as the client grants credit; a vault is granted another
batch only when the merge wants it (:meth:`Aggregation.wants_more`), so a slow client slows the
vaults. Every vault runs under the per-vault deadline, the request under its own; a client that
goes away cancels every vault task, whose connections are closed (the vault sees EOF). Nothing is
written anywhere and nothing survives a request but idle pooled connections.

Client (:class:`OrchestrationClient`, :func:`query_via`): signs one invocation per vault
(:func:`plan_targets`), sends the request, grants credit as it consumes merged rows.
"""

from __future__ import annotations

import enum
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from ppn import IdentityKey

from .._capability import Capability
from .._connection import ClientConnection, ConnectionClosed, State
from .._errors import ErrorCode, PSPError, QueryError, RemoteProtocolError
from .._messages import Cancel, Credit, End, Error, Header, Request, RowBatch, ServerHello
from .._query import Query, decode_query
from ._connection import (
    AggregateRequest,
    AggregatorConnection,
    AggregatorHello,
    Done,
    MergedRows,
    OrchestrationClientConnection,
    Phase,
    Target,
    TargetReport,
)
from ._connection import ConnectionClosed as ClientGone
from ._merge import Aggregation, Mode, TargetStatus, VaultStatus, default_mode, status_for_code
from ._plan import AggregateCursor, VaultAddress, plan_targets

__all__ = [
    "ROW_BUDGET",
    "AggregateResult",
    "AggregationFailed",
    "OrchestrationClient",
    "VaultPool",
    "handle_client",
    "query_via",
    "serve_orchestration",
]

RECEIVE_SIZE = 65536
_EPOLL = hasattr(__import__("select"), "epoll")  # Linux: one task serves every plain TCP vault
ROW_BUDGET = 4 << 20  # bytes of vault rows a request queues before it stops granting credit
OUT_ROWS = 1024  # merged rows per mrows frame (and at most ~256 KB)
FINAL_WRITE = 5.0  # seconds to write the statuses after the deadline before giving up


class _Changed:
    """Wakes everyone waiting for the request's state to change (they re-check and wait)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        event = self._event
        await event.wait()
        if self._event is event:
            self._event = trio.Event()


# --- vault connections -----------------------------------------------------------------------


class _VaultLink:
    """One TCP connection to a vault, driven by the vault protocol's client core: a trio stream,
    or a raw non-blocking socket served by the epoll fan-out (``_trio_orchestration_epoll``),
    which becomes a stream when a task takes it over (:meth:`as_stream`)."""

    def __init__(
        self,
        stream: trio.abc.Stream | None,
        key: tuple[str, int],
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self._stream = stream
        self.sock = sock
        self.key = key
        self.conn = ClientConnection()
        self.idle_since = 0.0

    @property
    def raw(self) -> bool:
        return self._stream is None

    @property
    def stream(self) -> trio.abc.Stream:
        if self._stream is None:
            assert self.sock is not None
            self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(self.sock))
            self.sock = None
        return self._stream

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(bytes(data))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self._stream is not None:
            _close_now(self._stream)


def _close_now(stream: trio.abc.Stream) -> None:
    """Close without awaiting (a cancelled task must not block on it); the peer sees EOF."""
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
        return
    for half in (getattr(stream, "send_stream", None), getattr(stream, "receive_stream", None)):
        close = getattr(half, "close", None)
        if close is not None:
            close()


class VaultPool:
    """Idle vault connections by address, reused across requests (the only state kept).

    Bounded: at most ``per_address`` idle links per address and ``max_idle`` in all; a link idle
    for ``idle_timeout`` seconds is closed (swept at least every ``idle_timeout / 2``).
    """

    def __init__(
        self,
        *,
        per_address: int = 4,
        max_idle: int = 4096,
        idle_timeout: float = 30.0,
        connect: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream,
    ) -> None:
        self._connect = connect
        self.per_address = per_address
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[_VaultLink]] = {}
        self._count = 0
        self._swept = 0.0
        self.connects = 0

    @property
    def idle(self) -> int:
        return self._count

    @property
    def raw(self) -> bool:
        """Whether connections are plain TCP, so the epoll fan-out may serve them."""
        return self._connect is trio.open_tcp_stream

    def take_idle(self, host: str, port: int) -> _VaultLink | None:
        """A fresh-enough idle link to ``host:port``, if any (the caller connects otherwise)."""
        key = (host, port)
        now = trio.current_time()
        while links := self._idle.get(key):
            link = links.pop()
            self._count -= 1
            if not links:
                del self._idle[key]
            if now - link.idle_since < self.idle_timeout:
                return link
            link.close()
        return None

    def adopt(self, link: _VaultLink) -> None:
        """Count a connection the caller made itself."""
        self.connects += 1

    async def acquire(self, host: str, port: int) -> tuple[_VaultLink, bool]:
        """A link and whether it was pooled (a pooled one may turn out closed)."""
        key = (host, port)
        links = self._idle.get(key)
        now = trio.current_time()
        while links:
            link = links.pop()
            self._count -= 1
            if not links:
                del self._idle[key]
            if now - link.idle_since < self.idle_timeout:
                return link, True
            link.close()
            links = self._idle.get(key)
        stream = await self._connect(host, port)
        self.connects += 1
        return _VaultLink(stream, key), False

    def release(self, link: _VaultLink) -> None:
        now = trio.current_time()
        if now - self._swept > self.idle_timeout / 2:
            self._sweep(now)
        links = self._idle.setdefault(link.key, [])
        if (
            link.conn.state is not State.IDLE
            or len(links) >= self.per_address
            or self._count >= self.max_idle
        ):
            if not links:
                del self._idle[link.key]
            link.close()
            return
        link.idle_since = now
        links.append(link)
        self._count += 1

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in list(self._idle):
            keep = [x for x in self._idle[key] if now - x.idle_since < self.idle_timeout]
            for x in self._idle[key]:
                if now - x.idle_since >= self.idle_timeout:
                    x.close()
            self._count -= len(self._idle[key]) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        for links in self._idle.values():
            for link in links:
                link.close()
        self._idle.clear()
        self._count = 0


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(address)
    return host.strip("[]"), int(port)


# --- the aggregator --------------------------------------------------------------------------


@dataclass
class _Request:
    opened: AggregateRequest
    targets: list[Target] = field(default_factory=list)
    changed: _Changed = field(default_factory=_Changed)
    cancelled: bool = False


async def serve_orchestration(
    host: str | None,
    port: int,
    *,
    pool: VaultPool | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (9211 by default in the CLI; 0 picks one)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    pool = pool or VaultPool()
    task_status.started(listeners)
    try:
        await trio.serve_listeners(partial(handle_client, pool=pool), listeners)
    finally:
        pool.close()


async def handle_client(stream: trio.abc.Stream, *, pool: VaultPool) -> None:
    """Serve one client connection until it closes; its going away cancels its request. A bug
    while serving it ends that connection (reported on stderr), never the server."""
    try:
        await _handle_client(stream, pool=pool)
    except Exception as exc:
        print(f"ppn orchestration: dropped a client connection: {exc!r}", file=sys.stderr)


async def _handle_client(stream: trio.abc.Stream, *, pool: VaultPool) -> None:
    conn = AggregatorConnection()
    send_lock = trio.Lock()
    current: _Request | None = None

    async def flush() -> None:
        async with send_lock:
            data = conn.data_to_send()
            if data:
                await stream.send_all(data)

    async with stream, trio.open_nursery() as nursery:
        try:
            while True:
                try:
                    data = await stream.receive_some(RECEIVE_SIZE)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(bytes(data))
                while (event := conn.next_event()) is not None:
                    if isinstance(event, ClientGone):
                        nursery.cancel_scope.cancel()  # the client went away: stop everything
                        return
                    if isinstance(event, AggregateRequest):
                        current = _Request(opened=event)
                    elif isinstance(event, Target):
                        assert current is not None
                        current.targets.append(event)
                        if len(current.targets) == current.opened.targets:
                            nursery.start_soon(_run_request, conn, flush, current, pool)
                    elif isinstance(event, Credit) and current is not None:
                        current.changed.notify()
                    elif isinstance(event, Cancel) and current is not None:
                        current.cancelled = True
                        current.changed.notify()
                await flush()
        except RemoteProtocolError:
            # The core queued an error frame for the connection; say it and hang up.
            with trio.move_on_after(1):
                await flush()
            nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()


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
            _split_address(t.address)
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
    with trio.move_on_at(deadline) as overall:
        async with trio.open_nursery() as nursery:
            vaults = trio.CancelScope(deadline=vault_deadline)  # one scope for every vault
            nursery.start_soon(_run_targets, agg, request, pool, vaults)
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


async def _run_targets(
    agg: Aggregation, request: _Request, pool: VaultPool, scope: trio.CancelScope
) -> None:
    """Every target's exchange under the per-vault deadline; those still running when it
    passes time out — or are unreachable, if their connection never completed."""
    connecting: set[int] = set()  # targets whose TCP connection is not up yet
    with scope:
        if pool.raw and _EPOLL:
            from ._trio_epoll import fan_out

            await fan_out(agg, request.targets, request.changed, pool, connecting)
        else:
            async with trio.open_nursery() as nursery:
                for target in request.targets:
                    nursery.start_soon(_run_target, agg, target, request.changed, pool, connecting)
    if scope.cancelled_caught:
        for target in request.targets:  # (fail is a no-op for a target already settled)
            if target.index in connecting:
                agg.fail(
                    target.index,
                    VaultStatus.UNREACHABLE,
                    ErrorCode.UNAVAILABLE,
                    f"cannot connect to {target.address} within the per-vault deadline"[:400],
                )
            else:
                agg.fail(
                    target.index,
                    VaultStatus.TIMEOUT,
                    ErrorCode.DEADLINE,
                    "no answer within the per-vault deadline",
                )
    request.changed.notify()


async def _run_target(
    agg: Aggregation,
    target: Target,
    changed: _Changed,
    pool: VaultPool,
    connecting: set[int],
    taken_over: _Flow | None = None,
) -> None:
    """One target's exchange in a task (``taken_over``: continue one the epoll path began,
    whose vault waits for credit)."""
    index = target.index
    try:
        if taken_over is None:
            await _exchange(agg, target, changed, pool, connecting)
        elif await _serve_link(agg, taken_over, changed, pool, credit=True):
            await _exchange(agg, target, changed, pool, connecting, fresh=True)
    except RemoteProtocolError as exc:
        agg.fail(index, VaultStatus.ERROR, exc.code, f"the vault broke the protocol: {exc}"[:400])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        agg.fail(
            index,
            VaultStatus.UNREACHABLE,
            ErrorCode.UNAVAILABLE,
            "the vault closed the connection mid-stream",
        )
    except OSError as exc:
        agg.fail(
            index,
            VaultStatus.UNREACHABLE,
            ErrorCode.UNAVAILABLE,
            f"cannot connect to {target.address}: {exc.strerror or exc}"[:400],
        )
    changed.notify()


async def _exchange(
    agg: Aggregation,
    target: Target,
    changed: _Changed,
    pool: VaultPool,
    connecting: set[int],
    *,
    fresh: bool = False,
) -> None:
    index = target.index
    host, port = _split_address(target.address)
    for attempt in (1,) if fresh else (0, 1):
        connecting.add(index)
        link, reused = await pool.acquire(host, port)
        connecting.discard(index)
        try:
            retry = await _stream_one(agg, target, changed, link, pool, may_retry=reused)
        except BaseException:
            link.close()
            raise
        if not retry or attempt:
            return
    agg.fail(index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, "the vault closed at once")


class _Next(enum.Enum):
    CONTINUE = "continue"
    DONE = "done"  # the target is settled; the link is closed or back in the pool
    RETRY = "retry"  # a pooled link was dead before any answer: try a fresh one
    CREDIT = "credit"  # the vault waits for credit


@dataclass
class _Flow:
    """Where one target's exchange stands (shared by the task and the epoll paths)."""

    target: Target
    link: _VaultLink
    may_retry: bool
    answered: bool = False


def _on_event(agg: Aggregation, flow: _Flow, pool: VaultPool, event: object) -> _Next:
    """Apply one event from a vault to the merge; say what the exchange needs next."""
    index, link, target = flow.target.index, flow.link, flow.target
    if isinstance(event, ServerHello):
        if event.vault != target.vault:
            link.close()
            agg.fail(
                index,
                VaultStatus.ERROR,
                ErrorCode.WRONG_VAULT,
                f"another vault answers at {target.address}",
            )
            return _Next.DONE
        return _Next.CONTINUE
    if isinstance(event, ConnectionClosed):
        link.close()
        if flow.may_retry and not flow.answered:
            return _Next.RETRY
        agg.fail(
            index,
            VaultStatus.UNREACHABLE,
            ErrorCode.UNAVAILABLE,
            "the vault closed the connection mid-stream" if flow.answered else "the vault hung up",
        )
        return _Next.DONE
    flow.answered = True
    if isinstance(event, Error):
        agg.fail(index, status_for_code(event.code), event.code, event.message)
        if event.request_id == 0:
            link.close()
        else:
            pool.release(link)
        return _Next.DONE
    if isinstance(event, Header):
        agg.header(index, event.as_of)
    elif isinstance(event, RowBatch):
        agg.rows(index, event.rows)
        conn = link.conn
        if conn.credit == 0 and conn.state is State.STREAMING and not _has_event(conn):
            return _Next.CREDIT
    elif isinstance(event, End):
        agg.end(index, None if event.cursor is None else (event.cursor.as_of, event.cursor.offset))
        pool.release(link)
        return _Next.DONE
    return _Next.CONTINUE


async def _stream_one(
    agg: Aggregation,
    target: Target,
    changed: _Changed,
    link: _VaultLink,
    pool: VaultPool,
    *,
    may_retry: bool,
) -> bool:
    """Run the target's request on ``link``. True: a pooled link was dead, try a fresh one."""
    conn = link.conn
    rid = conn.next_request_id()
    conn.send(Request(request_id=rid, envelope=target.envelope, query=target.query, credit=1))
    try:
        await link.flush()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        link.close()
        if may_retry:
            return True
        agg.fail(
            target.index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, "the vault went away"
        )
        return False
    return await _serve_link(
        agg, _Flow(target=target, link=link, may_retry=may_retry), changed, pool
    )


async def _serve_link(
    agg: Aggregation, flow: _Flow, changed: _Changed, pool: VaultPool, *, credit: bool = False
) -> bool:
    """The rest of an exchange, in a task (``credit``: the vault is waiting for some)."""
    link = flow.link
    while True:
        if credit:
            while not agg.wants_more(flow.target.index, ROW_BUDGET):
                if agg.stopped:
                    link.close()
                    return False
                await changed.wait()
            link.conn.send(Credit(request_id=link.conn.request_id, batches=1))
            await link.flush()
        nxt = _on_event(agg, flow, pool, await link.next_event())
        changed.notify()
        if nxt is _Next.RETRY:
            return True
        if nxt is _Next.DONE:
            return False
        credit = nxt is _Next.CREDIT


def _has_event(conn: ClientConnection) -> bool:
    # Peek: an End already decoded behind this batch needs no more credit.
    return bool(conn._events)


# --- the client --------------------------------------------------------------------------------


class AggregationFailed(PSPError):
    """A strict request failed: some vault was not ok. ``result`` holds the statuses."""

    def __init__(self, result: AggregateResult) -> None:
        bad = [
            s for s in result.statuses if s.status.failed and s.status is not VaultStatus.CANCELLED
        ]
        super().__init__(f"{len(bad)} of {len(result.statuses)} vaults failed")
        self.result = result


@dataclass(frozen=True, kw_only=True)
class AggregateResult:
    vaults: list[VaultAddress]
    rows: list[tuple[int | None, bytes]]
    statuses: list[TargetStatus]
    done: Done
    mode: Mode

    @property
    def complete(self) -> bool:
        return self.done.complete

    @property
    def cursor(self) -> AggregateCursor | None:
        """Where to resume the vaults that have more (or failed retryably); None when none,
        and None for a failed strict request (its rows were withheld: run it again)."""
        if self.mode is Mode.STRICT and self.done.failed:
            return None
        positions = tuple(
            (self.vaults[s.index].vault, s.cursor[0], s.cursor[1])
            for s in self.statuses
            if s.cursor is not None
        )
        return AggregateCursor(positions=positions) if positions else None


class OrchestrationClient:
    """One connection to an aggregator. Use :meth:`connect`; close with :meth:`aclose`."""

    def __init__(self, stream: trio.abc.Stream, *, window: int = 8) -> None:
        self._stream = stream
        self.conn = OrchestrationClientConnection()
        self.window = window

    @classmethod
    async def connect(cls, host: str, port: int, *, window: int = 8) -> OrchestrationClient:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            raise RemoteProtocolError(
                f"cannot connect to the aggregator at {host}:{port}", ErrorCode.UNAVAILABLE
            ) from None
        client = cls(stream, window=window)
        await client._flush()
        return client

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> OrchestrationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self._stream.send_all(data)

    async def _next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(bytes(data))

    async def events(
        self,
        targets: Sequence[Target],
        *,
        mode: Mode,
        deadline: float,
        vault_deadline: float | None = None,
    ) -> AsyncIterator[MergedRows | TargetReport | Done]:
        """Send one aggregated request (``targets`` from :func:`plan_targets`, numbered with
        :meth:`next_request_id`) and yield its events up to :class:`Done`. A refusal raises
        :class:`RemoteProtocolError` with the aggregator's code."""
        deadline_ms = max(1, int(deadline * 1000))
        if vault_deadline is None:
            vault_deadline = deadline - min(max(deadline / 10, 0.05), 1.0)
        vault_ms = max(1, min(int(vault_deadline * 1000), deadline_ms))
        rid = targets[0].request_id
        self.conn.send(
            AggregateRequest(
                request_id=rid,
                targets=len(targets),
                mode=mode,
                deadline_ms=deadline_ms,
                vault_deadline_ms=vault_ms,
                credit=self.window,
            )
        )
        for t in targets:
            self.conn.send(t)
        await self._flush()
        while True:
            event = await self._next()
            if isinstance(event, AggregatorHello):
                continue
            if isinstance(event, ClientGone):
                raise RemoteProtocolError(
                    "the aggregator closed the connection", ErrorCode.UNAVAILABLE
                )
            if isinstance(event, Error):
                raise RemoteProtocolError(f"{event.code.name}: {event.message}", event.code)
            if (
                isinstance(event, MergedRows)
                and self.conn.credit <= self.window // 2
                and self.conn.phase is not Phase.IDLE
            ):
                self.conn.send(Credit(request_id=rid, batches=self.window - self.conn.credit))
                await self._flush()
            assert isinstance(event, MergedRows | TargetReport | Done)
            yield event
            if isinstance(event, Done):
                return

    def next_request_id(self) -> int:
        return self.conn.next_request_id()

    async def query(
        self,
        key: IdentityKey,
        capabilities: Sequence[Capability],
        vaults: Sequence[VaultAddress],
        query: Query,
        *,
        mode: Mode | None = None,
        deadline: float = 10.0,
        vault_deadline: float | None = None,
        cursor: AggregateCursor | None = None,
        clock: Callable[[], int] = lambda: int(time.time()),
        rng: Callable[[int], bytes] = secrets.token_bytes,
    ) -> AggregateResult:
        """Sign, send, collect. Strict mode (the default for count and aggregate queries)
        raises :class:`AggregationFailed` when any vault was not ok."""
        mode = mode or default_mode(query)
        chosen, targets = plan_targets(
            key,
            capabilities,
            vaults,
            query,
            request_id=self.next_request_id(),
            now=clock(),
            rng=rng,
            cursor=cursor,
        )
        if not targets:
            raise ValueError("no vault to query (the cursor lists none of them)")
        rows: list[tuple[int | None, bytes]] = []
        reports: list[TargetStatus] = []
        done: Done | None = None
        async for event in self.events(
            targets, mode=mode, deadline=deadline, vault_deadline=vault_deadline
        ):
            if isinstance(event, MergedRows):
                rows.extend(event.rows)
            elif isinstance(event, TargetReport):
                reports.append(
                    TargetStatus(
                        index=event.index,
                        status=event.status,
                        rows=event.rows,
                        as_of=event.as_of,
                        code=event.code,
                        message=event.message,
                        cursor=event.cursor,
                    )
                )
            else:
                done = event
        assert done is not None
        result = AggregateResult(vaults=chosen, rows=rows, statuses=reports, done=done, mode=mode)
        if mode is Mode.STRICT and done.failed:
            raise AggregationFailed(replace(result, rows=[]))
        return result


async def query_via(
    host: str,
    port: int,
    key: IdentityKey,
    capabilities: Sequence[Capability],
    vaults: Sequence[VaultAddress],
    query: Query,
    **kw: object,
) -> AggregateResult:
    """Connect to the aggregator at ``host:port``, run one aggregated query, close."""
    async with await OrchestrationClient.connect(host, port) as client:
        return await client.query(key, capabilities, vaults, query, **kw)  # type: ignore[arg-type]
