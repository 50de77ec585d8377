"""A guard for every trio TCP listener of the stack (issue 14; RFC-NOTES §9.8).

``trio.serve_listeners`` accepts without limit, and when the process runs out of file
descriptors it logs a traceback and retries ten times a second. A hostile peer that opens idle
connections then holds every descriptor, and the log fills. :class:`ListenerGuard` instead:

- caps the connections it holds (``max_connections``, by default derived from the fd limit, so a
  reserve stays for the service's own files) and the connections from one source address;
- at the cap, closes the oldest connection that has not been *admitted* yet (a service admits a
  connection once the peer proved something: a verified invocation, a key confirmation) to make
  room for the new one; when every held connection is admitted, the new one is closed at once;
- on EMFILE/ENFILE/ENOBUFS/ENOMEM stops accepting for a while (exponential back-off up to a
  second) and logs one line per minute at most;
- gives each connection a cancel scope with a deadline: ``first_frame_deadline`` from the accept
  until the service calls :meth:`Connection.admit`, then ``idle_timeout`` from the last
  :meth:`Connection.touch`. A partial frame therefore never outlives its deadline.

The handler is ``handler(stream, connection)``. :class:`FrameMeter` follows the frame boundaries
of a §2.1 stream (u32 length prefix) so a service can cap what it buffers before admission.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable

import trio

# The limits and their decisions are shared with the asyncio guard (ppn._asyncio_listener).
from ._listener_limits import (
    MAX_BACKOFF,
    ConnectionBook,
    FrameMeter,
    ListenerLimits,
    ShortageLog,
    default_max_connections,
)

__all__ = [
    "Connection",
    "ConnectionBook",
    "FrameMeter",
    "ListenerGuard",
    "ListenerLimits",
    "default_max_connections",
]

log = logging.getLogger("ppn.listener")

# accept() failing for lack of resources: back off, the condition is the process's, not the peer's.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() failing for the peer's reasons (it reset before we took it): just take the next one.
_PEER_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET})


class Connection:
    """One accepted connection as the guard sees it; the service calls :meth:`admit` and
    :meth:`touch`."""

    __slots__ = ("_idle", "admitted", "scope", "source")

    def __init__(self, source: str, limits: ListenerLimits) -> None:
        self.source = source
        self.admitted = False
        self._idle = limits.idle_timeout
        self.scope = trio.CancelScope(deadline=trio.current_time() + limits.first_frame_deadline)

    def admit(self) -> None:
        """The peer proved itself: from now on only the idle timeout applies."""
        self.admitted = True
        self.scope.deadline = trio.current_time() + self._idle

    def touch(self) -> None:
        """Activity (a complete frame, a batch sent): the idle clock restarts. Before admission
        this does nothing, so a peer cannot stretch the first-frame deadline with chatter."""
        if self.admitted:
            self.scope.deadline = trio.current_time() + self._idle

    @property
    def closing(self) -> bool:
        return self.scope.cancel_called

    def close(self) -> None:
        self.scope.cancel()


Handler = Callable[[trio.SocketStream, Connection], Awaitable[None]]


class ListenerGuard:
    """Accepts on listeners within :class:`ListenerLimits`; counters are for tests and logs."""

    def __init__(self, limits: ListenerLimits | None = None) -> None:
        self.limits = limits or ListenerLimits()
        self.book: ConnectionBook[Connection] = ConnectionBook(self.limits)
        self.connections = self.book.connections  # insertion order = age
        self.by_source = self.book.by_source
        self._log = ShortageLog()

    @property
    def refused(self) -> int:
        """Closed at once: per-source cap, or the cap with every one admitted."""
        return self.book.refused

    @property
    def evicted(self) -> int:
        """Unadmitted connections closed to make room."""
        return self.book.evicted

    @property
    def shortages(self) -> int:
        """accept() calls that failed for lack of descriptors or memory."""
        return self._log.shortages

    @property
    def active(self) -> int:
        return len(self.connections)

    async def serve(
        self,
        handler: Handler,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (like ``trio.serve_listeners``)."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, nursery, handler, listener)
            task_status.started(listeners)

    async def _accept_loop(
        self, nursery: trio.Nursery, handler: Handler, listener: trio.SocketListener
    ) -> None:
        sock = listener.socket
        backoff = 0.01
        while True:
            try:
                child, address = await sock.accept()
            except OSError as exc:
                if exc.errno in _CAPACITY_ERRNOS:
                    self._shortage(exc)
                    await trio.sleep(backoff)
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
            nursery.start_soon(self._run, handler, trio.SocketStream(child), conn)

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

    async def _run(self, handler: Handler, stream: trio.SocketStream, conn: Connection) -> None:
        try:
            with conn.scope:
                await handler(stream, conn)
        except Exception:
            # One peer's connection must not end the service: report it (rate-limited) instead.
            if self._log.failure_due(time.monotonic()):
                log.exception("a connection handler failed")
        finally:
            self.book.remove(conn)
            await trio.aclose_forcefully(stream)
