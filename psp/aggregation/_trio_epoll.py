"""The aggregator's fast path on Linux: one trio task serves every plain-TCP vault of a request
through its own epoll set (RFC-NOTES §10.5).

A task per vault costs trio a task, a cancel scope and stream machinery per send and receive;
with a thousand vaults answering one small query each, that is most of the aggregator's CPU. Here
the request's vault sockets are non-blocking stdlib sockets registered in one ``select.epoll``;
the task waits until that epoll descriptor is readable (trio polls it like any socket), then
drains every ready socket with plain syscalls and feeds the same vault-protocol cores and the same
event handling as the task path (:meth:`FanOut.on_event`). A vault whose answer needs more credit
than the merge wants now is handed to a task (:meth:`FanOut.run_target`) with its connection as it
stands, so back-pressure, deadlines and cancellation behave exactly as on the task path. Sockets
still open when the request ends or is cancelled are closed, so the vaults see EOF.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket

import trio

from .._errors import ErrorCode, RemoteProtocolError
from .._messages import Credit, Request
from ._connection import Target
from ._merge import Aggregation, VaultStatus
from ._trio_exchange import FanOut, Flow, Next, no_vault
from ._trio_pool import RECEIVE_SIZE, VaultLink, split_address

__all__ = ["fan_out"]

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP


class _Raw:
    __slots__ = ("connecting", "flow", "out")

    def __init__(self, flow: Flow, *, connecting: bool) -> None:
        self.flow = flow
        self.connecting = connecting
        self.out = b""


async def fan_out(job: FanOut) -> None:
    """Run every target's exchange; returns when all are settled (or handed to tasks that
    have finished). Cancellation closes whatever is still open. Only for a pool of plain TCP
    connections (:attr:`VaultPool.plain_tcp`): the links it opens are raw sockets."""
    ep = select.epoll()
    fan: _EpollFanOut | None = None
    try:
        async with trio.open_nursery() as tasks:
            fan = _EpollFanOut(job, ep, tasks)
            for target in job.targets:
                fan.start(target)
            job.changed.notify()
            await fan.run()
    finally:
        if fan is not None:
            fan.close()
        ep.close()


class _EpollFanOut:
    """One request's raw vault sockets in one epoll set; targets it cannot serve (a host name,
    a pooled stream link, a vault that must wait for the merge) go to tasks in ``tasks``."""

    def __init__(self, job: FanOut, ep: select.epoll, tasks: trio.Nursery) -> None:
        self.job = job
        self.ep = ep
        self.tasks = tasks
        self.live: dict[int, _Raw] = {}
        self.families: dict[str, int] = {}  # host -> address family, or -1 for a name

    async def run(self) -> None:
        """Serve ready sockets until none is left or the merge has stopped."""
        agg, ep, live, changed = self.job.agg, self.ep, self.live, self.job.changed
        while live:
            await trio.lowlevel.wait_readable(ep)
            for fd, mask in ep.poll(0):
                if fd in live:
                    self.service(fd, mask)
            if agg.ready:  # wake the writer only when it has something to do
                changed.notify()
            if agg.stopped:
                break

    def close(self) -> None:
        for raw in self.live.values():
            raw.flow.link.close()

    def start(self, target: Target, *, fresh: bool = False) -> None:
        """Send the target's request on a pooled raw link, or on a new non-blocking socket."""
        job, pool = self.job, self.job.pool
        host, port = split_address(target.address)
        family = self.families.get(host)
        if family is None:
            family = self.families[host] = _family(host)
        if family < 0:  # a name: resolved on the task path
            self.tasks.start_soon(job.run_target, target)
            return
        link = None if fresh else pool.take_idle(host, port, target.vault)
        if link is not None and not link.raw:
            pool.release(link)  # a stream link belongs to the task path
            self.tasks.start_soon(job.run_target, target)
            return
        connecting = link is None
        if link is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                _unreachable(job.agg, target)
                return
            link = VaultLink(None, (host, port), sock=sock)
            pool.adopt(link)
            job.connecting.add(target.index)
        conn = link.conn
        conn.send(
            Request(
                request_id=conn.next_request_id(),
                envelope=target.envelope,
                query=target.query,
                credit=1,
            )
        )
        raw = _Raw(Flow(target=target, link=link, may_retry=not connecting), connecting=connecting)
        raw.out = conn.data_to_send()
        assert link.sock is not None
        fd = link.sock.fileno()
        self.live[fd] = raw
        self.ep.register(fd, _IN | _OUT)

    def unregister(self, fd: int) -> None:
        del self.live[fd]
        try:
            self.ep.unregister(fd)
        except OSError:
            pass  # already closed (by on_event): closing left the epoll set

    def service(self, fd: int, mask: int) -> None:
        """One ready socket: finish its connect, send what is queued, read what is there, and
        apply every event to the merge."""
        raw = self.live[fd]
        flow = raw.flow
        sock = flow.link.sock
        assert sock is not None
        if raw.connecting and not self._connected(fd, raw, sock, mask):
            return
        eof = False
        if raw.out:
            try:
                raw.out = raw.out[sock.send(raw.out) :]
            except BlockingIOError:
                pass
            except OSError:
                eof = True  # reset: read what is there, then it ends as closed
            if not raw.out:
                self.ep.modify(fd, _IN)
        if (mask & (_IN | _ERR) or eof) and not self._receive(fd, flow, sock):
            return
        self._apply_events(fd, raw)

    def _connected(self, fd: int, raw: _Raw, sock: socket.socket, mask: int) -> bool:
        """Whether the non-blocking connect has completed (a failed one settles the target)."""
        if not mask & (_OUT | _ERR):
            return False
        flow = raw.flow
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.unregister(fd)
            flow.link.close()
            _unreachable(self.job.agg, flow.target)
            return False
        raw.connecting = False  # (the target stays in job.connecting until the vault's hello)
        return True

    def _receive(self, fd: int, flow: Flow, sock: socket.socket) -> bool:
        """Drain the socket into the core; False when the vault broke the protocol (settled)."""
        conn = flow.link.conn
        while True:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            try:
                conn.receive_data(data)
            except RemoteProtocolError as exc:
                self.unregister(fd)
                flow.link.close()
                self.job.broke_protocol(flow.target, exc)
                return False
            if not data:
                return True

    def _apply_events(self, fd: int, raw: _Raw) -> None:
        job, flow = self.job, raw.flow
        conn = flow.link.conn
        while (event := conn.next_event()) is not None:
            nxt = job.on_event(flow, event)
            if nxt is Next.CONTINUE:
                continue
            self.unregister(fd)
            if nxt is Next.RETRY:
                self.start(flow.target, fresh=True)
            elif nxt is Next.CREDIT:
                if job.wants_more(flow.target.index):
                    conn.send(Credit(request_id=conn.request_id, batches=1))
                    raw.out += conn.data_to_send()
                    self.live[fd] = raw
                    self.ep.register(fd, _IN | _OUT)
                    continue
                # The merge does not want more now: a task waits for that.
                self.tasks.start_soon(job.run_target, flow.target, flow)
            return


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return -1


def _unreachable(agg: Aggregation, target: Target) -> None:
    # (not the OS's reason: refused, unroutable and timed out must read alike, RFC-NOTES §10.7)
    agg.fail(target.index, VaultStatus.UNREACHABLE, ErrorCode.UNAVAILABLE, no_vault(target.address))
