"""The store's side of replication (RFC-NOTES §9.5.1): a primary's sealed answer, and a replica's
store — created pinned to its primary, written only with verified batches.

Primary: :func:`prepare_replication` checks that the follower's ``(after, prev)`` lies on this
vault's chain and returns a :class:`ReplicationCursor`, a :class:`~psp._io_store.ResultCursor`
over the entries after it, so the adapters stream it like any answer (sliced on the event loop,
credit-bound) and put its :attr:`~ReplicationCursor.seal` in the ``end`` frame.

Replica: :func:`create_replica` makes a store whose vault id is the primary's and whose meta
says so (``replica_of``, so :meth:`Store.append_many` refuses every local append);
:func:`write_batch` writes a :class:`~psp._replication.VerifiedBatch` in one transaction, with the
sync mark (:class:`~psp._messages.ReplicaMark`) a served replica reports.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from ppn import IdentityKey

from ._chain import GENESIS
from ._errors import ErrorCode, QueryError
from ._io_store import REPLICA_META, ResultCursor, Store, StoreError, _why
from ._messages import ReplicaMark
from ._replication import (
    CONTEXT_SEAL,
    MAX_ANSWER_BYTES,
    MAX_REVOCATIONS,
    ReplicateQuery,
    VerifiedBatch,
    encode_entry,
    encode_revocation,
    seal_message,
)

__all__ = [
    "ReplicationCursor",
    "create_replica",
    "prepare_replication",
    "primary_revocations",
    "replica_mark",
    "write_batch",
]

# Bookkeeping, not WORM and not in the chain: the last exchange with the primary.
_SYNC_SCHEMA = """
CREATE TABLE IF NOT EXISTS replica_sync (
    id INTEGER PRIMARY KEY CHECK (id = 1), synced INTEGER NOT NULL, primary_head INTEGER NOT NULL,
    revocations INTEGER NOT NULL
) STRICT;
"""
_ROWS_SQL = (
    "SELECT seq, ts, supersedes, collection, payload, hash FROM entries "
    "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ? OFFSET ?"
)


class ReplicationCursor(ResultCursor):
    """The entries after the follower's head, as encoded rows, at most ``limit`` of them and
    about :data:`MAX_ANSWER_BYTES` in all; sealed with the vault key once done."""

    def __init__(
        self,
        query: ReplicateQuery,
        *,
        key: IdentityKey,
        head: int,
        limit: int,
        revoked: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        self._key = key
        self._after = query.after
        self._last_hash = query.prev
        self._bytes = 0
        # The revocations the follower lacks lead the answer (they matter before any entry).
        self._revocation_rows = [encode_revocation(i, link) for i, link in revoked]
        self._revocations = query.revocations + len(revoked)
        self._revoked = b"".join(link for _, link in revoked)
        super().__init__(
            _ROWS_SQL,
            [query.after, head, limit + 1, 0],
            as_of=head,
            limit=limit,
            offset=0,
            shape=self._shape_entry,
            paged=True,
        )

    def _shape_entry(self, r: tuple[Any, ...]) -> bytes:
        # Rows are shaped in order (again after a restart on a worker), so the last one shaped
        # is the last one sent once the answer is done.
        self._last_hash = bytes(r[5])
        return encode_entry(int(r[0]), int(r[1]), r[2], str(r[3]), str(r[4]).encode("utf-8"))

    def fetch(self, n: int, max_bytes: int = 512 * 1024) -> list[bytes]:
        rows = super().fetch(n, min(max_bytes, MAX_ANSWER_BYTES - self._bytes))
        self._bytes += sum(len(r) for r in rows)
        if self._bytes >= MAX_ANSWER_BYTES and not self.done:
            self.done = True
        if self._revocation_rows:  # only once the entries' fetch returned (not Interrupted)
            rows, self._revocation_rows = self._revocation_rows + rows, []
        return rows

    @property
    def resume_offset(self) -> int | None:
        return None  # the follower asks again from its new head, not by offset

    @property
    def seal(self) -> bytes | None:
        if not self.done:
            return None
        seq = self._after + self.count
        message = seal_message(
            self._key.public, seq, self._last_hash, self._revocations, self._revoked
        )
        return self._key.sign(CONTEXT_SEAL + message)


def prepare_replication(
    store: Store, query: ReplicateQuery, *, key: IdentityKey | None, head: int, limit: int
) -> ReplicationCursor:
    """The answer to an admitted replicate query, or a :class:`QueryError`."""
    if key is None:
        raise QueryError(ErrorCode.NOT_PERMITTED, "a replica does not serve replicate")
    if query.after > head:
        raise QueryError(ErrorCode.AS_OF_AHEAD, f"this vault's head is entry {head}")
    if query.after == 0:
        here = GENESIS
    else:
        row = (
            store.raw_connection()
            .execute("SELECT hash FROM entries WHERE seq = ?", (query.after,))
            .fetchone()
        )
        here = bytes(row[0])
    if here != query.prev:
        raise QueryError(ErrorCode.DIVERGED, f"entry {query.after} has another hash here")
    revoked = [
        (int(i), bytes(link))
        for i, link in store.raw_connection().execute(
            "SELECT id, link FROM revocations WHERE id > ? ORDER BY id LIMIT ?",
            (query.revocations, MAX_REVOCATIONS),
        )
    ]
    if query.revocations and not revoked:
        known = store.raw_connection().execute("SELECT max(id) FROM revocations").fetchone()[0]
        if (known or 0) < query.revocations:
            raise QueryError(
                ErrorCode.DIVERGED, "the replica holds more revocations than this vault"
            )
    return ReplicationCursor(query, key=key, head=head, limit=limit, revoked=revoked)


def create_replica(
    directory: str | os.PathLike[str], *, vault_id: bytes, name: str, now: int
) -> Store:
    """A new, empty replica store of the vault ``vault_id`` (no key: a replica signs nothing)."""
    store = Store.create(directory, name=name, vault_id=vault_id, now=now)
    try:
        db = store.raw_connection()
        with db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)", (REPLICA_META, vault_id.hex())
            )
            db.executescript(_SYNC_SCHEMA)
    finally:
        store.close()
    return Store.open(directory)


def write_batch(store: Store, batch: VerifiedBatch, *, now: int) -> None:
    """Append a verified batch and the sync mark in one transaction: all or nothing. The
    store's triggers still check sequence numbers and supersedes."""
    db = store.raw_connection()
    rows = [
        (e.seq, e.collection, e.ts, e.supersedes, e.payload.decode("utf-8"), h)
        for e, h in batch.entries
    ]
    try:
        db.execute("BEGIN IMMEDIATE")
        seq = store.head()[0]
        if rows and seq != rows[0][0] - 1:
            raise StoreError(f"{store.directory} moved on while a batch was checked")
        if rows:
            db.executemany(
                "INSERT INTO entries (seq, collection, ts, supersedes, payload, hash) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        # The primary's revocations join the replica's own (ppn cap revoke --store REPLICA); a
        # link revoked at both is recorded once.
        db.executemany(
            "INSERT OR IGNORE INTO revocations (link, ts) VALUES (?, ?)",
            [(link, now) for link in batch.revoked],
        )
        db.execute(
            "INSERT OR REPLACE INTO replica_sync (id, synced, primary_head, revocations) "
            "VALUES (1, ?, ?, ?)",
            (now, batch.primary_head, batch.revocations),
        )
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StoreError(f"the replica refused the batch: {_why(exc, store.file)}") from None
    except StoreError:
        db.execute("ROLLBACK")
        raise


def primary_revocations(store: Store) -> int:
    """How many of the primary's revocations the replica holds (what to ask after)."""
    row = (
        store.raw_connection()
        .execute("SELECT revocations FROM replica_sync WHERE id = 1")
        .fetchone()
    )
    return 0 if row is None else int(row[0])


def replica_mark(store: Store, head: int) -> ReplicaMark:
    """What a served replica says about itself in ``head`` (``head``: its last entry)."""
    row = (
        store.raw_connection()
        .execute("SELECT synced, primary_head FROM replica_sync WHERE id = 1")
        .fetchone()
    )
    synced, primary_head = (0, 0) if row is None else (int(row[0]), int(row[1]))
    return ReplicaMark(as_of=head, synced=synced, primary_head=max(primary_head, head))
