"""A vault: its store, its key and its verifier, answering one request at a time.

The I/O-free half of serving (what to answer) lives in the cores; this module binds them to the
SQLite store. Transports (``_trio``) call :meth:`Vault.begin` for a request and then pull row
batches from the returned cursor only as the client's credit allows.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from ppn import IdentityKey, KeyFormatError

from ._admit import admit
from ._audit import AuditDraft
from ._capability import query_hash
from ._errors import AuthorizationError, ErrorCode, QueryError
from ._io_audit import AuditLog
from ._io_replica import prepare_replication, replica_mark
from ._io_store import KEY_FILE, Interrupted, PersistentReplaySet, ResultCursor, Store
from ._messages import Error, Header, Request
from ._replication import ReplicateQuery
from ._verifier import Verifier

__all__ = ["Vault", "read_key_file", "write_key_file"]


def write_key_file(path: str | os.PathLike[str], key: IdentityKey) -> None:
    """Write an Ed25519 seed as one base64 line, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key.seed).decode("ascii") + "\n")


def read_key_file(path: str | os.PathLike[str]) -> IdentityKey:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise KeyFormatError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        seed = base64.b64decode(text, validate=True)
    except ValueError:
        raise KeyFormatError(f"{path} is not a PSP key file (one base64 line)") from None
    return IdentityKey.from_seed(seed)


class Vault:
    """A vault over its store. ``key`` is None only for a replica (RFC-NOTES §9.5.1): it answers
    queries under the primary's id, and has no key to seal a replicate answer with."""

    def __init__(
        self,
        store: Store,
        key: IdentityKey | None,
        *,
        trusted_roots: Iterable[bytes] = (),
        audit: bool = True,
    ) -> None:
        if key is None and not store.replica:
            raise KeyFormatError("a vault that is not a replica needs its key")
        if key is not None and key.public != store.vault_id:
            raise KeyFormatError("the vault key does not match the store's vault id")
        self.store = store
        self.key = key
        self.vault_id = store.vault_id
        # Nonces outlive the process (RFC-NOTES §9.8): a restart opens no replay window.
        self.replay = PersistentReplaySet(store.file, now=int(time.time()))
        # Every answered request leaves an entry (RFC-NOTES §9.4.5); off only for the benchmark.
        self.audit = AuditLog(store.file, now=int(time.time()), enabled=audit)
        self.verifier = Verifier(
            self.vault_id,
            trusted_roots=trusted_roots,
            revoked=store.new_revocations(),
            replay=self.replay,
        )

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        key: IdentityKey | None = None,
        *,
        name: str | None = None,
    ) -> Vault:
        """A new vault in ``directory`` with ``key`` (a new one if None): what ``ppn vault
        init`` does, for a daemon that embeds a vault (issue 20)."""
        path = Path(directory)
        key = key or IdentityKey.generate()
        path.mkdir(parents=True, exist_ok=True)
        if (path / KEY_FILE).exists():
            raise FileExistsError(f"{path} already holds a vault")
        write_key_file(path / KEY_FILE, key)
        Store.create(
            path, name=name or path.name, vault_id=key.public, now=int(time.time())
        ).close()
        return cls.open(path)

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], *, trusted_roots: Iterable[bytes] = ()
    ) -> Vault:
        store = Store.open(directory)
        key = None if store.replica else read_key_file(Path(directory) / KEY_FILE)
        return cls(store, key, trusted_roots=trusted_roots)

    def begin(self, request: Request, *, now: int) -> tuple[Header, ResultCursor] | Error:
        """Admit and start a request: a header and the rows to stream, or an error frame.

        The query runs on the caller's thread for a short slice at most; a cursor that is not
        ``started`` on return is heavy and must be restarted on a worker connection."""
        try:
            head, revoked = self.store.poll()
            for link in revoked:
                self.verifier.revoke(link)
            admitted = admit(self.verifier, request.envelope, request.query, now=now)
            cursor: ResultCursor
            if isinstance(admitted.query, ReplicateQuery):
                cursor = prepare_replication(
                    self.store, admitted.query, key=self.key, head=head, limit=admitted.row_limit
                )
            else:
                cursor = self.store.prepare(
                    admitted.query,
                    admitted.authorization.scope,
                    limit=admitted.row_limit,
                    head=head,
                )
            try:
                self.store.start_fast(cursor)
            except Interrupted:
                pass  # heavy: the transport restarts it on a worker (RFC-NOTES §9.8)
        except AuthorizationError as exc:
            self.audit.deny(exc.code, now)
            return Error(request_id=request.request_id, code=exc.code, message=exc.code.sentence)
        except QueryError as exc:
            self.audit.deny(exc.code, now)
            return Error(request_id=request.request_id, code=exc.code, message=exc.detail[:500])
        except sqlite3.Error:
            self.audit.deny(ErrorCode.INTERNAL, now)
            return Error(
                request_id=request.request_id,
                code=ErrorCode.INTERNAL,
                message=ErrorCode.INTERNAL.sentence,
            )
        authorization = admitted.authorization
        cursor.audit = AuditDraft(
            holder=authorization.holder,
            cap=authorization.chain[-1],
            query=query_hash(request.query),
            qid=authorization.nonce,
            as_of=cursor.as_of,
        )
        header = Header(
            request_id=request.request_id,
            vault=self.vault_id,
            query_id=admitted.query_id,
            as_of=cursor.as_of,
            replica=replica_mark(self.store, head) if self.store.replica else None,
        )
        return header, cursor

    def close(self) -> None:
        self.audit.close(int(time.time()))
        self.replay.close()
        self.store.close()
