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

import select
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import trio

from .._errors import ErrorCode, QueryError, RemoteProtocolError
from .._messages import Cancel, Credit, Error
from .._query import Query, decode_query
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
from ._trio_exchange import ROW_BUDGET, Changed, FanOut, FanOutStrategy, fan_out_tasks
from ._trio_pool import RECEIVE_SIZE, VaultPool, split_address

__all__ = [
    "EPOLL_AVAILABLE",
    "OUT_ROWS",
    "ROW_BUDGET",
    "Fanout",
    "fan_out_strategy",
    "handle_client",
    "serve_orchestration",
]

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


@dataclass
class _Request:
    opened: AggregateRequest
    targets: list[Target] = field(default_factory=list)
    changed: Changed = field(default_factory=Changed)
    cancelled: bool = False


async def serve_orchestration(
    host: str | None,
    port: int,
    *,
    pool: VaultPool | None = None,
    fanout: Fanout = "epoll",
    row_budget: int = ROW_BUDGET,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (the CLI's default is ``ppn.ports.AGGREGATOR_PORT``; 0 picks one).
    ``row_budget``: bytes of vault rows a request queues before it stops granting credit."""
    pool = pool or VaultPool()
    fan_out_strategy(fanout, pool)  # a bad choice fails here, not per connection
    listeners = await trio.open_tcp_listeners(port, host=host)
    handler = partial(handle_client, pool=pool, fanout=fanout, row_budget=row_budget)
    task_status.started(listeners)
    try:
        await trio.serve_listeners(handler, listeners)
    finally:
        pool.close()


async def handle_client(
    stream: trio.abc.Stream,
    *,
    pool: VaultPool,
    fanout: Fanout = "epoll",
    row_budget: int = ROW_BUDGET,
) -> None:
    """Serve one client connection until it closes; its going away cancels its request. A bug
    while serving it ends that connection (reported on stderr), never the server."""
    strategy = fan_out_strategy(fanout, pool)
    try:
        await _handle_client(stream, pool, strategy, row_budget)
    except Exception as exc:
        print(f"ppn orchestration: dropped a client connection: {exc!r}", file=sys.stderr)


async def _handle_client(
    stream: trio.abc.Stream, pool: VaultPool, strategy: FanOutStrategy, row_budget: int
) -> None:
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
                            nursery.start_soon(
                                _run_request, conn, flush, current, pool, strategy, row_budget
                            )
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
    job = FanOut(
        agg=agg,
        targets=request.targets,
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
                    f"cannot connect to {target.address} within the per-vault deadline"[:400],
                )
            else:
                job.agg.fail(
                    target.index,
                    VaultStatus.TIMEOUT,
                    ErrorCode.DEADLINE,
                    "no answer within the per-vault deadline",
                )
    job.changed.notify()
