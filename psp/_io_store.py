"""The vault's embedded WORM store: SQLite (stdlib), append or supersede, never update or delete.

WORM is enforced by the database itself (triggers that ``RAISE(ABORT)`` on UPDATE and DELETE,
and on an INSERT whose sequence number is not the next one), not only by this module. Every
entry carries its hash-chain link (``_chain``); :meth:`Store.verify` recomputes the chain and
names the first broken link. Crash safety: WAL journal with ``synchronous=FULL``, so a
transaction that returned has reached the disk, and a killed writer leaves no torn entry.

Queries are pinned to an ``as_of`` sequence number: an entry is visible when its seq is at most
``as_of`` and no entry at or below ``as_of`` supersedes it, so a query repeated with the same
``as_of`` returns the same rows while appends go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._audit import AUDIT_SCHEMA, AUDIT_TABLES, AuditDraft
from ._chain import GENESIS, RecordError, canonical_json, entry_hash
from ._errors import ErrorCode, PSPError, QueryError
from ._query import Filter, Query
from ._scope import ANY, Scope, valid_collection, valid_field

__all__ = [
    "DB_FILE",
    "KEY_FILE",
    "ChainReport",
    "ImportReport",
    "PersistentReplaySet",
    "ReplicaStoreError",
    "ResultCursor",
    "Store",
    "StoreError",
]

DB_FILE = "vault.sqlite"
REPLICA_META = "replica_of"  # meta key of a replica's store: the primary's vault id (hex)
KEY_FILE = "vault.key"
_PRIVATE_FILES = (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", DB_FILE + "-journal", KEY_FILE)
log = logging.getLogger("psp.store")

# Added after psp-vault-1 stores existed, so also created on open (IF NOT EXISTS). Neither is
# WORM: the replay set drops a nonce once its invocation expired; import checkpoints only grow.
_SCHEMA_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS replay (nonce BLOB PRIMARY KEY, expires INTEGER NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS replay_by_expiry ON replay (expires);
CREATE TABLE IF NOT EXISTS imports (
    digest BLOB NOT NULL, collection TEXT NOT NULL, lines INTEGER NOT NULL, span INTEGER NOT NULL,
    seq INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS imports_by_collection ON imports (collection);
"""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    ts INTEGER NOT NULL,
    supersedes INTEGER,
    payload TEXT NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX entries_by_collection ON entries (collection, seq);
CREATE INDEX entries_by_supersedes ON entries (supersedes) WHERE supersedes IS NOT NULL;
CREATE TABLE revocations (id INTEGER PRIMARY KEY, link BLOB NOT NULL UNIQUE, ts INTEGER NOT NULL) STRICT;

CREATE TRIGGER entries_never_updated BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'WORM: entries are never updated'); END;
CREATE TRIGGER entries_never_deleted BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'WORM: entries are never deleted'); END;
CREATE TRIGGER entries_appended_in_order BEFORE INSERT ON entries
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM entries)
BEGIN SELECT RAISE(ABORT, 'WORM: sequence numbers are consecutive'); END;
CREATE TRIGGER entries_supersede_existing BEFORE INSERT ON entries
WHEN NEW.supersedes IS NOT NULL AND (
    NOT EXISTS (SELECT 1 FROM entries WHERE seq = NEW.supersedes AND collection = NEW.collection)
    OR EXISTS (SELECT 1 FROM entries WHERE supersedes = NEW.supersedes))
BEGIN SELECT RAISE(ABORT, 'WORM: supersede a current entry of the same collection'); END;
CREATE TRIGGER meta_never_updated BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'WORM: metadata is never updated'); END;
CREATE TRIGGER meta_never_deleted BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'WORM: metadata is never deleted'); END;
CREATE TRIGGER revocations_never_updated BEFORE UPDATE ON revocations
BEGIN SELECT RAISE(ABORT, 'WORM: revocations are never updated'); END;
CREATE TRIGGER revocations_never_deleted BEFORE DELETE ON revocations
BEGIN SELECT RAISE(ABORT, 'WORM: revocations are never deleted'); END;
"""


class StoreError(PSPError):
    """The store is missing, not a vault, or refused a write (the message says which)."""


class ReplicaStoreError(StoreError):
    """An append to a replica's store: its entries come only from its primary (RFC-NOTES §9.5.1)."""


def _why(exc: sqlite3.Error, path: Path) -> str:
    """One sentence for a SQLite failure: the disk's condition when it is one."""
    name = getattr(exc, "sqlite_errorname", "")
    try:
        read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return f"{path} is on a read-only file system"
    if name.startswith("SQLITE_READONLY") or "readonly" in str(exc):
        return f"{path} is on a read-only file system or not writable"
    if name == "SQLITE_FULL" or "disk is full" in str(exc):
        return f"the disk holding {path} is full"
    if name.startswith("SQLITE_CANTOPEN"):
        return f"cannot open {path} (missing, or its directory is not writable)"
    if name.startswith("SQLITE_IOERR"):
        return f"an I/O error on {path}"
    if name == "SQLITE_NOTADB":
        return f"{path} is not a PSP vault store"
    return f"{path}: {exc}"


def _private(path: Path, *, create: bool) -> None:
    """The store directory 0700 and its files 0600, whatever the umask: a looser mode is
    tightened (and said so), or the store refused if that is impossible."""
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for p, want in ((path, 0o700), *((path / f, 0o600) for f in _PRIVATE_FILES)):
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot read the mode of {p}: {exc.strerror}") from None
        if mode & 0o077:
            try:
                os.chmod(p, want)
            except OSError as exc:
                raise StoreError(
                    f"{p} is open to other users (mode {mode:04o}) and cannot be tightened "
                    f"to {want:04o}: {exc.strerror}"
                ) from None
            if not create:
                log.warning(
                    "ppn: tightened %s from mode %04o to %04o (a store is private to its owner)",
                    p,
                    mode,
                    want,
                )


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    entries: int
    head: bytes
    first_broken: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.first_broken is None


def _extract(field: str, fn: str = "json_extract") -> str:
    """``json_extract(e.payload, '$.field')`` with the path inline, so an expression index on the
    field (:meth:`Store.create_index`) can serve it. Field names are [A-Za-z][A-Za-z0-9_]*, checked
    here again because this is SQL text."""
    if not valid_field(field):
        raise QueryError(ErrorCode.QUERY_INVALID, f"invalid field name {field!r}")
    return f"{fn}(e.payload, '$.{field}')"


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "literal"
    return "number" if isinstance(value, int) else "text"


def _guard(field: str, kind: str) -> str:
    if kind == "number":
        return f"{_extract(field, 'json_type')} IN ('integer', 'real')"
    return f"{_extract(field, 'json_type')} = 'text'"


def _filter_sql(f: Filter, params: list[Any]) -> str:
    """SQL for one filter, appending its parameters. A value matches only a JSON value of its own
    kind: integers match numbers, text matches strings, true/false/nil match only themselves
    (json_extract maps true to 1, so without the kind check 1 would match true)."""
    value = _extract(f.field)
    if f.op in ("eq", "in"):
        parts = []
        for kind in ("number", "text"):
            group = [v for v in f.args if _kind(v) == kind]
            if group:
                parts.append(
                    f"({value} IN ({', '.join('?' * len(group))}) AND {_guard(f.field, kind)})"
                )
                params.extend(group)
        for literal in dict.fromkeys(v for v in f.args if _kind(v) == "literal"):
            name = "null" if literal is None else "true" if literal else "false"
            parts.append(f"{_extract(f.field, 'json_type')} = '{name}'")
        return "(" + " OR ".join(parts) + ")"
    if f.op == "range":
        bounds = [b for b in f.args if b is not None]
        parts = [_guard(f.field, _kind(bounds[0]))]
        for bound, op in zip(f.args, (">=", "<"), strict=True):
            if bound is not None:
                parts.append(f"{value} {op} ?")
                params.append(bound)
        return "(" + " AND ".join(parts) + ")"
    # prefix: an exact leading-substring test (LIKE would treat % and _ as wildcards)
    prefix = f.args[0]
    params.extend([len(prefix), prefix])
    return f"({_guard(f.field, 'text')} AND substr({value}, 1, ?) = ?)"


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    imported: int
    skipped: int  # records an earlier run of the same lines had already appended
    head: int


class PersistentReplaySet:
    """The verifier's replay set, kept in the store for each nonce's window (RFC-NOTES §9.8),
    so a captured invocation is refused after a restart too.

    Writes go through a connection of their own with ``synchronous=NORMAL``: a nonce survives
    the vault process dying at once, and costs no fsync per request (a power loss can forget the
    last moments' nonces). A write that finds the store locked (another process appending) waits
    at most 100 ms, then stays pending in memory and is retried with the next one.
    """

    PRUNE_EVERY = 60

    def __init__(self, file: Path, *, now: int) -> None:
        self._db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=100")
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._pending: list[tuple[bytes, int]] = []
        self._pruned = now
        for nonce, expires in self._db.execute(
            "SELECT nonce, expires FROM replay WHERE expires > ?", (now,)
        ):
            self._remember(bytes(nonce), int(expires))

    def _remember(self, nonce: bytes, expires: int) -> None:
        self._expiry[nonce] = expires
        heapq.heappush(self._heap, (expires, nonce))

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: bytes, expires: int) -> None:
        self._remember(nonce, expires)
        self._pending.append((nonce, expires))
        self.flush()

    def flush(self) -> None:
        try:
            if len(self._pending) == 1:
                self._db.execute(
                    "INSERT OR IGNORE INTO replay (nonce, expires) VALUES (?, ?)", self._pending[0]
                )
            else:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR IGNORE INTO replay (nonce, expires) VALUES (?, ?)", self._pending
                )
                self._db.execute("COMMIT")
            self._pending.clear()
        except sqlite3.Error:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if len(self._pending) > 65536:  # the store stays unwritable: keep memory bounded
                log.warning("ppn: cannot record replay nonces in the store; keeping them in memory")
                self._pending.clear()

    def prune(self, now: int) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)
        if now - self._pruned >= self.PRUNE_EVERY:
            self._pruned = now
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("DELETE FROM replay WHERE expires <= ?", (now,))

    def close(self) -> None:
        if self._pending:
            self.flush()
        self._db.close()


class Interrupted(Exception):
    """A query ran past its slice on the event loop; it moves to a worker (RFC-NOTES §9.8)."""


FAST_SLICE = 0.002  # CPU seconds a query may run on the event loop per step before it moves
# SQLite VM instructions a query may use in all (on a worker). A json_extract filter costs a
# few instructions per row: a prefix count over 200,000 rows takes about 3.7 million (0.8 s).
SCAN_BUDGET = 100_000_000
QUERY_DEADLINE = 30.0  # seconds a query may run in all (on a worker)
_FAST_STEP = 1000  # VM instructions between two checks on the event loop
_BUDGET_STEP = 20_000  # ... and on a worker


class ScanBudget:
    """The progress handler of a query on a worker connection: it interrupts the query once it
    used ``ops`` VM instructions or ran past ``deadline`` (monotonic); ``code`` says which."""

    def __init__(self, ops: int | None = None, seconds: float | None = None) -> None:
        self.left = SCAN_BUDGET if ops is None else ops
        self.deadline = time.monotonic() + (QUERY_DEADLINE if seconds is None else seconds)
        self.code: ErrorCode | None = None

    def __call__(self) -> int:
        self.left -= _BUDGET_STEP
        if self.left < 0:
            self.code = ErrorCode.COST_LIMIT
            return 1
        if time.monotonic() > self.deadline:
            self.code = ErrorCode.DEADLINE
            return 1
        return 0


class ResultCursor:
    """The rows of one admitted query, fetched in batches (so a slow reader costs no memory).

    Prepared by :meth:`Store.prepare`, run by :meth:`start` on a connection. On the event
    loop's connection (``fast``) every step is cut after :data:`FAST_SLICE` and
    :class:`Interrupted` raised; the caller then restarts it on a worker connection under a
    :class:`ScanBudget`, from the rows already sent (the query is pinned to ``as_of`` and
    totally ordered, so the same rows follow).
    """

    def __init__(
        self,
        sql: str,
        params: list[Any],
        *,
        as_of: int,
        limit: int,
        offset: int,
        shape: Any,
        paged: bool,
    ) -> None:
        self._sql = sql
        self._params = params
        self._paged = paged  # the last two parameters are LIMIT and OFFSET
        self._rows: Iterator[tuple[Any, ...]] = iter(())
        self._db: sqlite3.Connection | None = None
        self._fast = False
        self.budget: ScanBudget | None = None
        self.as_of = as_of
        self._limit = limit
        self._offset = offset
        self._shape = shape
        self.count = 0
        self.more = False
        self.done = False
        self.audit: AuditDraft | None = None  # the answer's audit entry, set at admission

    @property
    def started(self) -> bool:
        return self._db is not None

    @property
    def on_worker(self) -> bool:
        return self.budget is not None

    def start(
        self, db: sqlite3.Connection, *, fast: bool = False, budget: ScanBudget | None = None
    ) -> None:
        """Run the statement on ``db`` (again, from the rows already fetched)."""
        params = self._params
        if self._paged:
            params = [*params[:-2], self._limit + 1 - self.count, self._offset + self.count]
        self._db, self._fast, self.budget = db, fast, budget
        if budget is not None:
            db.set_progress_handler(budget, _BUDGET_STEP)
        with self._slice():
            cur = db.execute(self._sql, params)
            self._rows = iter(cur if self._paged else cur.fetchall())

    @contextlib.contextmanager
    def _slice(self) -> Iterator[None]:
        if not self._fast:
            try:
                yield
            except sqlite3.OperationalError as exc:
                if self.budget is not None and self.budget.code is not None:
                    raise QueryError(self.budget.code, self.budget.code.sentence) from None
                raise exc
            return
        db = self._db
        assert db is not None
        # CPU time of this thread, not wall time: a host that deschedules the vault must not
        # push light queries to the workers.
        deadline = time.thread_time() + FAST_SLICE
        db.set_progress_handler(lambda: time.thread_time() > deadline, _FAST_STEP)
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                self._db, self._fast = None, False  # not started any more: a worker restarts it
                raise Interrupted from None
            raise
        finally:
            db.set_progress_handler(None, 0)

    def fetch(self, n: int, max_bytes: int = 512 * 1024) -> list[bytes]:
        """Up to ``n`` rows (and about ``max_bytes``) as JSON text bytes; ``done`` is set once
        every row was fetched. On :class:`Interrupted` no row of this call counts as fetched."""
        out: list[bytes] = []
        size = 0
        try:
            with self._slice():
                while len(out) < n and size < max_bytes and not self.done:
                    row = next(self._rows, None)
                    if row is None:
                        self.done = True
                        break
                    if self.count == self._limit:
                        self.more, self.done = True, True  # the (limit+1)th row: resumable
                        break
                    out.append(self._shape(row))
                    size += len(out[-1])
                    self.count += 1
        except Interrupted:
            self.count -= len(out)
            raise
        return out

    def release(self) -> sqlite3.Connection | None:
        """Detach from a worker connection (returned, its handler removed) once done or dropped."""
        db, self._db = self._db, None
        self._rows = iter(())
        if db is not None and self.budget is not None:
            db.set_progress_handler(None, 0)
            return db
        return None

    @property
    def seal(self) -> bytes | None:
        """The signature an answer's ``end`` carries: only a replicate answer has one."""
        return None

    @property
    def resume_offset(self) -> int | None:
        """Offset to resume from with the same ``as_of`` if rows remain, else None."""
        return self._offset + self.count if self.more else None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Store:
    """One vault's store directory: ``vault.sqlite`` and the vault key ``vault.key``."""

    def __init__(self, directory: Path, db: sqlite3.Connection) -> None:
        self.directory = directory
        self._db = db
        self._revocations_seen = 0
        # Off only to measure what the slices cost (benchmarks/bench_psp.py).
        self.slicing = True
        # A replica's entries come only from its primary (psp/_io_replica.py), never appended.
        self.replica = self.meta(REPLICA_META) is not None

    # --- lifecycle ---

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], *, name: str, vault_id: bytes, now: int
    ) -> Store:
        path = Path(directory)
        if (path / DB_FILE).exists():
            raise StoreError(f"{path} already holds a vault")
        _private(path, create=True)
        # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the database's mode.
        os.close(os.open(path / DB_FILE, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path / DB_FILE, 0o600)
        db = cls._connect(path / DB_FILE)
        with db:
            db.executescript(_SCHEMA + _SCHEMA_BOOKKEEPING + AUDIT_SCHEMA)
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format", "psp-vault-1"),
                    ("name", name),
                    ("vault_id", vault_id.hex()),
                    ("created", str(now)),
                ],
            )
        return cls(path, db)

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Store:
        path = Path(directory)
        if not (path / DB_FILE).is_file():
            raise StoreError(f"{path} holds no vault (run 'ppn vault init --store {path}')")
        _private(path, create=False)
        try:
            db = cls._connect(path / DB_FILE)
            fmt = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(_why(exc, path / DB_FILE)) from None
        if fmt is None or fmt[0] != "psp-vault-1":
            raise StoreError(f"{path / DB_FILE} is not a PSP vault store")
        try:
            tables = ("replay", "imports", *AUDIT_TABLES)
            if db.execute(
                f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({', '.join('?' * len(tables))})",
                tables,
            ).fetchone()[0] != len(tables):
                db.executescript(_SCHEMA_BOOKKEEPING + AUDIT_SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreError(_why(exc, path / DB_FILE)) from None
        return cls(path, db)

    @staticmethod
    def _connect(file: Path) -> sqlite3.Connection:
        db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def vault_id(self) -> bytes:
        return bytes.fromhex(self.meta("vault_id") or "")

    @property
    def name(self) -> str:
        return self.meta("name") or ""

    # --- writing ---

    def head(self) -> tuple[int, bytes]:
        row = self._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def append(
        self, collection: str, record: Any, *, now: int, supersedes: int | None = None
    ) -> int:
        """Append one record (one transaction). Returns its sequence number once durable."""
        return self.append_many(collection, [record], now=now, supersedes=[supersedes])

    def append_many(
        self,
        collection: str,
        records: Iterable[Any],
        *,
        now: int,
        supersedes: list[int | None] | None = None,
        checkpoint: tuple[bytes, int, int] | None = None,
    ) -> int:
        """Append records in one transaction; all or none. Returns the last sequence number.
        ``checkpoint`` (digest, lines, span) records an import's progress in the same
        transaction (:meth:`import_lines`)."""
        if self.replica:
            raise ReplicaStoreError(
                f"{self.directory} is a replica: its entries come only from its primary "
                "(append there; 'ppn vault follow' copies them here)"
            )
        if not valid_collection(collection):
            raise StoreError("a collection name is letters, digits, '_', '.', '-' (at most 64)")
        try:
            payloads = [canonical_json(r) for r in records]
        except RecordError as exc:
            raise StoreError(str(exc)) from None
        sups = supersedes or [None] * len(payloads)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            seq, prev = self.head()
            rows = []
            for payload, sup in zip(payloads, sups, strict=True):
                seq += 1
                prev = entry_hash(
                    prev, seq=seq, ts=now, supersedes=sup, collection=collection, payload=payload
                )
                rows.append((seq, collection, now, sup, payload.decode("utf-8"), prev))
            db.executemany(
                "INSERT INTO entries (seq, collection, ts, supersedes, payload, hash) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            if checkpoint is not None:
                db.execute(
                    "INSERT INTO imports (digest, collection, lines, span, seq) VALUES (?, ?, ?, ?, ?)",
                    (*checkpoint[:1], collection, *checkpoint[1:], seq),
                )
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if isinstance(exc, sqlite3.IntegrityError):
                raise StoreError(f"the store refused the append: {exc}") from None
            raise StoreError(f"the store refused the append: {_why(exc, self.file)}") from None
        return seq

    @property
    def file(self) -> Path:
        return self.directory / DB_FILE

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (a full disk does that itself)

    def import_lines(
        self,
        collection: str,
        lines: Iterable[str],
        *,
        parse: Callable[[str, int], Any],
        batch: int,
        now: Callable[[], int],
        resume: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Append the records of JSON lines in transactions of ``batch`` records.

        Every transaction also records a checkpoint: SHA-256 of the collection name and every
        line read so far, with the line count. With ``resume`` (the default) lines whose prefix
        was already imported into this collection are skipped, so rerunning an import that was
        killed, or that completed, never appends a record twice (RFC-NOTES §9.4.4). Skipping
        holds at most one earlier batch of records: a run records a checkpoint at least every
        ``span`` lines, so once the longest span passes with no match no later one can match.
        """
        marks: dict[bytes, int] = {}
        span_max = 0
        if resume:
            for digest, n, span in self._db.execute(
                "SELECT digest, lines, span FROM imports WHERE collection = ?", (collection,)
            ):
                marks[bytes(digest)] = int(n)
                span_max = max(span_max, int(span))
        last_mark = max(marks.values(), default=0)
        h = hashlib.sha256(collection.encode("utf-8") + b"\n")
        pending: list[Any] = []
        matched = 0  # the line of the last checkpoint matched (or written)
        imported = skipped = 0
        line_no = 0
        for line_no, line in enumerate(lines, 1):
            h.update(line.encode("utf-8"))
            if line.strip():
                pending.append(parse(line, line_no))
            if marks:
                if h.copy().digest() in marks:
                    skipped += len(pending)
                    pending, matched = [], line_no
                    continue
                if line_no - matched <= span_max and line_no <= last_mark:
                    continue  # a checkpoint of an earlier run may still match
                marks = {}  # content this vault never saw: append from here
            if len(pending) >= batch:
                self.append_many(
                    collection,
                    pending,
                    now=now(),
                    checkpoint=(h.digest(), line_no, line_no - matched),
                )
                imported += len(pending)
                pending, matched = [], line_no
                if progress is not None:
                    progress(imported)
        if pending:
            self.append_many(
                collection, pending, now=now(), checkpoint=(h.digest(), line_no, line_no - matched)
            )
            imported += len(pending)
        return ImportReport(imported=imported, skipped=skipped, head=self.head()[0])

    def create_index(self, field: str) -> bool:
        """Index a record field for equality, ``in``, range and order (an expression index; it
        changes no entry). False if it existed."""
        if not valid_field(field):
            raise StoreError("a field name is a letter then letters, digits or '_' (at most 64)")
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (f"field_{field}",)
        ).fetchone()
        self._db.execute(
            f"CREATE INDEX IF NOT EXISTS field_{field} ON entries "
            f"(collection, json_extract(payload, '$.{field}'), seq)"
        )
        return exists is None

    def revoke(self, link: bytes, *, now: int) -> bool:
        """Record a revoked link id. False if it was already revoked."""
        try:
            self._db.execute("INSERT INTO revocations (link, ts) VALUES (?, ?)", (link, now))
        except sqlite3.IntegrityError:
            return False
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"the revocation was not recorded: {_why(exc, self.file)}") from None
        return True

    def poll(self) -> tuple[int, list[bytes]]:
        """The head sequence number and the revocations recorded since the last call, in one
        statement (another process may append or revoke; both are O(1) rowid maxima)."""
        head, last = self._db.execute(
            "SELECT (SELECT max(seq) FROM entries), (SELECT max(id) FROM revocations)"
        ).fetchone()
        if last is not None and last > self._revocations_seen:
            return int(head or 0), self.new_revocations()
        return int(head or 0), []

    def new_revocations(self) -> list[bytes]:
        """Revocations recorded since the last call (another process may add them)."""
        rows = self._db.execute(
            "SELECT id, link FROM revocations WHERE id > ? ORDER BY id", (self._revocations_seen,)
        ).fetchall()
        if rows:
            self._revocations_seen = int(rows[-1][0])
        return [bytes(r[1]) for r in rows]

    # --- verifying ---

    def verify(self) -> ChainReport:
        """Recompute the whole chain; report the first entry whose link does not hold."""
        prev, count, expected_seq = GENESIS, 0, 1
        cur = self._db.execute(
            "SELECT seq, collection, ts, supersedes, payload, hash FROM entries ORDER BY seq"
        )
        for seq, collection, ts, sup, payload, stored in cur:
            if seq != expected_seq:
                return ChainReport(
                    entries=count, head=prev, first_broken=expected_seq, reason="entry missing"
                )
            data = payload.encode("utf-8")
            try:
                canonical = canonical_json(json.loads(payload)) == data
            except (ValueError, RecordError):
                canonical = False
            if not canonical:
                return ChainReport(
                    entries=count, head=prev, first_broken=seq, reason="payload not canonical JSON"
                )
            h = entry_hash(
                prev, seq=seq, ts=ts, supersedes=sup, collection=collection, payload=data
            )
            if h != bytes(stored):
                return ChainReport(
                    entries=count,
                    head=prev,
                    first_broken=seq,
                    reason="hash does not match its contents and predecessor",
                )
            prev, count, expected_seq = h, count + 1, expected_seq + 1
        return ChainReport(entries=count, head=prev)

    # --- querying ---

    def execute(
        self, query: Query, scope: Scope, *, limit: int, head: int | None = None
    ) -> ResultCursor:
        """Run an admitted query within ``scope``; rows come out of the returned cursor.
        ``head`` is the head sequence number if the caller just read it (see :meth:`poll`)."""
        cursor = self.prepare(query, scope, limit=limit, head=head)
        cursor.start(self._db)
        return cursor

    def start_fast(self, cursor: ResultCursor) -> None:
        """Start ``cursor`` on this (the event loop's) connection, cut after a short slice
        (:class:`Interrupted`)."""
        cursor.start(self._db, fast=self.slicing)

    def open_reader(self) -> sqlite3.Connection:
        """A read-only connection for a worker thread (heavy queries, RFC-NOTES §9.8)."""
        db = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only=1")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def prepare(
        self, query: Query, scope: Scope, *, limit: int, head: int | None = None
    ) -> ResultCursor:
        """The cursor of an admitted query, not yet run (:meth:`ResultCursor.start`)."""
        if head is None:
            head, _ = self.head()
        as_of = query.as_of or head
        if as_of > head:
            raise QueryError(ErrorCode.AS_OF_AHEAD)
        params: list[Any] = [query.collection, as_of, scope.time[0], scope.time[1], as_of]
        where = [
            "e.collection = ?",
            "e.seq <= ?",
            "e.ts >= ?",
            "e.ts < ?",
            "NOT EXISTS (SELECT 1 FROM entries s WHERE s.supersedes = e.seq AND s.seq <= ?)",
        ]
        for f in query.where:
            where.append(_filter_sql(f, params))
        clause = " AND ".join(where)
        if query.op == "count":
            sql = f"SELECT COUNT(*) FROM entries e WHERE {clause}"
            return ResultCursor(
                sql,
                params,
                as_of=as_of,
                limit=1,
                offset=0,
                shape=lambda r: _dumps({"count": r[0]}),
                paged=False,
            )
        if query.op == "aggregate":
            assert query.agg is not None
            agg = query.agg
            group_sql = _extract(agg.group) if agg.group else "NULL"
            group_params: list[Any] = []
            value_sql = (
                "COUNT(*)"
                if agg.fn == "count"
                else f"{agg.fn.upper()}({_extract(agg.field or '')})"
            )
            value_params: list[Any] = []
            sql = (
                f"SELECT {group_sql} AS g, {value_sql} FROM entries e WHERE {clause} "
                f"GROUP BY g ORDER BY g LIMIT ? OFFSET ?"
            )
            all_params = group_params + value_params + params + [limit + 1, query.offset]
            fn, group = agg.fn, agg.group

            def shape_agg(r: tuple[Any, ...]) -> bytes:
                out = {fn: r[1]}
                if group:
                    out = {"group": r[0], **out}
                return _dumps(out)

            return ResultCursor(
                sql,
                all_params,
                as_of=as_of,
                limit=limit,
                offset=query.offset,
                shape=shape_agg,
                paged=True,
            )
        order = "e.seq"
        if query.order is not None:
            order = f"{_extract(query.order[0])} {'DESC' if query.order[1] else 'ASC'}, e.seq"
        sql = f"SELECT e.seq, e.ts, e.payload FROM entries e WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?"
        params += [limit + 1, query.offset]
        fields = query.select or (None if scope.fields == (ANY,) else scope.fields)

        def shape_row(r: tuple[Any, ...]) -> bytes:
            payload: str = r[2]
            if fields is None and '"_seq"' not in payload and '"_ts"' not in payload:
                # The stored payload is already canonical JSON, which is exactly what parsing
                # and re-dumping it would give: splice the two leading keys in as text.
                rest = payload[1:] if payload != "{}" else "}"
                sep = "," if payload != "{}" else ""
                return f'{{"_seq":{r[0]},"_ts":{r[1]}{sep}{rest}'.encode()
            record = json.loads(payload)
            if fields is not None:
                record = {k: record[k] for k in fields if k in record}
            return _dumps({"_seq": r[0], "_ts": r[1], **record})

        return ResultCursor(
            sql, params, as_of=as_of, limit=limit, offset=query.offset, shape=shape_row, paged=True
        )

    def raw_connection(self) -> sqlite3.Connection:
        """The underlying connection (tests use it to prove the triggers hold)."""
        return self._db
