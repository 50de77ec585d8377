"""The limits every TCP listener of the stack enforces, and their decisions, for both loops.

The trio guard (:mod:`ppn._trio_listener`) and the asyncio guard (:mod:`ppn._asyncio_listener`)
move sockets and run timers; *what* they decide is here, once (issue 14, issue 20; RFC-NOTES
§9.8): whether a new connection fits (:class:`ConnectionBook`: a cap in total and per source,
evicting the oldest connection whose peer has not proved anything yet), when a connection's
deadline falls (:func:`deadline`: ``first_frame_deadline`` until the service admits it, then
``idle_timeout`` from its last activity), how often a resource shortage is logged
(:class:`ShortageLog`), and how large a frame may be announced before admission
(:class:`FrameMeter`). Time comes in as ``now``; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import resource
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = [
    "FD_RESERVE",
    "LOG_INTERVAL",
    "MAX_BACKOFF",
    "ConnectionBook",
    "FrameMeter",
    "Held",
    "ListenerLimits",
    "ShortageLog",
    "deadline",
    "default_max_connections",
]

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


def deadline(limits: ListenerLimits, *, admitted: bool, since: float) -> float:
    """When a connection is closed: ``first_frame_deadline`` after the accept (``since``) until
    it is admitted, then ``idle_timeout`` after its last activity (``since``)."""
    return since + (limits.idle_timeout if admitted else limits.first_frame_deadline)


class Held(Hashable, Protocol):
    """A connection as a guard holds it."""

    @property
    def source(self) -> str: ...

    @property
    def admitted(self) -> bool: ...

    @property
    def closing(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Held)


class ConnectionBook(Generic[C]):
    """The connections a listener holds, oldest first, and the cap decisions over them."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self.connections: dict[C, None] = {}  # insertion order = age
        self.by_source: dict[str, int] = {}
        # Closed at once, by reason: the source's cap, or the cap with every one admitted.
        self.refused_per_source = 0
        self.refused_full = 0
        self.evicted = 0  # unadmitted connections closed to make room

    @property
    def refused(self) -> int:
        """Closed at once, for either reason."""
        return self.refused_per_source + self.refused_full

    def make_room(self, source: str) -> bool:
        """Whether a new connection from ``source`` may be held; may close (evict) the oldest
        unadmitted one to make room. False counts as refused: the caller closes the socket."""
        limits = self.limits
        if self.by_source.get(source, 0) >= limits.per_source:
            self.refused_per_source += 1
            return False
        if self._room():
            return True
        self.refused_full += 1
        return False

    def _room(self) -> bool:
        limits = self.limits
        if len(self.connections) < limits.max_connections:
            return True
        # Pending closes still count, so an eviction frees its slot only when its handler ends:
        # evict only as many as are over the cap, and never an admitted one.
        over = len(self.connections) - limits.max_connections + 1
        if sum(1 for c in self.connections if c.closing) >= over:
            return True
        for conn in self.connections:
            if not conn.admitted and not conn.closing:
                conn.close()
                self.evicted += 1
                return True
        return False

    def add(self, conn: C) -> None:
        self.connections[conn] = None
        self.by_source[conn.source] = self.by_source.get(conn.source, 0) + 1

    def remove(self, conn: C) -> None:
        del self.connections[conn]
        left = self.by_source[conn.source] - 1
        if left:
            self.by_source[conn.source] = left
        else:
            del self.by_source[conn.source]


class ShortageLog:
    """Rate-limits the log line about accept() failing for lack of descriptors or memory."""

    def __init__(self) -> None:
        self.shortages = 0
        self.last = -LOG_INTERVAL
        self.unlogged = 0

    def report(self, now: float) -> int | None:
        """Count one shortage; the number of unreported ones before it if a line is due now,
        else None."""
        self.shortages += 1
        if now - self.last < LOG_INTERVAL:
            self.unlogged += 1
            return None
        unlogged, self.last, self.unlogged = self.unlogged, now, 0
        return unlogged

    def failure_due(self, now: float) -> bool:
        """Whether a failed handler may be logged now (same rate as shortages)."""
        if now - self.last >= LOG_INTERVAL:
            self.last = now
            return True
        return False


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
