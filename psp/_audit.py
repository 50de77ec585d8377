"""The vault's audit log (RFC-NOTES §9.4.5), free of I/O: entries, their hash chain, the
denial counters, and the SQL that makes the log append-only.

Every request a vault answered with ``head`` (its invocation was admitted) gets one entry when
its answer ends: who asked (the holder key), under which capability chain (the leaf link id,
which commits to every link above it through ``prf``), what (the SHA-256 of the query bytes,
the invocation's ``q``), the invocation nonce, the ``as_of`` it was answered at, how many rows
left the vault, how the answer ended, and when. Entries are chained like the data::

    a_0 = 32 zero bytes
    a_n = SHA-256( "PSP-v1 audit" || 0x00 || a_{n-1} || u64(seq) || u64(ts) || holder(32)
                   || cap(32) || q(32) || qid(16) || u64(as_of) || u64(rows) || u16(status) )

Requests refused before ``head`` are not entries: they are counted per error code, and nothing
the requester sent is stored (its bytes are not authenticated).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._errors import ErrorCode

__all__ = [
    "AUDIT_SCHEMA",
    "GENESIS",
    "STATUS_CLOSED",
    "STATUS_END",
    "AuditChainCheck",
    "AuditDraft",
    "AuditEntry",
    "DenialCounts",
    "audit_hash",
    "check_audit_chain",
    "entry_from_row",
    "status_name",
]

GENESIS = bytes(32)
DOMAIN = b"PSP-v1 audit\x00"
STATUS_END = 0  # the answer ended with ``end``
STATUS_CLOSED = 1  # the connection closed before the answer's end (or the vault closed it)
_FIXED = struct.Struct(">QQ32s32s32s16sQQH")
COUNTER_FLUSH = 2  # seconds denial counts may wait in memory before a commit takes them

# Created with the store, and on the first writable open of a store from before it. The audit
# table is WORM like the entries; the denial counters may only grow.
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, holder BLOB NOT NULL, cap BLOB NOT NULL,
    query BLOB NOT NULL, qid BLOB NOT NULL, as_of INTEGER NOT NULL, rows INTEGER NOT NULL,
    status INTEGER NOT NULL, hash BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts);
CREATE TRIGGER IF NOT EXISTS audit_never_updated BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'WORM: audit entries are never updated'); END;
CREATE TRIGGER IF NOT EXISTS audit_never_deleted BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'WORM: audit entries are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS audit_appended_in_order BEFORE INSERT ON audit
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit)
BEGIN SELECT RAISE(ABORT, 'WORM: audit sequence numbers are consecutive'); END;
CREATE TABLE IF NOT EXISTS denials (
    code INTEGER PRIMARY KEY, count INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS denials_only_grow BEFORE UPDATE ON denials
WHEN NEW.count < OLD.count OR NEW.code IS NOT OLD.code
BEGIN SELECT RAISE(ABORT, 'WORM: denial counters only grow'); END;
CREATE TRIGGER IF NOT EXISTS denials_never_deleted BEFORE DELETE ON denials
BEGIN SELECT RAISE(ABORT, 'WORM: denial counters are never deleted'); END;
"""
AUDIT_TABLES = ("audit", "denials")


@dataclass(frozen=True, kw_only=True)
class AuditDraft:
    """What the vault knows of a request once it admitted it (the entry lacks rows and end)."""

    holder: bytes
    cap: bytes  # the leaf link id: the id of the capability chain
    query: bytes  # SHA-256 of the query bytes (the invocation's ``q``)
    qid: bytes  # the invocation nonce (the ``qid`` of the ``head``)
    as_of: int


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    seq: int
    ts: int
    holder: bytes
    cap: bytes
    query: bytes
    qid: bytes
    as_of: int
    rows: int
    status: int

    @classmethod
    def of(cls, draft: AuditDraft, *, seq: int, ts: int, rows: int, status: int) -> AuditEntry:
        return cls(
            seq=seq,
            ts=ts,
            holder=draft.holder,
            cap=draft.cap,
            query=draft.query,
            qid=draft.qid,
            as_of=draft.as_of,
            rows=rows,
            status=status,
        )

    def row(self, hash_: bytes) -> tuple[Any, ...]:
        """The ``audit`` table row, column order of :data:`AUDIT_SCHEMA`."""
        return (
            self.seq,
            self.ts,
            self.holder,
            self.cap,
            self.query,
            self.qid,
            self.as_of,
            self.rows,
            self.status,
            hash_,
        )


def audit_hash(prev: bytes, entry: AuditEntry) -> bytes:
    """``a_n`` from ``a_{n-1}``; every field has a fixed size, so no two entries hash alike."""
    return hashlib.sha256(
        DOMAIN
        + prev
        + _FIXED.pack(
            entry.seq,
            entry.ts,
            entry.holder,
            entry.cap,
            entry.query,
            entry.qid,
            entry.as_of,
            entry.rows,
            entry.status,
        )
    ).digest()


def status_name(status: int) -> str:
    """``end``, ``closed``, or the name of the error code the answer ended with."""
    if status == STATUS_END:
        return "end"
    if status == STATUS_CLOSED:
        return "closed"
    try:
        return ErrorCode(status).name
    except ValueError:
        return f"code {status}"


_SIZES = (("holder", 32), ("cap", 32), ("query", 32), ("qid", 16))


@dataclass(frozen=True, kw_only=True)
class AuditChainCheck:
    entries: int
    head: bytes
    first_broken: int | None = None
    reason: str = ""


def entry_from_row(row: tuple[Any, ...]) -> tuple[AuditEntry, bytes] | str:
    """An ``audit`` table row as an entry and its stored hash, or why it cannot be one."""
    seq, ts, holder, cap, query, qid, as_of, rows, status, stored = row
    values = {"holder": holder, "cap": cap, "query": query, "qid": qid}
    for name, size in _SIZES:
        if not isinstance(values[name], bytes) or len(values[name]) != size:
            return f"its {name} is not {size} bytes"
    for name, value, bits in (
        ("ts", ts, 64),
        ("as_of", as_of, 64),
        ("rows", rows, 64),
        ("status", status, 16),
    ):
        if not isinstance(value, int) or not 0 <= value < 1 << bits:
            return f"its {name} is out of range"
    if not isinstance(stored, bytes):
        return "its hash is not 32 bytes"
    entry = AuditEntry(
        seq=seq,
        ts=ts,
        holder=holder,
        cap=cap,
        query=query,
        qid=qid,
        as_of=as_of,
        rows=rows,
        status=status,
    )
    return entry, stored


def check_audit_chain(rows: Iterable[tuple[Any, ...]]) -> AuditChainCheck:
    """Recompute the audit chain over ``audit`` rows in ``seq`` order; name the first entry
    that is missing, malformed, or whose hash differs."""
    prev, count = GENESIS, 0
    for row in rows:
        expected = count + 1
        if row[0] != expected:
            return AuditChainCheck(
                entries=count, head=prev, first_broken=expected, reason="audit entry missing"
            )
        parsed = entry_from_row(row)
        if isinstance(parsed, str):
            return AuditChainCheck(entries=count, head=prev, first_broken=expected, reason=parsed)
        entry, stored = parsed
        h = audit_hash(prev, entry)
        if h != stored:
            return AuditChainCheck(
                entries=count,
                head=prev,
                first_broken=expected,
                reason="hash does not match its contents and predecessor",
            )
        prev, count = h, expected
    return AuditChainCheck(entries=count, head=prev)


@dataclass(kw_only=True)
class DenialCounts:
    """Refusals counted per error code in memory until the next audit commit takes them
    (:meth:`take`). Only the code and the vault's clock are kept: nothing a requester sent."""

    pending: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # code: n, first, last
    flushed_at: int = 0

    def add(self, code: int, now: int) -> None:
        n, first, _ = self.pending.get(code, (0, now, now))
        self.pending[code] = (n + 1, first, now)

    def due(self, now: int) -> bool:
        """Counts waited long enough: commit them even with no audit entry to carry them."""
        return bool(self.pending) and now - self.flushed_at >= COUNTER_FLUSH

    def take(self, now: int) -> dict[int, tuple[int, int, int]]:
        taken, self.pending = self.pending, {}
        self.flushed_at = now
        return taken

    def put_back(self, taken: dict[int, tuple[int, int, int]]) -> None:
        """A commit that failed: its counts wait for the next one."""
        for code, (n, first, last) in taken.items():
            m, f, la = self.pending.get(code, (0, first, last))
            self.pending[code] = (n + m, min(first, f), max(last, la))
