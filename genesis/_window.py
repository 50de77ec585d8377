"""Join windows and the failed-attempt limit on the sponsor side (sans-IO, RFC-NOTES §5.7).

A window is a code waiting for one joiner. It lives ``WINDOW_LIFETIME`` seconds, serves one
ceremony at a time (a second joiner meanwhile is "crowded"), and is burned by the first
ceremony that spends its code — success or not: one guess per code. A ceremony that ended
before the joiner's share arrived (no guess made) leaves the window open.

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
    busy: bool = False


class WindowBook:
    """The open windows of one sponsor, numbered from 1 (lowest free number first)."""

    def __init__(
        self, *, limiter: AttemptLimiter | None = None, lifetime: float = WINDOW_LIFETIME
    ) -> None:
        self.limiter = limiter or AttemptLimiter()
        self.lifetime = lifetime
        self._windows: dict[int, _Window] = {}

    def open(self, now: float, secret: bytes) -> JoinCode:
        """Open a window with a code from ``secret`` (5 random bytes). Raises RateLimited."""
        self.expire(now)
        if not self.limiter.allowed(now):
            raise RateLimited(self.limiter.retry_at(now))
        number = next(n for n in range(1, MAX_WINDOW + 1) if n not in self._windows)
        code = make_code(number, secret)
        self._windows[number] = _Window(code=code, expires=now + self.lifetime)
        return code

    def claim(self, window: int, now: float) -> tuple[WindowStatus, JoinCode | None]:
        """A joiner asked for ``window``: OPEN (now busy, with its code), BUSY or MISSING."""
        self.expire(now)
        entry = self._windows.get(window)
        if entry is None:
            return WindowStatus.MISSING, None
        if entry.busy:
            return WindowStatus.BUSY, None
        entry.busy = True
        return WindowStatus.OPEN, entry.code

    def release(self, window: int, now: float, *, joined: bool, code_spent: bool) -> None:
        """A ceremony on ``window`` ended. A spent code burns the window; a failed guess counts."""
        entry = self._windows.get(window)
        if entry is None:
            return
        if joined or code_spent:
            del self._windows[window]
            if not joined:
                self.limiter.record_failure(now)
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
