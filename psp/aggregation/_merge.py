"""The aggregator's merge, without I/O (RFC-NOTES §10.3): many vaults' answers to one query
become one answer, with a per-vault status and nothing dropped silently.

Feed it what each target vault says (:meth:`Aggregation.header`, :meth:`~Aggregation.rows`,
:meth:`~Aggregation.end`, :meth:`~Aggregation.fail`); pull merged output rows with
:meth:`~Aggregation.take`; when :attr:`~Aggregation.finished`, read :meth:`~Aggregation.statuses`.

- ``read``/``stream`` without ``order``: rows pass through in arrival order, unparsed.
- ``read``/``stream`` with ``order``: a k-way merge of the per-vault streams (each vault already
  sorted its own), ordered by ``(SQLite order of the field, target index, the vault's order)``.
  A row is released only when every vault still streaming has a row queued (its next row cannot
  come earlier), so nothing is collected and then sorted.
- ``count``/``aggregate``: each vault sends partials (one row per group, ordered by group); the
  same k-way merge lines groups up and adjacent equal groups are combined (count and sum add,
  min and max compare), so the aggregator never sees a raw record.

Limits are pushed down (every vault gets the same signed ``limit``); the merged answer stops
after ``limit`` rows. Rows are *consumed* only when they leave in the output, so a target's
resume cursor is ``(as_of, its query offset + rows consumed)`` — exact, and the next page asks
each vault only for what it has not yet delivered. When a vault stopped early with a cursor of
its own (its capability's row limit), an ordered merge cannot pass that vault's last row (its
next rows could sort before what would follow) and the page ends there.
"""

from __future__ import annotations

import enum
import heapq
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ErrorCode, LocalProtocolError
from .._query import Query

__all__ = [
    "Aggregation",
    "Mode",
    "TargetStatus",
    "VaultStatus",
    "default_mode",
    "sort_key",
    "status_for_code",
]


class VaultStatus(enum.Enum):
    """What became of one target vault in one aggregated request."""

    OK = "ok"  # every row it has was delivered
    TRUNCATED = "truncated"  # rows remain: resume with the cursor
    DENIED = "denied"  # the vault refused the invocation or the query (final)
    TIMEOUT = "timeout"  # the per-vault deadline passed
    UNREACHABLE = "unreachable"  # no connection, or it went away mid-stream
    ERROR = "error"  # it failed, broke the protocol or sent something unusable
    CANCELLED = "cancelled"  # abandoned because a strict request had already failed

    @property
    def failed(self) -> bool:
        """The vault itself failed (cancelled ones were stopped by us, not by a fault)."""
        return self not in (VaultStatus.OK, VaultStatus.TRUNCATED, VaultStatus.CANCELLED)


class Mode(enum.Enum):
    STRICT = "strict"  # any failed vault fails the request
    BEST_EFFORT = "best_effort"  # deliver what arrived, with the statuses


def default_mode(query: Query) -> Mode:
    """Strict for aggregates (a partial sum is a wrong sum), best effort for row listings."""
    return Mode.STRICT if query.op in ("count", "aggregate") else Mode.BEST_EFFORT


_DENIED_CODES = frozenset(
    {c for c in ErrorCode if c.value < 140} | {ErrorCode.NOT_PERMITTED, ErrorCode.ROW_LIMIT}
)


def status_for_code(code: ErrorCode) -> VaultStatus:
    """The status a vault's error frame gives its target."""
    if code in _DENIED_CODES:
        return VaultStatus.DENIED
    if code is ErrorCode.DEADLINE:
        return VaultStatus.TIMEOUT
    if code is ErrorCode.UNAVAILABLE:
        return VaultStatus.UNREACHABLE
    return VaultStatus.ERROR


@dataclass(frozen=True, kw_only=True)
class TargetStatus:
    """The final word on one target. ``cursor`` is ``(as_of, offset)`` to resume it (``as_of``
    0: it never answered, so a resumed query pins afresh); ``rows`` were delivered from it."""

    index: int
    status: VaultStatus
    rows: int = 0
    as_of: int = 0
    code: ErrorCode | None = None
    message: str = ""
    cursor: tuple[int, int] | None = None


def sort_key(value: Any) -> tuple[int, Any]:
    """SQLite's order of the values ``json_extract`` yields: NULL, then numbers (true/false are
    1/0), then text by UTF-8 bytes (objects and arrays compare as their canonical JSON text)."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (2, json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


class _Desc:
    """Reverses a key's order (``ORDER BY … DESC``); ties stay by target index and vault order."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, Any]) -> None:
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return other.key < self.key

    def __le__(self, other: _Desc) -> bool:
        return other.key <= self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


class _Target:
    __slots__ = (
        "as_of",
        "code",
        "consumed",
        "end_cursor",
        "ended",
        "failed",
        "last_key",
        "message",
        "offset",
        "queue",
        "queued_bytes",
        "received",
    )

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.as_of = 0
        self.received = 0
        self.consumed = 0
        self.ended = False
        self.end_cursor: tuple[int, int] | None = None
        self.failed: VaultStatus | None = None
        self.code: ErrorCode | None = None
        self.message = ""
        self.queue: deque[tuple[Any, Any, bytes]] = deque()  # (key, decoded row, row bytes)
        self.queued_bytes = 0
        self.last_key: Any = None

    @property
    def settled(self) -> bool:
        return self.ended or self.failed is not None


class Aggregation:
    """The merge state of one aggregated request over ``len(offsets)`` targets.

    ``offsets`` are the per-target query offsets (0 on a first page). Memory: the rows queued
    here (:attr:`queued_bytes`), which the adapter bounds by granting vault credit only while
    :meth:`wants_more` says so.
    """

    def __init__(self, query: Query, offsets: Sequence[int], *, mode: Mode) -> None:
        if not offsets:
            raise LocalProtocolError("an aggregation needs at least one target")
        self.query = query
        self.mode = mode
        self.limit = query.limit
        self._targets = [_Target(o) for o in offsets]
        self._unsettled = len(offsets)  # kept as a count: finished is checked per wake-up
        self._combine = query.op in ("count", "aggregate")
        self._ordered = self._combine or query.order is not None
        self._fn = "count" if query.agg is None else query.agg.fn
        self._field = "group" if self._combine else (query.order[0] if query.order else "")
        self._desc = (not self._combine) and query.order is not None and query.order[1]
        self._grouped = query.agg is not None and query.agg.group is not None
        self.emitted = 0
        self.queued_bytes = 0
        self.stopped = False  # no more output: limit reached, page bound, or strict failure
        self.failed = False  # a strict request failed
        self._page_ended = False  # ordered: the merge reached a truncated target's last row
        # unordered: arrival order of (target, row); ordered: a heap of each target's head
        self._fifo: deque[tuple[int, bytes]] = deque()
        self._heap: list[tuple[Any, int]] = []
        self._waiting = len(offsets)  # ordered: targets with nothing queued that may send more
        self._bound: tuple[Any, int] | None = None  # ordered: a truncated target's last row
        # combining: the group being summed up, and which targets contributed to it
        self._pending: tuple[Any, Any, Any, list[int]] | None = None

    # --- what the vaults say -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._targets)

    def header(self, index: int, as_of: int) -> None:
        self._targets[index].as_of = as_of

    def rows(self, index: int, rows: Sequence[bytes]) -> None:
        """Queue a batch from target ``index``. A row an ordered merge cannot read fails the
        target (status error) rather than the request."""
        t = self._targets[index]
        if t.failed is not None:
            return  # it already failed (say, an unreadable row): the rest is ignored
        if t.ended:
            raise LocalProtocolError("rows for a target that already ended")
        if not rows:
            return
        t.received += len(rows)
        if self.stopped:
            return  # nothing more goes out: these rows are not kept (the cursor covers them)
        size = sum(len(r) for r in rows)
        if not self._ordered:
            self._fifo.extend((index, r) for r in rows)
            t.queued_bytes += size
            self.queued_bytes += size
            return
        field, desc = self._field, self._desc
        parsed = []
        for raw in rows:
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                self.fail(
                    index, VaultStatus.ERROR, ErrorCode.PROTOCOL, "a row is not a JSON object"
                )
                return
            key: Any = sort_key(obj.get(field))
            parsed.append((_Desc(key) if desc else key, obj, raw))
        was_empty = not t.queue
        t.queue.extend(parsed)
        t.queued_bytes += size
        self.queued_bytes += size
        if was_empty:
            self._waiting -= 1
            heapq.heappush(self._heap, (t.queue[0][0], index))

    def end(self, index: int, cursor: tuple[int, int] | None) -> None:
        t = self._targets[index]
        if t.failed is not None:
            return
        if t.ended:
            raise LocalProtocolError("a second end for one target")
        t.ended, t.end_cursor = True, cursor
        self._unsettled -= 1
        if self._ordered and not t.queue:
            self._waiting -= 1
            self._exhausted(index)

    def fail(
        self, index: int, status: VaultStatus, code: ErrorCode | None = None, message: str = ""
    ) -> None:
        """Target ``index`` will say nothing more. Its queued rows are dropped (not consumed:
        its cursor says where to retry)."""
        if status in (VaultStatus.OK, VaultStatus.TRUNCATED):
            raise LocalProtocolError("fail() needs a failure status")
        t = self._targets[index]
        if t.settled:
            return
        t.failed, t.code, t.message = status, code, message
        self._unsettled -= 1
        self.queued_bytes -= t.queued_bytes
        t.queued_bytes = 0
        if self._ordered:
            if t.queue:
                t.queue.clear()  # its heap entry goes stale and is skipped
            else:
                self._waiting -= 1
        if self.mode is Mode.STRICT:
            self.failed = self.stopped = True

    def abandon(self, status: VaultStatus, code: ErrorCode, message: str) -> None:
        """Give every target still running ``status`` (the request deadline passed, or the
        client cancelled)."""
        for index, t in enumerate(self._targets):
            if not t.settled:
                self.fail(index, status, code, message)
        self.stopped = True

    def _exhausted(self, index: int) -> None:
        """Ordered: target ``index`` ended and everything it queued was merged."""
        t = self._targets[index]
        if t.end_cursor is not None and t.received:
            bound = (t.last_key, index)
            if self._bound is None or bound < self._bound:
                self._bound = bound

    # --- what goes out -------------------------------------------------------------------------

    def wants_more(self, index: int, budget: int) -> bool:
        """Should target ``index`` be granted another batch? Yes when the merge waits on it, or
        when it has at most ``budget // 8`` queued and the request is under ``budget``."""
        t = self._targets[index]
        if self.stopped or t.settled:
            return False
        if not t.queued_bytes:
            return True
        return self.queued_bytes < budget and t.queued_bytes <= budget // 8

    @property
    def ready(self) -> bool:
        """Whether :meth:`take` may yield rows now or :attr:`finished` may have turned true
        (an adapter wakes its writer only then)."""
        if self.stopped or not self._unsettled:
            return True
        if not self._ordered:
            return bool(self._fifo)
        return not self._waiting

    @property
    def settled(self) -> bool:
        return not self._unsettled

    @property
    def finished(self) -> bool:
        """No more output will come and every target has its final status."""
        if self.stopped:
            return True
        if not self.settled:
            return False
        if self._ordered:
            return not self._heap and self._pending is None
        return not self._fifo

    def take(self, max_rows: int, max_bytes: int = 1 << 18) -> list[tuple[int | None, bytes]]:
        """Merged output rows ready now, tagged with their target (``None`` for a combined
        aggregate row), up to ``max_rows`` and about ``max_bytes``."""
        out: list[tuple[int | None, bytes]] = []
        if self.stopped:
            return out
        budget = max_rows
        if self.limit is not None:
            budget = min(budget, self.limit - self.emitted)
        if not self._ordered:
            size = 0
            while self._fifo and len(out) < budget and size < max_bytes:
                index, raw = self._fifo.popleft()
                t = self._targets[index]
                if t.failed is not None:
                    continue
                t.consumed += 1
                t.queued_bytes -= len(raw)
                self.queued_bytes -= len(raw)
                size += len(raw)
                out.append((index, raw))
        elif self._combine:
            self._take_combined(out, budget)
        else:
            self._take_ordered(out, budget, max_bytes)
        self.emitted += len(out)
        if self.limit is not None and self.emitted >= self.limit:
            self.stopped = True
        return out

    def _pop(self) -> tuple[Any, Any, bytes, int] | None:
        """The next merged (key, row, bytes, target), or None if the merge must wait or stop."""
        heap = self._heap
        if self._page_ended:
            return None
        while heap:
            key, index = heap[0]
            t = self._targets[index]
            if t.failed is not None:
                heapq.heappop(heap)
                continue
            if self._waiting:
                return None
            if self._bound is not None:
                limit_key, limit_index = self._bound
                over = (
                    key > limit_key
                    if self._combine
                    else (key > limit_key or (key == limit_key and index > limit_index))
                )
                if over:
                    self._page_end()
                    return None
            heapq.heappop(heap)
            key, obj, raw = t.queue.popleft()
            t.last_key = key
            t.queued_bytes -= len(raw)
            self.queued_bytes -= len(raw)
            if t.queue:
                heapq.heappush(heap, (t.queue[0][0], index))
            elif t.ended:
                self._exhausted(index)
            else:
                self._waiting += 1
            return key, obj, raw, index
        if not self._waiting and self._bound is not None:
            self._page_end()
        return None

    def _page_end(self) -> None:
        self._page_ended = True
        if not self._combine:
            self.stopped = True

    def _take_ordered(
        self, out: list[tuple[int | None, bytes]], budget: int, max_bytes: int
    ) -> None:
        size = 0
        while len(out) < budget and size < max_bytes:
            item = self._pop()
            if item is None:
                return
            _, _, raw, index = item
            self._targets[index].consumed += 1
            size += len(raw)
            out.append((index, raw))

    def _take_combined(self, out: list[tuple[int | None, bytes]], budget: int) -> None:
        while len(out) < budget:
            item = self._pop()
            if item is None:
                break
            key, obj, _, index = item
            value = obj.get(self._fn)
            if self._pending is not None and self._pending[0] == key:
                _, group, acc, contributors = self._pending
                self._pending = (key, group, self._merge(acc, value), [*contributors, index])
                continue
            if self._pending is not None:
                out.append((None, self._flush_pending()))
            self._pending = (key, obj.get("group"), value, [index])
        # The last group is complete once nothing can join it: every target settled and merged,
        # or the page ended (what remains sorts after it, a truncated target's rest included).
        done = self._page_ended or (not self._heap and self.settled)
        if self._pending is not None and len(out) < budget and done:
            out.append((None, self._flush_pending()))
        if self._page_ended and self._pending is None:
            self.stopped = True

    def _flush_pending(self) -> bytes:
        assert self._pending is not None
        _, group, acc, contributors = self._pending
        self._pending = None
        for index in contributors:
            self._targets[index].consumed += 1
        row: dict[str, Any] = {"group": group, self._fn: acc} if self._grouped else {self._fn: acc}
        return json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode()

    def _merge(self, acc: Any, value: Any) -> Any:
        if value is None:
            return acc
        if acc is None:
            return value
        if self._fn in ("count", "sum"):
            return acc + value
        if self._fn == "min":
            return value if sort_key(value) < sort_key(acc) else acc
        return value if sort_key(acc) < sort_key(value) else acc

    # --- the verdict ---------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.finished and all(s.status is VaultStatus.OK for s in self.statuses())

    def statuses(self) -> list[TargetStatus]:
        """Every target's status. Final once :attr:`finished`; a target still running is
        reported truncated (or cancelled, when a strict request failed; a vault that had
        answered in full is then still ok: the status says what the vault did)."""
        out = []
        for i, t in enumerate(self._targets):
            cursor = (t.as_of, t.offset + t.consumed)
            if t.failed is not None:
                status, resume = t.failed, t.failed is not VaultStatus.DENIED
            elif t.ended and t.consumed == t.received and t.end_cursor is None:
                status, resume = VaultStatus.OK, False
            elif self.failed and t.ended:
                # A strict request failed elsewhere: this vault answered in full, its rows
                # were withheld with everything else.
                status, resume = (
                    (VaultStatus.OK, False)
                    if t.end_cursor is None
                    else (
                        VaultStatus.TRUNCATED,
                        True,
                    )
                )
            elif self.failed:
                status, resume = VaultStatus.CANCELLED, True
            else:
                status, resume = VaultStatus.TRUNCATED, True
            out.append(
                TargetStatus(
                    index=i,
                    status=status,
                    rows=t.consumed,
                    as_of=t.as_of,
                    code=t.code,
                    message=t.message,
                    cursor=cursor if resume else None,
                )
            )
        return out
