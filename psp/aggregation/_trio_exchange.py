"""One aggregated request's vault exchanges (RFC-NOTES §10), shared by both fan-out paths.

:class:`FanOut` is what a fan-out strategy is given: the merge, the targets, the pool, and the
steps of one target's exchange (:meth:`FanOut.on_event` applies a vault's event to the merge and
says what the exchange needs next). :func:`fan_out_tasks` runs each target in its own trio task
over a pooled stream; the epoll path (``_trio_epoll``) serves plain-TCP vaults from one task and
hands a target to :meth:`FanOut.run_target` when it must wait for the merge.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from .._connection import ConnectionClosed, State
from .._errors import ErrorCode, RemoteProtocolError
from .._messages import Credit, End, Error, Header, Request, RowBatch, ServerHello
from ._connection import Target
from ._merge import Aggregation, VaultStatus, status_for_code
from ._trio_pool import VaultLink, VaultPool, split_address

__all__ = [
    "ROW_BUDGET",
    "Changed",
    "FanOut",
    "FanOutStrategy",
    "Flow",
    "Next",
    "fan_out_tasks",
    "no_vault",
    "not_psp",
]

ROW_BUDGET = 4 << 20  # bytes of vault rows a request queues before it stops granting credit


def no_vault(address: str) -> str:
    """The one status message for a target that never greeted us: refused, unroutable, timed
    out, closed or silent alike, so a status cannot tell which (RFC-NOTES §10.7)."""
    return f"no PSP vault answers at {address}"[:400]


def not_psp(address: str) -> str:
    """A peer that sent something other than a PSP hello; none of its bytes is repeated."""
    return f"not a PSP vault at {address}"[:400]


class Changed:
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


class Next(enum.Enum):
    """What one target's exchange needs after an event."""

    CONTINUE = "continue"
    DONE = "done"  # the target is settled; the link is closed or back in the pool
    RETRY = "retry"  # a pooled link was dead before any answer: try a fresh one
    CREDIT = "credit"  # the vault waits for credit


@dataclass
class Flow:
    """Where one target's exchange stands (shared by the task and the epoll paths)."""

    target: Target
    link: VaultLink
    may_retry: bool
    answered: bool = False


@dataclass(frozen=True, kw_only=True)
class FanOut:
    """One request's vault exchanges, as a fan-out strategy drives them. ``connecting`` holds
    the targets whose vault has not greeted them yet (no connection, or no ``hello`` on it: the
    server reports those as unreachable rather than timed out at the per-vault deadline, and
    nothing they sent is repeated); ``changed`` wakes the request's writer."""

    agg: Aggregation
    targets: Sequence[Target]
    pool: VaultPool
    changed: Changed
    row_budget: int = ROW_BUDGET
    connecting: set[int] = field(default_factory=set)

    def wants_more(self, index: int) -> bool:
        """Whether the merge wants another batch from target ``index`` now."""
        return self.agg.wants_more(index, self.row_budget)

    def on_event(self, flow: Flow, event: object) -> Next:
        """Apply one event from a vault to the merge; say what the exchange needs next."""
        agg, index, link, target = self.agg, flow.target.index, flow.link, flow.target
        if isinstance(event, ServerHello):
            self.connecting.discard(index)
            if event.vault != target.vault:
                link.close()
                agg.fail(
                    index,
                    VaultStatus.ERROR,
                    ErrorCode.WRONG_VAULT,
                    f"another vault answers at {target.address}",
                )
                return Next.DONE
            return Next.CONTINUE
        if isinstance(event, ConnectionClosed):
            link.close()
            if flow.may_retry and not flow.answered:
                return Next.RETRY
            if flow.answered:
                why = "the vault closed the connection mid-stream"
            else:
                why = no_vault(target.address) if index in self.connecting else "the vault hung up"
            agg.fail(index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, why)
            return Next.DONE
        flow.answered = True
        if isinstance(event, Error):
            agg.fail(index, status_for_code(event.code), event.code, event.message)
            if event.request_id == 0:
                link.close()
            else:
                self.pool.release(link)
            return Next.DONE
        if isinstance(event, Header):
            agg.header(index, event.as_of)
        elif isinstance(event, RowBatch):
            agg.rows(index, event.rows)
            conn = link.conn
            # (an End already decoded behind this batch needs no more credit)
            if conn.credit == 0 and conn.state is State.STREAMING and not conn.has_events():
                return Next.CREDIT
        elif isinstance(event, End):
            cursor = event.cursor
            agg.end(index, None if cursor is None else (cursor.as_of, cursor.offset))
            self.pool.release(link)
            return Next.DONE
        return Next.CONTINUE

    async def run_target(self, target: Target, taken_over: Flow | None = None) -> None:
        """One target's exchange in a task (``taken_over``: continue one the epoll path began,
        whose vault waits for credit)."""
        index, agg = target.index, self.agg
        try:
            if taken_over is None:
                await self._exchange(target)
            elif await self._serve_link(taken_over, credit=True):
                await self._exchange(target, fresh=True)
        except RemoteProtocolError as exc:
            self.broke_protocol(target, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            agg.fail(
                index,
                VaultStatus.UNREACHABLE,
                ErrorCode.UNAVAILABLE,
                no_vault(target.address)
                if index in self.connecting
                else "the vault closed the connection mid-stream",
            )
        except OSError:
            # (not the OS's reason: refused, unroutable and timed out must read alike)
            agg.fail(
                index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, no_vault(target.address)
            )
        self.changed.notify()

    def broke_protocol(self, target: Target, exc: RemoteProtocolError) -> None:
        """A protocol violation: its detail only if the peer greeted us as the target's vault
        (a peer that never did is 'not a PSP vault', and nothing it sent is repeated)."""
        if target.index in self.connecting:
            self.agg.fail(
                target.index, VaultStatus.ERROR, ErrorCode.PROTOCOL, not_psp(target.address)
            )
        else:
            self.agg.fail(
                target.index,
                VaultStatus.ERROR,
                exc.code,
                f"the vault broke the protocol: {exc}"[:400],
            )

    async def _exchange(self, target: Target, *, fresh: bool = False) -> None:
        index = target.index
        host, port = split_address(target.address)
        for attempt in (1,) if fresh else (0, 1):
            self.connecting.add(index)
            link, reused = await self.pool.acquire(host, port, target.vault)
            if reused:
                self.connecting.discard(index)  # its hello was checked (RFC-NOTES §10.1)
            try:
                retry = await self._stream_one(target, link, may_retry=reused)
            except BaseException:
                link.close()
                raise
            if not retry or attempt:
                return
        self.agg.fail(
            index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, "the vault closed at once"
        )

    async def _stream_one(self, target: Target, link: VaultLink, *, may_retry: bool) -> bool:
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
            self.agg.fail(
                target.index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, "the vault went away"
            )
            return False
        return await self._serve_link(Flow(target=target, link=link, may_retry=may_retry))

    async def _serve_link(self, flow: Flow, *, credit: bool = False) -> bool:
        """The rest of an exchange, in a task (``credit``: the vault is waiting for some).
        True: a pooled link was dead before any answer, try a fresh one."""
        link = flow.link
        while True:
            if credit:
                while not self.wants_more(flow.target.index):
                    if self.agg.stopped:
                        link.close()
                        return False
                    await self.changed.wait()
                link.conn.send(Credit(request_id=link.conn.request_id, batches=1))
                await link.flush()
            nxt = self.on_event(flow, await link.next_event())
            self.changed.notify()
            if nxt is Next.RETRY:
                return True
            if nxt is Next.DONE:
                return False
            credit = nxt is Next.CREDIT


FanOutStrategy = Callable[[FanOut], Awaitable[None]]
"""Runs every target's exchange of a :class:`FanOut`; returns when all are settled."""


async def fan_out_tasks(job: FanOut) -> None:
    """A trio task per target, each over a pooled stream (any connector, any platform)."""
    async with trio.open_nursery() as nursery:
        for target in job.targets:
            nursery.start_soon(job.run_target, target)
