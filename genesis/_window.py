"""Join windows and the failed-attempt limit on the sponsor side (sans-IO, RFC-NOTES §5.7).

A window is a code waiting for one joiner. It lives ``WINDOW_LIFETIME`` seconds and is burned
by the first ceremony that spends its code — success or not: one guess per code. A ceremony
that ended before the joiner's share arrived (no guess made) leaves the window open. A claim is
exclusive (a second joiner meanwhile is "crowded"), or with ``shared=True`` several ceremonies
may be opened on one window and only :meth:`WindowBook.spend` is exclusive: the first share
takes the one guess, later shares are "crowded", so a peer that only says ``hello`` cannot hold
the window (RFC-NOTES §5.7). A burned window's number is not reused for an hour, and the
adapter picks numbers at random (``pick``), so the next window's number cannot be predicted.

The limiter counts failed guesses across all windows of a sponsor over a sliding hour; at
``MAX_FAILURES`` it refuses to open more windows until the oldest failure is an hour old.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from ._code import MAX_WINDOW, JoinCode, make_code
from ._errors import LocalProtocolError

__all__ = [
    "FAILURE_PERIOD",
    "MAX_FAILURES",
    "WINDOW_LIFETIME",
    "AttemptLimiter",
    "RateLimited",
    "WindowBook",
    "WindowStatus",
]

WINDOW_LIFETIME = 600.0
MAX_FAILURES = 5
FAILURE_PERIOD = 3600.0


class RateLimited(LocalProtocolError):
    """Too many failed attempts this hour; ``retry_at`` is when a window may open again."""

    def __init__(self, retry_at: float) -> None:
        super().__init__("too many failed join attempts in the last hour")
        self.retry_at = retry_at


class AttemptLimiter:
    """At most ``max_failures`` failed guesses per ``period`` seconds (sliding window)."""

    def __init__(self, *, max_failures: int = MAX_FAILURES, period: float = FAILURE_PERIOD) -> None:
        self.max_failures = max_failures
        self.period = period
        self._failures: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._failures and self._failures[0] <= now - self.period:
            self._failures.popleft()

    def record_failure(self, now: float) -> None:
        self._expire(now)
        self._failures.append(now)

    def failures(self, now: float) -> int:
        self._expire(now)
        return len(self._failures)

    def allowed(self, now: float) -> bool:
        return self.failures(now) < self.max_failures

    def retry_at(self, now: float) -> float:
        """When the next window may open (``now`` if it may already)."""
        if self.allowed(now):
            return now
        return self._failures[len(self._failures) - self.max_failures] + self.period


class WindowStatus(enum.Enum):
    OPEN = "open"
    BUSY = "busy"  # a ceremony is running on it: a newcomer is "crowded"
    MISSING = "missing"  # never opened, expired or burned


@dataclass
class _Window:
    code: JoinCode
    expires: float
    busy: bool = False  # a ceremony holds it: claimed exclusively, or its code being spent
    pending: int = 0  # shared claims whose ceremony has not reached the share yet


class WindowBook:
    """The open windows of one sponsor, numbered from 1 (lowest free number first)."""

    def __init__(
        self, *, limiter: AttemptLimiter | None = None, lifetime: float = WINDOW_LIFETIME
    ) -> None:
        self.limiter = limiter or AttemptLimiter()
        self.lifetime = lifetime
        self._windows: dict[int, _Window] = {}
        self._retired: dict[int, float] = {}  # burned number -> when it may be used again

    def open(self, now: float, secret: bytes, *, pick: int | None = None) -> JoinCode:
        """Open a window with a code from ``secret`` (5 random bytes). Raises RateLimited.

        The number is the lowest free one, or with ``pick`` (a random integer from the adapter)
        the ``pick``-th free one modulo their count; never an open one nor one burned in the
        last hour."""
        self.expire(now)
        if not self.limiter.allowed(now):
            raise RateLimited(self.limiter.retry_at(now))
        self._retired = {n: t for n, t in self._retired.items() if t > now}
        free = [
            n for n in range(1, MAX_WINDOW + 1) if n not in self._windows and n not in self._retired
        ]
        if not free:
            raise RateLimited(min(self._retired.values(), default=now))
        number = free[0] if pick is None else free[pick % len(free)]
        code = make_code(number, secret)
        self._windows[number] = _Window(code=code, expires=now + self.lifetime)
        return code

    def claim(
        self, window: int, now: float, *, shared: bool = False
    ) -> tuple[WindowStatus, JoinCode | None]:
        """A joiner asked for ``window``: OPEN (with its code), BUSY or MISSING. An exclusive
        claim makes the window busy; a shared one only counts it (see :meth:`spend`)."""
        self.expire(now)
        entry = self._windows.get(window)
        if entry is None:
            return WindowStatus.MISSING, None
        if entry.busy:
            return WindowStatus.BUSY, None
        if shared:
            entry.pending += 1
        else:
            entry.busy = True
        return WindowStatus.OPEN, entry.code

    def spend(self, window: int, now: float) -> WindowStatus:
        """A shared claim's ceremony is about to spend the code: OPEN (it may; the window is
        now busy), BUSY (another ceremony spends it) or MISSING (expired or burned)."""
        entry = self._windows.get(window)
        if entry is None:
            return WindowStatus.MISSING
        if entry.busy:
            return WindowStatus.BUSY
        entry.busy = True
        entry.pending -= 1
        return WindowStatus.OPEN

    def release(
        self, window: int, now: float, *, joined: bool, code_spent: bool, shared: bool = False
    ) -> None:
        """A ceremony on ``window`` ended. A spent code burns the window (its number rests an
        hour); a failed guess counts. ``shared``: the claim was shared and never spent."""
        entry = self._windows.get(window)
        if entry is None:
            return
        if joined or code_spent:
            del self._windows[window]
            if not joined:
                self.limiter.record_failure(now)
                self._retired[window] = now + self.limiter.period
        elif shared:
            entry.pending -= 1
        else:
            entry.busy = False

    def expire(self, now: float) -> list[int]:
        """Close windows past their lifetime that no ceremony is using; returns their numbers."""
        gone = [n for n, w in self._windows.items() if w.expires <= now and not w.busy]
        for number in gone:
            del self._windows[number]
        return gone

    def next_expiry(self) -> float | None:
        return min((w.expires for w in self._windows.values()), default=None)

    def is_open(self, window: int) -> bool:
        return window in self._windows

    def __len__(self) -> int:
        return len(self._windows)
