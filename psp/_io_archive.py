"""Export a vault store to an archive file, and restore one into a new store (RFC-NOTES §9.4.6).

Export reads one snapshot of the store (a read transaction on a connection of its own, so a
vault may keep serving and appending), recomputes both chains as it writes, and refuses a store
whose chain does not hold. The file appears whole or not at all (``ppn._io_files.atomic_create``).

Restore reads the archive twice: the first pass checks everything (framing, encoding, both
chains against the identity, the digest and the vault key's signature) and writes nothing; the
second builds the store in a temporary directory next to the target from the same checked rows,
checks the digest again (the file must not have changed), verifies the new store, and only then
renames it into place. A failure at any point leaves no target and no temporary directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ppn import IdentityKey
from ppn._io_files import atomic_create

from ._archive import (
    NONCE_SIZE,
    SALT_SIZE,
    TRAILER,
    ArchiveCheck,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    Identity,
    Section,
    SectionType,
    chunks,
    seal_key,
)
from ._audit import GENESIS as AUDIT_GENESIS
from ._audit import audit_hash, entry_from_row
from ._chain import GENESIS, entry_hash
from ._io_audit import verify_audit
from ._io_store import DB_FILE, KEY_FILE, Store, StoreError
from ._io_vault import write_key_file

__all__ = ["ArchiveReport", "check_archive", "export_archive", "restore_archive"]

READ_SIZE = 1 << 20


@dataclass(frozen=True, kw_only=True)
class ArchiveReport:
    identity: Identity
    size: int = 0


class _Progress:
    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self.callback = callback
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done)


def _snapshot_rows(db: sqlite3.Connection, sql: str) -> Iterator[list[Any]]:
    for row in db.execute(sql):
        yield list(row)


def export_archive(
    directory: Path,
    out: Path,
    *,
    key: IdentityKey,
    passphrase: bytes | None = None,
    rng: Callable[[int], bytes] = secrets.token_bytes,
    progress: Callable[[int], None] | None = None,
) -> ArchiveReport:
    """Write ``out`` (which must not exist) from the store in ``directory``, signed with the
    vault ``key``; with ``passphrase``, the key sealed into it too."""
    store = Store.open(directory)  # also gives a store from before the audit log its tables
    try:
        if key.public != store.vault_id:
            raise StoreError("the key is not this vault's key (its public key is not the vault id)")
        file = store.file
        indexes = tuple(
            str(name)[len("field_") :]
            for (name,) in store.raw_connection().execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'field_%'"
            )
        )
        meta = {k: store.meta(k) or "" for k in ("name", "created")}
    finally:
        store.close()
    db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")  # one snapshot for every table: the vault may go on appending
        return _write(db, out, key, passphrase, rng, indexes, meta, _Progress(progress))
    finally:
        db.close()


def _write(
    db: sqlite3.Connection,
    out: Path,
    key: IdentityKey,
    passphrase: bytes | None,
    rng: Callable[[int], bytes],
    indexes: tuple[str, ...],
    meta: dict[str, str],
    progress: _Progress,
) -> ArchiveReport:
    entries, head = db.execute(
        "SELECT count(*), (SELECT hash FROM entries ORDER BY seq DESC LIMIT 1) FROM entries"
    ).fetchone()
    audited, audit_head = db.execute(
        "SELECT count(*), (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1) FROM audit"
    ).fetchone()
    identity = Identity(
        vault=key.public,
        name=meta["name"],
        created=int(meta["created"] or 0),
        entries=int(entries),
        head=bytes(head) if head is not None else GENESIS,
        audit=int(audited),
        audit_head=bytes(audit_head) if audit_head is not None else AUDIT_GENESIS,
        indexes=indexes,
        sealed_key=passphrase is not None,
    )
    writer = ArchiveWriter()
    with atomic_create(out) as stream:
        stream.write(writer.header())
        stream.write(writer.section(SectionType.IDENTITY, identity.encode()))
        # In section type order (RFC-NOTES §9.4.6): entries, revocations, audit, the rest.
        _write_entries(db, writer, stream, identity, progress)
        for chunk in chunks(
            _snapshot_rows(db, "SELECT link, ts FROM revocations ORDER BY id"), size_of=0
        ):
            stream.write(writer.section(SectionType.REVOCATIONS, chunk))
        _write_audit(db, writer, stream, identity)
        for type_, sql in (
            (SectionType.DENIALS, "SELECT code, count, first, last FROM denials ORDER BY code"),
            (SectionType.REPLAY, "SELECT nonce, expires FROM replay ORDER BY rowid"),
            (
                SectionType.IMPORTS,
                "SELECT digest, collection, lines, span, seq FROM imports ORDER BY rowid",
            ),
        ):
            for chunk in chunks(_snapshot_rows(db, sql), size_of=0):
                stream.write(writer.section(type_, chunk))
        if passphrase is not None:
            sealed = seal_key(
                key.seed, passphrase, key.public, salt=rng(SALT_SIZE), nonce=rng(NONCE_SIZE)
            )
            stream.write(writer.section(SectionType.KEY, sealed))
        stream.write(writer.trailer(key.sign))
        size = stream.tell()
    return ArchiveReport(identity=identity, size=size)


def _write_entries(
    db: sqlite3.Connection,
    writer: ArchiveWriter,
    stream: BinaryIO,
    identity: Identity,
    progress: _Progress,
) -> None:
    prev, expected = GENESIS, 1
    rows = db.execute(
        "SELECT seq, collection, ts, supersedes, payload, hash FROM entries WHERE seq <= ? "
        "ORDER BY seq",
        (identity.entries,),
    )

    def checked() -> Iterator[list[Any]]:
        nonlocal prev, expected
        for seq, collection, ts, sup, payload, stored in rows:
            prev = entry_hash(
                prev,
                seq=seq,
                ts=ts,
                supersedes=sup,
                collection=collection,
                payload=payload.encode("utf-8"),
            )
            if seq != expected or prev != bytes(stored):
                raise StoreError(
                    f"the store's chain is broken at entry {expected}; "
                    "run 'ppn vault verify' (an archive holds only a chain that verifies)"
                )
            expected += 1
            yield [seq, collection, ts, sup, payload]

    for chunk in chunks(checked(), size_of=4):
        stream.write(writer.section(SectionType.ENTRIES, chunk))
        progress.add(len(chunk))
    if prev != identity.head:
        raise StoreError("the store's chain does not end at its head; run 'ppn vault verify'")


def _write_audit(
    db: sqlite3.Connection, writer: ArchiveWriter, stream: BinaryIO, identity: Identity
) -> None:
    prev, expected = AUDIT_GENESIS, 1
    rows = db.execute(
        "SELECT seq, ts, holder, cap, query, qid, as_of, rows, status, hash FROM audit ORDER BY seq"
    )

    def checked() -> Iterator[list[Any]]:
        nonlocal prev, expected
        for row in rows:
            parsed = entry_from_row(row)
            if isinstance(parsed, str) or row[0] != expected:
                raise StoreError(f"the store's audit log is broken at entry {expected}")
            entry, stored = parsed
            prev = audit_hash(prev, entry)
            if prev != stored:
                raise StoreError(
                    f"the store's audit log is broken at entry {expected}; run 'ppn vault verify'"
                )
            expected += 1
            yield list(entry.row(b""))[:-1]

    for chunk in chunks(checked(), size_of=2):
        stream.write(writer.section(SectionType.AUDIT, chunk))


# --- restore -----------------------------------------------------------------------------


def _sections(file: Path) -> Iterator[tuple[Section, ArchiveReader]]:
    reader = ArchiveReader()
    try:
        with open(file, "rb") as f:
            while data := f.read(READ_SIZE):
                reader.feed(data)
                while (section := reader.next()) is not None:
                    yield section, reader
    except OSError as exc:
        raise ArchiveError(f"it cannot be read: {exc.strerror}") from None
    reader.end()


def check_archive(file: Path, *, progress: Callable[[int], None] | None = None) -> ArchiveCheck:
    """Pass one: check the whole archive, write nothing."""
    check = ArchiveCheck()
    for section, reader in _sections(file):
        if section.type == TRAILER:
            check.finish(section.value, reader.digest)
        elif check.add(section) and section.type == SectionType.ENTRIES and progress is not None:
            progress(check.entries)
    return check


_INSERTS = {
    SectionType.ENTRIES: "INSERT INTO entries (seq, collection, ts, supersedes, payload, hash) "
    "VALUES (?, ?, ?, ?, ?, ?)",
    SectionType.AUDIT: "INSERT INTO audit (seq, ts, holder, cap, query, qid, as_of, rows, "
    "status, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    SectionType.REVOCATIONS: "INSERT INTO revocations (link, ts) VALUES (?, ?)",
    SectionType.DENIALS: "INSERT INTO denials (code, count, first, last) VALUES (?, ?, ?, ?)",
    SectionType.REPLAY: "INSERT INTO replay (nonce, expires) VALUES (?, ?)",
    SectionType.IMPORTS: "INSERT INTO imports (digest, collection, lines, span, seq) "
    "VALUES (?, ?, ?, ?, ?)",
}


def _empty_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise StoreError(f"{target} exists and is not a directory; restore makes a new store")
    if target.is_dir() and any(target.iterdir()):
        raise StoreError(
            f"{target} is not empty; restore writes only into a new or empty directory"
        )


def restore_archive(
    file: Path,
    target: Path,
    *,
    checked: ArchiveCheck,
    seed: bytes | None,
    progress: Callable[[int], None] | None = None,
) -> ArchiveCheck:
    """Pass two: build the store ``target`` from ``file``, which :func:`check_archive` passed
    (``checked``); ``seed`` is the opened key, or None to restore without one."""
    _empty_target(target)
    identity = checked.identity
    assert identity is not None
    tmp = target.parent / f".{target.name}.restore-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        again = _build(file, tmp, identity, _Progress(progress))
        if again.identity != identity or (again.head, again.audit_head) != (
            checked.head,
            checked.audit_head,
        ):
            raise ArchiveError("it changed while it was being restored")
        if seed is not None:
            write_key_file(tmp / KEY_FILE, IdentityKey.from_seed(seed))
        _verify_built(tmp, identity)
        _empty_target(target)
        os.rename(tmp, target)  # onto an empty directory too (POSIX rename)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return again


def _build(file: Path, tmp: Path, identity: Identity, progress: _Progress) -> ArchiveCheck:
    store = Store.create(tmp, name=identity.name, vault_id=identity.vault, now=identity.created)
    db = store.raw_connection()
    check = ArchiveCheck()
    try:
        for section, reader in _sections(file):
            if section.type == TRAILER:
                check.finish(section.value, reader.digest)
                continue
            rows = check.add(section)
            sql = _INSERTS.get(section.type)
            if sql is None or not rows:
                continue
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(sql, rows)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"the new store refused the archive's rows: {exc}") from None
            if section.type == SectionType.ENTRIES:
                progress.add(len(rows))
        for field in identity.indexes:
            store.create_index(field)
    finally:
        store.close()
    return check


def _verify_built(tmp: Path, identity: Identity) -> None:
    store = Store.open(tmp)
    try:
        report = store.verify()
    finally:
        store.close()
    audit = verify_audit(tmp / DB_FILE)
    if not report.ok or report.head != identity.head or audit.head != identity.audit_head:
        raise StoreError("the restored store does not verify; nothing was restored")
