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
import resource
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

__all__ = [
    "Connection",
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
FD_RESERVE = 64  # descriptors kept for the service itself (its store, logs, outbound sockets)
LOG_INTERVAL = 60.0  # seconds between two log lines about the same resource shortage
MAX_BACKOFF = 1.0


def default_max_connections(reserve: int = FD_RESERVE) -> int:
    """The soft RLIMIT_NOFILE less a reserve (at most a quarter of it), capped at 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    return max(1, min(soft - min(reserve, soft // 4), 4096))


@dataclass(frozen=True, kw_only=True)
class ListenerLimits:
    """Per-listener resource limits (seconds and bytes). Every one is positive."""

    max_connections: int = field(default_factory=default_max_connections)
    per_source: int = 64
    first_frame_deadline: float = 10.0
    idle_timeout: float = 120.0
    pre_auth_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "per_source",
            "first_frame_deadline",
            "idle_timeout",
            "pre_auth_bytes",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


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

    def close(self) -> None:
        self.scope.cancel()


Handler = Callable[[trio.SocketStream, Connection], Awaitable[None]]


class ListenerGuard:
    """Accepts on listeners within :class:`ListenerLimits`; counters are for tests and logs."""

    def __init__(self, limits: ListenerLimits | None = None) -> None:
        self.limits = limits or ListenerLimits()
        self.connections: dict[Connection, None] = {}  # insertion order = age
        self.by_source: dict[str, int] = {}
        self.refused = 0  # closed at once: per-source cap, or the cap with every one admitted
        self.evicted = 0  # unadmitted connections closed to make room
        self.shortages = 0  # accept() calls that failed for lack of descriptors or memory
        self._last_log = -LOG_INTERVAL
        self._unlogged = 0

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
            if not self._make_room(source):
                self.refused += 1
                child.close()
                continue
            conn = Connection(source, self.limits)
            self.connections[conn] = None
            self.by_source[source] = self.by_source.get(source, 0) + 1
            nursery.start_soon(self._run, handler, trio.SocketStream(child), conn)

    def _make_room(self, source: str) -> bool:
        if self.by_source.get(source, 0) >= self.limits.per_source:
            return False
        if len(self.connections) < self.limits.max_connections:
            return True
        # Pending closes still count, so an eviction frees its slot only when its task ends:
        # evict only as many as are over the cap, and never an admitted one.
        over = len(self.connections) - self.limits.max_connections + 1
        doomed = [c for c in self.connections if c.scope.cancel_called]
        if len(doomed) >= over:
            return True
        for conn in self.connections:
            if not conn.admitted and not conn.scope.cancel_called:
                conn.close()
                self.evicted += 1
                return True
        return False

    def _shortage(self, exc: OSError) -> None:
        self.shortages += 1
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        log.warning(
            "cannot accept connections: %s; holding %d, backing off%s",
            exc.strerror or exc,
            len(self.connections),
            more,
        )
        self._last_log, self._unlogged = now, 0

    async def _run(self, handler: Handler, stream: trio.SocketStream, conn: Connection) -> None:
        try:
            with conn.scope:
                await handler(stream, conn)
        except Exception:
            # One peer's connection must not end the service: report it (rate-limited) instead.
            now = time.monotonic()
            if now - self._last_log >= LOG_INTERVAL:
                self._last_log = now
                log.exception("a connection handler failed")
        finally:
            del self.connections[conn]
            left = self.by_source[conn.source] - 1
            if left:
                self.by_source[conn.source] = left
            else:
                del self.by_source[conn.source]
            await trio.aclose_forcefully(stream)


_HEADER = struct.Struct(">I")


class FrameMeter:
    """Follows the frame boundaries of a u32-length-prefixed stream without keeping its bytes.

    :meth:`feed` returns the largest length announced by a frame header seen in ``data``; the
    caller compares it with what it accepts before admission. ``pending`` is how many bytes of
    the current, incomplete frame have arrived (what a decoder holds for it).
    """

    __slots__ = ("_header", "_left", "pending")

    def __init__(self) -> None:
        self._header = b""
        self._left = 0  # payload bytes still to come for the current frame
        self.pending = 0

    def feed(self, data: bytes | bytearray) -> int:
        largest = 0
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                self.pending = 0 if not self._left else self.pending + take
                i += take
                continue
            need = 4 - len(self._header)
            self._header += data[i : i + need]
            i += min(need, n - i)
            self.pending = len(self._header)
            if len(self._header) == 4:
                (length,) = _HEADER.unpack(self._header)
                self._header = b""
                largest = max(largest, length)
                self._left = length
                self.pending = 4 if length else 0
        return largest
