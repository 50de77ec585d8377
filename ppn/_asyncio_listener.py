"""The asyncio twin of :mod:`ppn._trio_listener`: the guard an asyncio TCP listener runs behind.

The limits and every decision come from :mod:`ppn._listener_limits`, shared with the trio guard:
a cap in total and per source with eviction of the oldest unadmitted connection, a first-frame
deadline until the service calls :meth:`Connection.admit`, then an idle timeout from the last
:meth:`Connection.touch`, back-off (and one log line a minute) when accept() runs out of
descriptors. ``asyncio.start_server`` accepts without limit, so the accept loop is our own, on
``loop.sock_accept``. The handler is ``handler(reader, writer, connection)``; when a deadline
passes, the handler's task is cancelled and the socket closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable

from ._listener_limits import (
    MAX_BACKOFF,
    ConnectionBook,
    FrameMeter,
    ListenerLimits,
    ShortageLog,
    deadline,
    default_max_connections,
)

__all__ = [
    "Connection",
    "FrameMeter",
    "ListenerGuard",
    "ListenerLimits",
    "default_max_connections",
    "open_tcp_listeners",
]

log = logging.getLogger("ppn.listener")

_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PEER_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET})


class Connection:
    """One accepted connection; the service calls :meth:`admit` and :meth:`touch`.

    The deadline is a number the service moves cheaply; one timer per connection wakes at the
    deadline it last saw and, if the deadline has moved on since, sleeps again until then.
    """

    __slots__ = (
        "_closing",
        "_deadline",
        "_limits",
        "_loop",
        "_timer",
        "admitted",
        "source",
        "task",
    )

    def __init__(self, source: str, limits: ListenerLimits) -> None:
        self.source = source
        self.admitted = False
        self._closing = False
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline(limits, admitted=False, since=self._loop.time())
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self._deadline, self._expire)
        self.task: asyncio.Task[None] | None = None

    def admit(self) -> None:
        """The peer proved itself: from now on only the idle timeout applies."""
        self.admitted = True
        self._set(deadline(self._limits, admitted=True, since=self._loop.time()))

    def touch(self) -> None:
        """Activity restarts the idle clock; before admission it does nothing."""
        if self.admitted:
            self._set(deadline(self._limits, admitted=True, since=self._loop.time()))

    def hold(self) -> None:
        """No deadline until the next :meth:`touch` (the service bounds the work itself, as
        the aggregator bounds a running request by the request's own deadline)."""
        self._deadline = math.inf

    def _set(self, when: float) -> None:
        self._deadline = when
        if self._timer is None and not self._closing:
            self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._deadline == math.inf:
            return  # held: touch() arms the timer again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._expire)
        else:
            self.close()

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        if self.task is not None:
            self.task.cancel()

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Connection], Awaitable[None]]


def open_tcp_listeners(host: str | None, port: int, *, backlog: int = 128) -> list[socket.socket]:
    """Non-blocking listening sockets on every address of ``host`` (all interfaces if None),
    like ``trio.open_tcp_listeners``; port 0 picks one port shared by all of them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ListenerGuard:
    """Accepts on listening sockets within :class:`ListenerLimits`; counters for tests and logs."""

    def __init__(self, limits: ListenerLimits | None = None) -> None:
        self.limits = limits or ListenerLimits()
        self.book: ConnectionBook[Connection] = ConnectionBook(self.limits)
        self.connections = self.book.connections
        self._log = ShortageLog()

    @property
    def active(self) -> int:
        return len(self.connections)

    @property
    def refused(self) -> int:
        return self.book.refused

    @property
    def evicted(self) -> int:
        return self.book.evicted

    @property
    def shortages(self) -> int:
        return self._log.shortages

    async def serve(self, handler: Handler, listeners: list[socket.socket]) -> None:
        """Serve until cancelled; then every connection is cancelled and the listeners closed."""
        loops = [asyncio.ensure_future(self._accept_loop(handler, s)) for s in listeners]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            tasks = [c.task for c in self.connections if c.task is not None]
            for conn in list(self.connections):
                conn.close()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for sock in listeners:
                sock.close()

    async def _accept_loop(self, handler: Handler, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.01
        while True:
            try:
                child, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _CAPACITY_ERRNOS:
                    self._shortage(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                if exc.errno in _PEER_ERRNOS:
                    continue
                raise
            backoff = 0.01
            source = address[0] if isinstance(address, tuple) else str(address)
            if not self.book.make_room(source):
                child.close()
                continue
            conn = Connection(source, self.limits)
            self.book.add(conn)
            conn.task = asyncio.ensure_future(self._run(handler, child, conn))

    def _shortage(self, exc: OSError) -> None:
        unlogged = self._log.report(time.monotonic())
        if unlogged is None:
            return
        more = f" ({unlogged} more since the last report)" if unlogged else ""
        log.warning(
            "cannot accept connections: %s; holding %d, backing off%s",
            exc.strerror or exc,
            len(self.connections),
            more,
        )

    async def _run(self, handler: Handler, child: socket.socket, conn: Connection) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            child.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader, writer = await asyncio.open_connection(sock=child)
            if not conn.closing:
                await handler(reader, writer, conn)
        except asyncio.CancelledError:
            if not conn.closing:
                raise  # not our deadline or eviction: the server is stopping
        except Exception:
            # One peer's connection must not end the service: report it (rate-limited) instead.
            if self._log.failure_due(time.monotonic()):
                log.exception("a connection handler failed")
        finally:
            conn._done()
            self.book.remove(conn)
            if writer is not None:
                writer.transport.abort()
            else:
                child.close()


async def wait_closed(writer: asyncio.StreamWriter) -> None:
    """Close a stream writer, ignoring a peer that is already gone."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()
