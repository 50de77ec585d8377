"""The audit log in the vault's store (RFC-NOTES §9.4.5): group commit of entries, denial
counters, reading and verifying.

Entries wait in :class:`AuditLog` (on the event loop) until a commit takes them all at once
(:meth:`AuditLog.take`, :meth:`AuditLog.commit` on a worker thread, :meth:`AuditLog.settle`
back on the loop). The transports hold an answer's last frame until the commit that carries its
entry returned (``synchronous=FULL``: the WAL is on disk), so every answer a client received
in full has a durable entry, and concurrent answers share one fsync. A commit that fails
(disk full, read-only) makes every answer in it close its connection instead of ending; those
entries are kept, as "closed", for the next commit.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._audit import (
    COUNTER_FLUSH,
    GENESIS,
    STATUS_CLOSED,
    AuditChainCheck,
    AuditDraft,
    AuditEntry,
    DenialCounts,
    audit_hash,
    check_audit_chain,
    entry_from_row,
)

__all__ = [
    "AuditBatch",
    "AuditLog",
    "GroupCommit",
    "iter_audit",
    "read_audit",
    "read_denials",
    "verify_audit",
]

log = logging.getLogger("psp.audit")
MAX_PENDING = 65536  # entries kept for a store that refuses writes, beyond which they are dropped
_INSERT = "INSERT INTO audit (seq, ts, holder, cap, query, qid, as_of, rows, status, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_COUNT = (
    "INSERT INTO denials (code, count, first, last) VALUES (?, ?, ?, ?) ON CONFLICT (code) "
    "DO UPDATE SET count = count + excluded.count, last = max(last, excluded.last)"
)
_COLUMNS = "seq, ts, holder, cap, query, qid, as_of, rows, status, hash"

# ticket, draft, time, rows, status
Pending = tuple[int, AuditDraft, int, int, int]


@dataclass(kw_only=True)
class AuditBatch:
    entries: list[Pending]
    denials: dict[int, tuple[int, int, int]]
    ok: bool = False


class AuditLog:
    """A vault's audit writer: a connection of its own (``synchronous=FULL``) and the entries
    and denial counts not yet committed. ``enabled=False`` records nothing (what the vault did
    before the log existed; the benchmark's baseline)."""

    def __init__(self, file: Path, *, now: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self._db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._pending: list[Pending] = []
        self._next = 1
        self.durable_upto = 0  # every ticket up to here is settled: written, or failed
        self._failed: set[int] = set()
        # The first denial after a quiet spell is committed at once, later ones with the next
        # audit commit or COUNTER_FLUSH seconds later.
        self.denials = DenialCounts(flushed_at=now - COUNTER_FLUSH)
        self.committing = False

    def record(self, draft: AuditDraft, *, rows: int, status: int, now: int) -> int:
        """Queue an answer's entry; the ticket to wait on before its last frame leaves (0: no
        entry to wait for)."""
        if not self.enabled:
            return 0
        ticket = self._next
        self._next += 1
        self._pending.append((ticket, draft, now, rows, status))
        return ticket

    def deny(self, code: int, now: int) -> None:
        if self.enabled:
            self.denials.add(code, now)

    def is_durable(self, ticket: int) -> bool:
        return ticket <= self.durable_upto and ticket not in self._failed

    def settled_failed(self, ticket: int) -> bool:
        """True (once) if ``ticket``'s commit failed: its answer must not end."""
        if ticket <= self.durable_upto and ticket in self._failed:
            self._failed.discard(ticket)
            return True
        return False

    def take(self, now: int) -> AuditBatch:
        batch = AuditBatch(entries=self._pending, denials=self.denials.take(now))
        self._pending = []
        return batch

    def commit(self, batch: AuditBatch) -> None:
        """Write a batch in one transaction (blocking: a worker thread's job). Sets ``ok``."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            # Read in the transaction: another process serving the same store may append too.
            row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))
            rows = []
            for _, draft, ts, n, status in batch.entries:
                seq += 1
                entry = AuditEntry.of(draft, seq=seq, ts=ts, rows=n, status=status)
                prev = audit_hash(prev, entry)
                rows.append(entry.row(prev))
            db.executemany(_INSERT, rows)
            if batch.denials:
                db.executemany(_COUNT, [(c, *v) for c, v in sorted(batch.denials.items())])
            db.execute("COMMIT")
            batch.ok = True
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            log.warning("ppn: the audit log could not be written (%s); answers end unsent", exc)

    def settle(self, batch: AuditBatch) -> None:
        """Back on the event loop: mark the batch's tickets settled."""
        if batch.entries:
            self.durable_upto = max(self.durable_upto, batch.entries[-1][0])
        if batch.ok:
            return
        self.denials.put_back(batch.denials)
        if len(self._failed) > MAX_PENDING:
            self._failed.clear()
        for ticket, draft, ts, n, _ in batch.entries:
            self._failed.add(ticket)
            if len(self._pending) < MAX_PENDING:
                # Its answer closes instead of ending: keep the entry as what happened.
                self._pending.append((self._next, draft, ts, n, STATUS_CLOSED))
                self._next += 1

    def close(self, now: int) -> None:
        """Commit what is left (a vault shutting down cleanly loses no entry and no count)."""
        if self._pending or self.denials.pending:
            batch = self.take(now)
            self.commit(batch)
            self.settle(batch)
        self._db.close()


class GroupCommit:
    """The event-loop-independent half of the group commit: the first answer waiting with no
    commit running commits every pending entry; the others wait for it to settle and go into
    the next batch. An adapter gives it an event type and :meth:`_run`, which runs
    :meth:`AuditLog.commit` on a worker thread and then calls :meth:`_finish` exactly once, also
    when the waiting task is cancelled (the thread is not abandoned)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._settled = self._event()

    def _event(self) -> Any:
        raise NotImplementedError

    async def _run(self, batch: AuditBatch) -> None:
        raise NotImplementedError

    async def durable(self, ticket: int, now: int) -> bool:
        """Wait until ``ticket``'s entry is on disk. False if its commit failed (the answer
        must then close its connection instead of ending)."""
        log = self.log
        while not log.is_durable(ticket):
            if log.settled_failed(ticket):
                return False
            if log.committing:
                await self._settled.wait()
            else:
                await self.commit(now)
        return True

    async def commit(self, now: int) -> None:
        """Commit everything pending now (also denial counts alone)."""
        self.log.committing = True
        await self._run(self.log.take(now))

    def _finish(self, batch: AuditBatch) -> None:
        self.log.settle(batch)
        self.log.committing = False
        settled, self._settled = self._settled, self._event()
        settled.set()


def _reader(file: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)


def iter_audit(file: Path, *, since: int = 0) -> Iterator[tuple[AuditEntry, bytes]]:
    """Entries with ``ts >= since``, oldest first, each with its stored chain hash, read as they
    are used (a log of years is never held in memory)."""
    db = _reader(file)
    try:
        for row in db.execute(f"SELECT {_COLUMNS} FROM audit WHERE ts >= ? ORDER BY seq", (since,)):
            parsed = entry_from_row(row)
            if not isinstance(parsed, str):
                yield parsed
    finally:
        db.close()


def read_audit(file: Path, *, since: int = 0) -> list[tuple[AuditEntry, bytes]]:
    return list(iter_audit(file, since=since))


def read_denials(file: Path) -> list[tuple[int, int, int, int]]:
    """``(code, count, first, last)`` per error code, by code."""
    db = _reader(file)
    try:
        return [
            (int(c), int(n), int(f), int(la))
            for c, n, f, la in db.execute(
                "SELECT code, count, first, last FROM denials ORDER BY code"
            )
        ]
    finally:
        db.close()


def verify_audit(file: Path) -> AuditChainCheck:
    db = _reader(file)
    try:
        return check_audit_chain(db.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq"))
    finally:
        db.close()
