"""Follow a primary vault's chain over PSP into a replica store (RFC-NOTES §9.5.1), on trio.

:class:`ReplicaFollower` asks the primary for the entries after its head with a ``replicate``
invocation, checks the answer with the sans-IO :class:`~psp._replication.ReplicaChain` (every
link, then the primary's seal), and writes it in one transaction. It asks again at once while
the primary is ahead, else every ``poll`` seconds. A lost connection (the primary restarting) is
retried with a growing pause; an answer that does not verify ends the follower with
:class:`~psp._replication.ReplicationError`, nothing of it written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from ppn import IdentityKey

from ._capability import NONCE_SIZE, Capability, invoke_for_vault
from ._errors import ErrorCode, RemoteProtocolError, VaultError
from ._io_replica import create_replica, primary_revocations, write_batch
from ._io_store import DB_FILE, Store
from ._messages import End, Header, RowBatch
from ._replication import (
    MAX_ANSWER_BYTES,
    MAX_ENTRIES,
    MAX_REVOCATIONS,
    MAX_ROW,
    ReplicaChain,
    ReplicationError,
    VerifiedBatch,
)
from ._trio import VaultClient, wall_clock

__all__ = ["FollowerError", "FollowStatus", "ReplicaFollower"]

ANSWER_TIMEOUT = 60.0  # seconds one replicate answer may take before the connection is dropped
RETRY_FIRST = 0.1  # seconds before the first reconnect; doubles up to RETRY_MAX
RETRY_MAX = 5.0
WINDOW = 32  # row batches in flight: a whole answer (4096 entries, 256 a batch) needs 16


@contextlib.asynccontextmanager
async def _writes() -> AsyncIterator[trio.Nursery]:
    """A nursery for the batch writes whose failure is the failure itself, not a group: the
    follower's error handling (retry or stop) sees what happened."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        first = next((e for e in leaves if isinstance(e, KeyboardInterrupt)), None)
        raise (first or (leaves[0] if leaves else group)) from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


class FollowerError(Exception):
    """The follower cannot go on: the primary refused it for good (``code``), or the replica
    store is not this primary's. The message is one sentence."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, kw_only=True)
class FollowStatus:
    """Where the follower stands after an exchange with the primary."""

    seq: int  # the replica's head
    head: bytes  # its chain hash
    primary_head: int  # the primary's head when it answered
    written: int  # entries written by this run
    elapsed: float  # seconds since this run started
    connected: bool = True

    @property
    def caught_up(self) -> bool:
        return self.seq >= self.primary_head


class ReplicaFollower:
    """Tail ``host:port`` into the replica store ``directory`` under ``capability``.

    ``vault_id`` pins the primary (else: the store's, or for a new store the id the primary's
    hello gives, which must be one the capability names; every answer is sealed by that id's
    key, so a peer that only claims it writes nothing). ``report`` gets a :class:`FollowStatus`
    after every exchange and every lost connection.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        host: str,
        port: int,
        key: IdentityKey,
        capability: Capability,
        vault_id: bytes | None = None,
        poll: float = 1.0,
        batch: int = MAX_ENTRIES,
        clock: Callable[[], int] = wall_clock,
        rng: Callable[[int], bytes] = secrets.token_bytes,
        report: Callable[[FollowStatus], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.host, self.port = host, port
        self.key, self.capability = key, capability
        self.vault_id = vault_id
        self.poll, self.batch = poll, batch
        self.clock, self.rng = clock, rng
        self.report = report
        self.store: Store | None = None
        self.chain: ReplicaChain | None = None
        self.primary_head = 0
        self.written = 0
        # The last entry on disk. ``chain.seq`` runs ahead of it while a checked batch is being
        # written (the next request starts from the checked head), so observers read this one.
        self.stored_seq = 0
        # Plain counters for whoever observes the follower (``ppn vault follow --metrics``):
        self.connected = False
        self.reconnects = 0  # connections lost (or refused) and tried again
        self.verify_failures = 0  # answers refused by the checks (each ends the follower)
        self.started = time.monotonic()  # this run's start (monotonic)
        self.caught_up_at: float | None = None  # monotonic time the replica last had the head
        self._ready = trio.Event()  # set once the replica store exists
        self._write_done = trio.Event()  # the last batch's write has ended
        self._write_done.set()

    # --- the store ---

    def _open(self, hello_vault: bytes) -> None:
        """Open the replica store (creating it on the first contact) and pin the primary."""
        if self.vault_id is not None and hello_vault != self.vault_id:
            raise FollowerError(
                "the primary's vault id is not the one given with --vault-id", ErrorCode.WRONG_VAULT
            )
        if hello_vault not in self.capability.scope.vaults:
            raise FollowerError(
                "the primary's vault id is not one the capability names", ErrorCode.WRONG_VAULT
            )
        if self.store is None:
            if (self.directory / DB_FILE).exists():
                store = Store.open(self.directory)
                if not store.replica:
                    store.close()
                    raise FollowerError(f"{self.directory} holds a vault that is not a replica")
            else:
                store = create_replica(
                    self.directory, vault_id=hello_vault, name=self.directory.name, now=self.clock()
                )
            self.store = store
        if hello_vault != self.store.vault_id:
            raise FollowerError(
                f"{self.directory} is a replica of another vault", ErrorCode.WRONG_VAULT
            )
        self.vault_id = hello_vault
        if self.chain is None:
            self.chain = self._chain_from_store(self.store)
            self.stored_seq = self.chain.seq
        self._ready.set()

    @staticmethod
    def _chain_from_store(store: Store) -> ReplicaChain:
        seq, head = store.head()
        return ReplicaChain(
            vault_id=store.vault_id, seq=seq, head=head, revocations=primary_revocations(store)
        )

    async def wait_ready(self) -> Path:
        """Wait until the replica store exists (to serve it); its directory."""
        await self._ready.wait()
        return self.directory

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # --- the exchange ---

    def _status(self, *, connected: bool = True) -> FollowStatus:
        assert self.chain is not None
        return FollowStatus(
            seq=self.chain.seq,
            head=self.chain.head,
            primary_head=self.primary_head,
            written=self.written,
            elapsed=time.monotonic() - self.started,
            connected=connected,
        )

    async def _exchange(self, client: VaultClient, writes: trio.Nursery) -> bool:
        """One replicate request: check, advance, and start the write in ``writes``. True if
        the primary has more."""
        assert self.chain is not None and self.store is not None and self.vault_id is not None
        query = self.chain.query(self.batch)
        query_bytes = query.encode()
        envelope = invoke_for_vault(
            self.capability,
            self.key,
            self.vault_id,
            query_bytes,
            now=self.clock(),
            nonce=self.rng(NONCE_SIZE),
        )
        header: Header | None = None
        end: End | None = None
        rows: list[bytes] = []
        size = 0
        with trio.fail_after(ANSWER_TIMEOUT):
            async for event in await client.request(envelope.raw, query_bytes):
                if isinstance(event, Header):
                    header = event
                elif isinstance(event, RowBatch):
                    # Bounded before anything is held: a primary that sends more than was
                    # asked, or larger rows, is dropped at the first frame that shows it.
                    rows.extend(event.rows)
                    size += sum(len(r) for r in event.rows)
                    if (
                        len(rows) > query.max_entries + MAX_REVOCATIONS
                        or size > MAX_ANSWER_BYTES + MAX_ROW + 64 * MAX_REVOCATIONS
                    ):
                        raise ReplicationError("the primary's answer exceeds what was asked for")
                else:
                    end = event
        if header is None or end is None:
            raise ReplicationError("the primary's answer has no head or no end")
        chain, store = self.chain, self.store
        check = partial(
            chain.check, rows, seal=end.seal, primary_head=header.as_of, asked=query.max_entries
        )
        # Checking and writing run off the event loop (a served replica keeps answering), and
        # the write of one answer overlaps the transfer and check of the next: the next request
        # starts from the checked head, and each write waits for the one before it.
        batch = await trio.to_thread.run_sync(check)
        await self._write_done.wait()
        chain.advance(batch)
        self._write_done = trio.Event()
        writes.start_soon(self._write, store, batch, self._write_done)
        return chain.seq < batch.primary_head or len(batch.revoked) == MAX_REVOCATIONS

    async def _write(self, store: Store, batch: VerifiedBatch, done: trio.Event) -> None:
        try:
            await trio.to_thread.run_sync(partial(write_batch, store, batch, now=self.clock()))
            # Together, with no await between, so a scrape sees all three or none.
            self.stored_seq = batch.seq
            self.primary_head = batch.primary_head
            self.written += len(batch.entries)
        finally:
            done.set()
        if self.chain is not None and self.chain.seq >= batch.primary_head:
            self.caught_up_at = time.monotonic()
        if self.report is not None:
            self.report(self._status())

    async def run(self, *, once: bool = False) -> FollowStatus:
        """Follow until cancelled; with ``once``, until the replica has the primary's head.
        Raises :class:`FollowerError`, :class:`ReplicationError` or :class:`StoreError`."""
        pause = RETRY_FIRST
        while True:
            try:
                async with await VaultClient.connect(self.host, self.port, window=WINDOW) as client:
                    with trio.fail_after(ANSWER_TIMEOUT):
                        hello = await client.hello()
                    self._open(hello.vault)
                    pause, self.connected = RETRY_FIRST, True
                    async with _writes() as writes:
                        while True:
                            more = await self._exchange(client, writes)
                            if not more:
                                await self._write_done.wait()
                                if once:
                                    return self._status()
                                await trio.sleep(self.poll)
            except VaultError as exc:
                if not exc.code.retryable:
                    raise FollowerError(
                        f"the primary refused replication: {exc.detail}", exc.code
                    ) from None
            except RemoteProtocolError as exc:
                raise FollowerError(f"the primary broke the protocol: {exc}", exc.code) from None
            except ReplicationError:
                self.verify_failures += 1
                raise
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            self.connected = False
            self.reconnects += 1
            # The primary is gone or restarting: try again, and say so. The next connection
            # starts from the store's head: a write cancelled before it began is asked again.
            self.chain = None if self.store is None else self._chain_from_store(self.store)
            if self.report is not None and self.chain is not None:
                self.report(self._status(connected=False))
            await trio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)


async def follow_and_serve(
    follower: ReplicaFollower,
    *,
    serve: tuple[str, int] | None,
    once: bool = False,
    on_listening: Callable[[list[trio.SocketListener]], None] | None = None,
    **serve_options: object,
) -> FollowStatus | None:
    """Run ``follower`` and, with ``serve``, a vault over the replica store on that address (its
    answers carry the replica mark, RFC-NOTES §9.5)."""
    from ._io_vault import Vault
    from ._trio import serve_vault

    if serve is None:
        return await follower.run(once=once)
    result: list[FollowStatus] = []

    async def follow_then_stop(nursery: trio.Nursery) -> None:
        result.append(await follower.run(once=once))
        nursery.cancel_scope.cancel()

    vaults: list[Vault] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_then_stop, nursery)
            directory = await follower.wait_ready()
            vaults.append(Vault.open(directory))
            listeners = await nursery.start(
                partial(serve_vault, **serve_options),  # type: ignore[arg-type]
                vaults[0],
                serve[0],
                serve[1],
            )
            if on_listening is not None:
                on_listening(listeners)
    finally:
        for vault in vaults:
            vault.close()
    return result[0] if result else None
