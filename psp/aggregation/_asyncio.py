"""The asyncio aggregator server for VM-Orchestration (RFC-NOTES §10, §12; issue 20).

``psp.aggregation._trio_server`` on asyncio, over the same cores: per client connection an
:class:`AggregatorConnection`, per request one :class:`Aggregation`, per vault a
:class:`ClientConnection` over a pooled asyncio connection, each vault's events applied by the
very same :meth:`FanOut.on_event` the trio paths use (statuses and their messages cannot drift).
The request limits, the budget, the allow-list and the target validation are the trio server's
objects (plain Python; they live in its module until they move to a core of their own).
Connections are held within the listener limits shared with trio (``ppn._listener_limits``).
Vault exchanges run one asyncio task each (trio's epoll strategy has no asyncio counterpart:
asyncio's own selector already serves every socket from one loop).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import cast

from ppn._asyncio_listener import Connection, ListenerGuard, ListenerLimits, open_tcp_listeners

from .._connection import ClientConnection, State
from .._errors import ErrorCode, RemoteProtocolError
from .._messages import Cancel, Credit, Error, Request
from ._connection import (
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
from ._trio_exchange import ROW_BUDGET, Changed, FanOut, Flow, Next, no_vault
from ._trio_pool import RECEIVE_SIZE, VaultLink, VaultPool, split_address
from ._trio_server import (
    FINAL_WRITE,
    OUT_ROWS,
    TARGET_CHARGE,
    AllowList,
    RequestBudget,
    RequestLimits,
    _validate,
)

__all__ = [
    "AggregatorServer",
    "AsyncioAggregatorServer",
    "AsyncioVaultPool",
    "serve_orchestration",
    "serve_orchestration_asyncio",
]


class _Changed:
    """Wakes everyone waiting for the request's state to change (they re-check and wait)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        event = self._event
        await event.wait()
        if self._event is event:
            self._event = asyncio.Event()


class _Link:
    """One vault connection driven by the client core (what ``FanOut.on_event`` uses of a
    link: ``conn``, ``key``, ``close()``)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple[str, int]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.key = key
        self.conn = ClientConnection()
        self.idle_since = 0.0

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self.reader.read(RECEIVE_SIZE)
            except OSError:
                data = b""
            self.conn.receive_data(data)

    def close(self) -> None:
        self.writer.transport.abort()


class AsyncioVaultPool:
    """Idle vault connections by address, reused across requests (bounded like the trio
    ``VaultPool``: ``per_address`` each, ``idle_timeout`` seconds)."""

    def __init__(self, *, per_address: int = 4, idle_timeout: float = 30.0) -> None:
        self.per_address = per_address
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[_Link]] = {}
        self.connects = 0

    async def acquire(self, host: str, port: int, vault: bytes) -> tuple[_Link, bool]:
        now = asyncio.get_running_loop().time()
        links = self._idle.get((host, port), [])
        while links:
            link = links.pop()
            hello = link.conn.server
            if now - link.idle_since < self.idle_timeout and (
                hello is None or hello.vault == vault
            ):
                return link, True
            link.close()
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1
        return _Link(reader, writer, (host, port)), False

    def release(self, link: _Link) -> None:
        links = self._idle.setdefault(link.key, [])
        if link.conn.state is not State.IDLE or len(links) >= self.per_address:
            link.close()
            return
        link.idle_since = asyncio.get_running_loop().time()
        links.append(link)

    def close(self) -> None:
        for links in self._idle.values():
            for link in links:
                link.close()
        self._idle.clear()


class AggregatorServer:
    """An aggregator listening under asyncio: ``port``, ``guard``, :meth:`close`."""

    def __init__(self, listeners: list[socket.socket], guard: ListenerGuard, handler: object):
        self.guard = guard
        self.port: int = listeners[0].getsockname()[1]
        self._task = asyncio.ensure_future(guard.serve(handler, listeners))  # type: ignore[arg-type]
        self.pool: AsyncioVaultPool | None = None

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if self.pool is not None:
            self.pool.close()

    async def __aenter__(self) -> AggregatorServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_orchestration(
    host: str | None,
    port: int,
    *,
    pool: AsyncioVaultPool | None = None,
    row_budget: int = ROW_BUDGET,
    allowed: AllowList | None = None,
    limits: RequestLimits | None = None,
    listener: ListenerLimits | None = None,
) -> AggregatorServer:
    """Listen on ``host:port`` (0 picks one: ``server.port``) and serve in the background until
    :meth:`AggregatorServer.close`; the parameters mean what they mean for the trio server."""
    pool = pool or AsyncioVaultPool()
    limits = limits or RequestLimits()
    guard = ListenerGuard(listener)
    budget = RequestBudget(limits.budget)

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: Connection
    ) -> None:
        client = _Client(reader, writer, connection, pool, row_budget, allowed, limits, budget)
        try:
            await client.run()
        except Exception as exc:
            print(f"ppn orchestration: dropped a client connection: {exc!r}", file=sys.stderr)

    server = AggregatorServer(open_tcp_listeners(host, port), guard, handler)
    server.pool = pool
    return server


class _Request:
    def __init__(self, opened: AggregateRequest, budget: RequestBudget, source: str) -> None:
        self.opened = opened
        self.budget = budget
        self.source = source
        self.targets: list[Target] = []
        self.changed = _Changed()
        self.cancelled = False
        self.charged = 0

    def release(self) -> None:
        self.budget.give(self.charged, self.source)
        self.charged = 0


class _Client:
    """One client connection: reads requests, charges them, runs each in a task."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: Connection | None,
        pool: AsyncioVaultPool,
        row_budget: int,
        allowed: AllowList | None,
        limits: RequestLimits,
        budget: RequestBudget,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.guarded = connection
        self.pool = pool
        self.row_budget = row_budget
        self.allowed = allowed
        self.limits = limits
        self.budget = budget
        self.conn = AggregatorConnection(max_targets=limits.max_targets)
        self.current: _Request | None = None
        self.running: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _refuse(self, code: ErrorCode, message: str) -> None:
        self.conn.send(Error(request_id=0, code=code, message=message))
        try:
            await asyncio.wait_for(self.flush(), 1)
        except (TimeoutError, OSError):
            pass

    async def run(self) -> None:
        conn = self.conn
        began: float | None = None  # the first byte of a request still arriving
        try:
            while True:
                timeout = None if began is None else began + self.limits.request_deadline
                try:
                    async with asyncio.timeout_at(timeout):
                        data = await self.reader.read(RECEIVE_SIZE)
                except TimeoutError:
                    await self._refuse(
                        ErrorCode.DEADLINE,
                        "a request must arrive whole within "
                        f"{self.limits.request_deadline:g} s of its first byte",
                    )
                    return
                except OSError:
                    data = b""
                conn.receive_data(data)
                while (event := conn.next_event()) is not None:
                    if isinstance(event, ClientGone):
                        return
                    refusal = self._on_event(event)
                    if refusal is not None:
                        await self._refuse(*refusal)
                        return
                arriving = conn.phase is Phase.TARGETS or (
                    conn.partial and conn.phase in (Phase.AWAIT_HELLO, Phase.IDLE)
                )
                if not arriving:
                    began = None
                elif began is None:
                    began = self.loop.time()
                await self.flush()
        except RemoteProtocolError:
            try:  # the core queued an error frame for the connection; say it and hang up
                await asyncio.wait_for(self.flush(), 1)
            except (TimeoutError, OSError):
                pass
        except OSError:
            pass
        finally:
            if self.running is not None:
                self.running.cancel()
                await asyncio.gather(self.running, return_exceptions=True)
            if self.current is not None:
                self.current.release()

    def _on_event(self, event: object) -> tuple[ErrorCode, str] | None:
        current = self.current
        if isinstance(event, AggregateRequest):
            if current is not None:
                current.release()
            source = self.guarded.source if self.guarded is not None else ""
            self.current = _Request(event, self.budget, source)
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
                if self.guarded is not None:
                    self.guarded.admit()
                    self.guarded.hold()  # the request's own deadline bounds it
                self.running = asyncio.ensure_future(self._serve_request(current))
        elif isinstance(event, Credit) and current is not None:
            current.changed.notify()
        elif isinstance(event, Cancel) and current is not None:
            current.cancelled = True
            current.changed.notify()
        return None

    async def _serve_request(self, request: _Request) -> None:
        try:
            await _run_request(self, request)
        except OSError:
            pass
        finally:
            request.release()
            if self.guarded is not None:
                self.guarded.touch()


async def _run_request(client: _Client, request: _Request) -> None:
    conn, flush = client.conn, client.flush
    opened = request.opened
    rid = opened.request_id
    loop = asyncio.get_running_loop()
    start = loop.time()
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
    if client.allowed is not None:
        allowed = client.allowed
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
            targets = []
    # The trio FanOut's event rules, over asyncio links: on_event uses only the link's conn
    # and close(), the pool's release() and the merge; the wake-ups are this module's.
    job = FanOut(
        agg=agg,
        targets=targets,
        pool=cast(VaultPool, client.pool),
        changed=cast(Changed, request.changed),
        row_budget=client.row_budget,
    )
    vaults = asyncio.ensure_future(_run_targets(job, request.changed, vault_deadline))
    timed_out = False
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                while conn.credit > 0 and not request.cancelled:
                    if conn.phase is not Phase.RUNNING:
                        return  # the client went away
                    out = agg.take(OUT_ROWS)
                    if not out:
                        break
                    request.changed.notify()
                    conn.send(MergedRows(request_id=rid, rows=tuple(out)))
                    await flush()
                if agg.finished or request.cancelled:
                    break
                await request.changed.wait()
    except TimeoutError:
        timed_out = True
    finally:
        vaults.cancel()
        await asyncio.gather(vaults, return_exceptions=True)
    if timed_out:
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
    try:
        await asyncio.wait_for(flush(), FINAL_WRITE)
    except TimeoutError:
        pass


async def _run_targets(job: FanOut, changed: _Changed, vault_deadline: float) -> None:
    """Every target's exchange, a task each, under the per-vault deadline; those still running
    when it passes time out — or are unreachable, if their vault never greeted them."""
    tasks = [asyncio.ensure_future(_run_target(job, changed, t)) for t in job.targets]
    try:
        async with asyncio.timeout_at(vault_deadline):
            await asyncio.gather(*tasks)
    except TimeoutError:
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
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    changed.notify()


async def _run_target(job: FanOut, changed: _Changed, target: Target) -> None:
    index, agg = target.index, job.agg
    try:
        await _exchange(job, changed, target)
    except RemoteProtocolError as exc:
        job.broke_protocol(target, exc)
    except OSError:
        # (not the OS's reason: refused, unroutable and timed out must read alike)
        agg.fail(
            index,
            VaultStatus.UNREACHABLE,
            ErrorCode.UNAVAILABLE,
            no_vault(target.address)
            if index in job.connecting
            else "the vault closed the connection mid-stream",
        )
    changed.notify()


async def _exchange(job: FanOut, changed: _Changed, target: Target) -> None:
    index = target.index
    host, port = split_address(target.address)
    pool = cast(AsyncioVaultPool, job.pool)
    for attempt in (0, 1):
        job.connecting.add(index)
        link, reused = await pool.acquire(host, port, target.vault)
        if reused:
            job.connecting.discard(index)  # its hello was checked (RFC-NOTES §10.1)
        try:
            retry = await _stream_one(job, changed, target, link, may_retry=reused)
        except BaseException:
            link.close()
            raise
        if not retry or attempt:
            return
    job.agg.fail(index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, "the vault closed at once")


async def _stream_one(
    job: FanOut, changed: _Changed, target: Target, link: _Link, *, may_retry: bool
) -> bool:
    """Run the target's request on ``link``. True: a pooled link was dead, try a fresh one."""
    conn = link.conn
    rid = conn.next_request_id()
    conn.send(Request(request_id=rid, envelope=target.envelope, query=target.query, credit=1))
    try:
        await link.flush()
    except OSError:
        link.close()
        if may_retry:
            return True
        job.agg.fail(
            target.index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, "the vault went away"
        )
        return False
    flow = Flow(target=target, link=cast(VaultLink, link), may_retry=may_retry)
    credit = False
    while True:
        if credit:
            while not job.wants_more(target.index):
                if job.agg.stopped:
                    link.close()
                    return False
                await changed.wait()
            conn.send(Credit(request_id=conn.request_id, batches=1))
            await link.flush()
        nxt = job.on_event(flow, await link.next_event())
        changed.notify()
        if nxt is Next.RETRY:
            return True
        if nxt is Next.DONE:
            return False
        credit = nxt is Next.CREDIT


# The names ``psp.aggregation`` exports (loaded on first use).
serve_orchestration_asyncio = serve_orchestration
AsyncioAggregatorServer = AggregatorServer
