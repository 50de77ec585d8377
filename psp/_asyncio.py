"""The asyncio adapter for PSP: the vault server and the client (RFC-NOTES §9.5, §12).

Server: :func:`serve_vault` is ``psp._trio.serve_vault`` on asyncio, over the same
:class:`ServerConnection` core and behind the same listener limits (:mod:`ppn._asyncio_listener`,
whose decisions :mod:`ppn._listener_limits` shares with the trio guard): a reader task feeds the
core and answers what it can at once (admission, header, first batch, end); an answer that needs
more batches moves to the serving task, which streams within the client's credit and restarts a
heavy query on a bounded worker pool (RFC-NOTES §9.8).

Client: :class:`VaultClient` drives the same sans-IO :class:`ClientConnection` as ``psp._trio``'s client,
over asyncio streams: hello, one request at a time, credit granted back as row batches are
consumed (``window`` batches in flight), ``count``/``digest`` checked by the core before an
``End`` is handed out. Errors are the package's (:class:`VaultError` with its code).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import socket
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ppn import IdentityKey
from ppn._asyncio_listener import (
    Connection,
    FrameMeter,
    ListenerGuard,
    ListenerLimits,
    open_tcp_listeners,
)

from ._audit import STATUS_CLOSED, STATUS_END, AuditDraft
from ._capability import NONCE_SIZE, Capability, invoke_for_vault
from ._connection import ClientConnection, ConnectionClosed, ServerConnection, State
from ._errors import ErrorCode, PSPError, QueryError, VaultError
from ._io_audit import AuditBatch, AuditLog, GroupCommit
from ._io_store import Interrupted, ResultCursor, ScanBudget
from ._io_vault import Vault
from ._messages import (
    Cancel,
    Credit,
    Cursor,
    End,
    Error,
    Event,
    Header,
    Request,
    RowBatch,
    ServerHello,
)
from ._query import Query

__all__ = [
    "AsyncioVaultClient",
    "AsyncioVaultServer",
    "QueryResult",
    "VaultClient",
    "VaultServer",
    "handle_connection",
    "query_vault",
    "query_vault_asyncio",
    "serve_vault",
    "serve_vault_asyncio",
]

RECEIVE_SIZE = 65536


def _wall_clock() -> int:
    return int(time.time())


# --- server ----------------------------------------------------------------------------------
# The same numbers as psp._trio (not imported from there: that would load trio).
BATCH_ROWS = 256
CREDIT_WAIT = 60.0  # seconds a vault waits for a client to grant credit before giving up
MAX_PRE_AUTH = 64 * 1024  # bytes a frame may announce before the connection is admitted
WORKER_THREADS = 2  # heavy queries computing at once (SQLite runs without the GIL)
WORKER_SLOTS = 8  # heavy queries open at once (each holds a reader connection: 3 descriptors)
SLOT_WAIT = 10.0  # seconds a heavy query waits for a slot before UNAVAILABLE


class _Workers:
    """The vault's bounded pool for heavy queries (RFC-NOTES §9.8), as in ``psp._trio``."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.slots = asyncio.Semaphore(WORKER_SLOTS)
        self.pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="psp-vault")
        self.idle: list[sqlite3.Connection] = []

    async def start(self, cursor: ResultCursor) -> None:
        try:
            await asyncio.wait_for(self.slots.acquire(), SLOT_WAIT)
        except TimeoutError:
            raise QueryError(ErrorCode.UNAVAILABLE, "every worker is busy; retry") from None
        try:
            db = self.idle.pop() if self.idle else self.vault.store.open_reader()
        except BaseException:
            self.slots.release()
            raise
        budget = cursor.budget or ScanBudget()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, partial(cursor.start, db, budget=budget))

    async def fetch(self, cursor: ResultCursor, n: int) -> list[bytes]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, cursor.fetch, n)

    def release(self, cursor: ResultCursor) -> None:
        db = cursor.release()
        if db is not None:
            self.idle.append(db)
            self.slots.release()

    def close(self) -> None:
        for db in self.idle:
            db.close()
        self.idle.clear()
        self.pool.shutdown(wait=False)


_workers: weakref.WeakKeyDictionary[Vault, _Workers] = weakref.WeakKeyDictionary()


def _workers_for(vault: Vault) -> _Workers:
    workers = _workers.get(vault)
    if workers is None:
        workers = _workers[vault] = _Workers(vault)
    return workers


class _AuditCommitter(GroupCommit):
    """Group commit of the audit log on asyncio (RFC-NOTES §9.4.5), as
    ``psp._trio_audit.AuditCommitter``."""

    def _event(self) -> asyncio.Event:
        return asyncio.Event()

    async def _run(self, batch: AuditBatch) -> None:
        # Shielded: a cancelled waiter leaves the thread to finish and settle its batch.
        await asyncio.shield(asyncio.ensure_future(self._commit(batch)))

    async def _commit(self, batch: AuditBatch) -> None:
        try:
            await asyncio.to_thread(self.log.commit, batch)
        finally:
            self._finish(batch)


async def _commit_denials(log: AuditLog, clock: Callable[[], int]) -> None:
    """Denial counts reach the store within COUNTER_FLUSH seconds, with no request to carry
    them (as ``psp._trio_audit.commit_denials``)."""
    while True:
        await asyncio.sleep(1)
        if log.denials.due(now := clock()) and not log.committing:
            await _committer_for(log).commit(now)


_committers: weakref.WeakKeyDictionary[AuditLog, _AuditCommitter] = weakref.WeakKeyDictionary()


def _committer_for(log: AuditLog) -> _AuditCommitter:
    committer = _committers.get(log)
    if committer is None:
        committer = _committers[log] = _AuditCommitter(log)
    return committer


class VaultServer:
    """A vault listening on TCP under asyncio: ``port`` (the one picked for port 0), ``guard``
    (its counters), :meth:`close`. Made by :func:`serve_vault`."""

    def __init__(
        self,
        vault: Vault,
        listeners: list[socket.socket],
        guard: ListenerGuard,
        clock: Callable[[], int],
    ) -> None:
        self.vault = vault
        self.guard = guard
        self.sockets = listeners
        self.port: int = listeners[0].getsockname()[1]
        handler = partial(_guarded, vault, clock, guard.limits)
        self._task = asyncio.ensure_future(guard.serve(handler, listeners))
        self._denials = asyncio.ensure_future(_commit_denials(vault.audit, clock))

    async def close(self) -> None:
        """Stop accepting, close every connection and the idle worker connections."""
        self._denials.cancel()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        finally:
            workers = _workers.pop(self.vault, None)
            if workers is not None:
                workers.close()

    async def serve_forever(self) -> None:
        """Wait until cancelled, then :meth:`close`."""
        try:
            await asyncio.shield(self._task)
        finally:
            await self.close()

    async def __aenter__(self) -> VaultServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_vault(
    vault: Vault,
    host: str | None,
    port: int,
    *,
    clock: Callable[[], int] = _wall_clock,
    limits: ListenerLimits | None = None,
) -> VaultServer:
    """Listen on ``host:port`` (port 0 picks one: ``server.port``) and serve in the background
    until :meth:`VaultServer.close`. Connections are held within ``limits`` (RFC-NOTES §9.8),
    exactly as the trio server holds them."""
    guard = ListenerGuard(limits)
    listeners = open_tcp_listeners(host, port)
    return VaultServer(vault, listeners, guard, clock)


async def _guarded(
    vault: Vault,
    clock: Callable[[], int],
    limits: ListenerLimits,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connection: Connection,
) -> None:
    await handle_connection(
        vault, reader, writer, clock=clock, connection=connection, limits=limits
    )


class _Session:
    """One client connection at the vault; see ``psp._trio._Session`` for the division of work
    between the reader and the serving task."""

    def __init__(
        self,
        vault: Vault,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        clock: Callable[[], int],
        connection: Connection | None,
        limits: ListenerLimits | None,
    ) -> None:
        self.vault = vault
        self.reader_stream = reader
        self.writer = writer
        self.clock = clock
        self.conn = ServerConnection(vault_id=vault.vault_id)
        self.guarded = connection
        self.meter: FrameMeter | None = FrameMeter() if connection is not None else None
        self.workers = _workers_for(vault)
        self.pre_auth = limits.pre_auth_bytes if limits is not None else MAX_PRE_AUTH
        self.active: tuple[int, ResultCursor] | None = None
        self.cancelled: set[int] = set()
        self.closed = False
        self._changed = asyncio.Event()
        self.answering: AuditDraft | None = None  # as in psp._trio._Session
        self.audit_ticket = 0
        self.committer = _committer_for(vault.audit)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _audited(self, status: int) -> None:
        if self.answering is not None:
            self.audit_ticket = self.vault.audit.record(
                self.answering, rows=self.conn.rows_sent, status=status, now=self.clock()
            )
            self.answering = None

    async def _wait(self, timeout: float = math.inf) -> bool:
        try:
            await asyncio.wait_for(self._changed.wait(), None if timeout == math.inf else timeout)
        except TimeoutError:
            return False
        return True

    async def flush(self) -> None:
        if (
            not self.vault.audit.is_durable(self.audit_ticket)
            and self.conn.has_data_to_send
            and not await self.committer.durable(self.audit_ticket, self.clock())
        ):
            self.conn.data_to_send()  # the end must not leave without its entry
            self.closed = True
            self.writer.close()
            return
        data = self.conn.data_to_send()
        if not data or self.writer.is_closing():
            return
        self.writer.write(data)
        try:
            await self.writer.drain()
        except OSError:
            self.closed = True

    async def reader(self) -> None:
        try:
            while not self.closed:
                data = await self.reader_stream.read(RECEIVE_SIZE)
                if self.meter is not None and self.meter.feed(data) > self.pre_auth:
                    self.conn.send(
                        Error(
                            request_id=0,
                            code=ErrorCode.PROTOCOL,
                            message=f"a frame before admission is at most {self.pre_auth} bytes",
                        )
                    )
                    await self.flush()
                    break
                self.conn.receive_data(data)
                guarded = self.guarded
                while (event := self.conn.next_event()) is not None:
                    if guarded is not None:
                        guarded.touch()  # a complete frame restarts the idle clock
                        guarded = None
                    if isinstance(event, Request):
                        self._start(event)
                    elif isinstance(event, Cancel):
                        self.cancelled.add(event.request_id)
                    elif isinstance(event, ConnectionClosed):
                        self.closed = True
                await self.flush()
                if self.active is not None or self.closed:
                    self._notify()
        except PSPError:
            self.vault.audit.deny(ErrorCode.PROTOCOL, self.clock())
            await self.flush()  # the core queued a connection error frame
        except OSError:
            pass
        self.closed = True
        self._notify()

    def _start(self, request: Request) -> None:
        rid, conn = request.request_id, self.conn
        try:
            started = self.vault.begin(request, now=self.clock())
        except Exception:
            started = Error(
                request_id=rid, code=ErrorCode.INTERNAL, message=ErrorCode.INTERNAL.sentence
            )
        if isinstance(started, Error):
            conn.send(started)
            return
        header, cursor = started
        if self.guarded is not None and self.meter is not None:
            self.guarded.admit()
            self.meter = None
        conn.send(header)
        self.answering = cursor.audit
        if cursor.started and conn.credit > 0 and not self._send_batch(rid, cursor):
            return
        if cursor.done:
            self._end(rid, cursor)
        else:
            self.active = (rid, cursor)

    def _send_batch(self, rid: int, cursor: ResultCursor, rows: list[bytes] | None = None) -> bool:
        if rows is None:
            try:
                rows = cursor.fetch(BATCH_ROWS)
            except Interrupted:
                return True
            except QueryError as exc:
                self._error(rid, exc.code, exc.detail[:500])
                return False
            except Exception:
                self._error(rid, ErrorCode.INTERNAL)
                return False
        if rows:
            self.conn.send(RowBatch(request_id=rid, rows=tuple(rows)))
        if self.guarded is not None:
            self.guarded.touch()
        return True

    def _end(self, rid: int, cursor: ResultCursor) -> None:
        resume = cursor.resume_offset
        self._audited(STATUS_END)
        self.conn.send(
            End(
                request_id=rid,
                count=self.conn.rows_sent,
                digest=self.conn.rows_digest,
                cursor=None if resume is None else Cursor(as_of=cursor.as_of, offset=resume),
                seal=cursor.seal,
            )
        )
        self.cancelled.discard(rid)

    def _error(self, request_id: int, code: ErrorCode, message: str = "") -> None:
        self._audited(code)
        self.conn.send(Error(request_id=request_id, code=code, message=message or code.sentence))

    async def serve(self) -> None:
        while True:
            while self.active is None and not self.closed:
                await self._wait()
            if self.active is None:
                return
            answer = self.active
            rid, cursor = answer
            try:
                await self._stream_rest(rid, cursor)
            finally:
                # The core takes the next request as soon as this answer's end is queued, and
                # the reader may start it while the end is still being sent: clear only this
                # answer, or the next one is dropped and the connection hangs.
                if self.active is answer:
                    self.active = None
                self.workers.release(cursor)

    async def _stream_rest(self, rid: int, cursor: ResultCursor) -> None:
        conn = self.conn
        while not cursor.done:
            while conn.credit == 0 and rid not in self.cancelled and not self.closed:
                await self.flush()
                # The reader may have taken credit in while the flush was sending, and its
                # wake-up went to the event this wait would not see: look again first.
                if conn.credit or rid in self.cancelled or self.closed:
                    break
                if not await self._wait(CREDIT_WAIT):
                    self._error(rid, ErrorCode.DEADLINE, "no credit granted in time")
                    await self.flush()
                    return
            if self.closed:
                return
            if rid in self.cancelled:
                self.cancelled.discard(rid)
                self._error(rid, ErrorCode.CANCELLED)
                await self.flush()
                return
            await self.flush()
            await asyncio.sleep(0)  # let the reader see a cancel between batches
            if rid in self.cancelled or self.closed:
                continue
            rows = None
            if not cursor.started or cursor.on_worker:
                try:
                    if not cursor.started:
                        await self.workers.start(cursor)
                    rows = await self.workers.fetch(cursor, BATCH_ROWS)
                except QueryError as exc:
                    self._error(rid, exc.code, exc.detail[:500])
                    await self.flush()
                    return
                except Exception:
                    self._error(rid, ErrorCode.INTERNAL)
                    await self.flush()
                    return
            if not self._send_batch(rid, cursor, rows):
                await self.flush()
                return
        self._end(rid, cursor)  # the last batch and the end leave in one write
        await self.flush()


async def handle_connection(
    vault: Vault,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    clock: Callable[[], int] = _wall_clock,
    connection: Connection | None = None,
    limits: ListenerLimits | None = None,
) -> None:
    """Serve one client connection until it closes or breaks the protocol (or, with a guard's
    ``connection``, until its deadline cancels this task)."""
    session = _Session(vault, reader, writer, clock, connection, limits)
    reading = asyncio.ensure_future(session.reader())
    try:
        await session.serve()
    except PSPError:
        pass  # the reader found a protocol error mid-answer and already sent its error frame
    except OSError:
        pass
    finally:
        reading.cancel()
        try:
            await reading
        except asyncio.CancelledError:
            pass
        writer.close()
        if session.answering is not None:  # the connection closed before the answer's end
            session._audited(STATUS_CLOSED)
        if not vault.audit.is_durable(session.audit_ticket):
            await session.committer.durable(session.audit_ticket, clock())


@dataclass(frozen=True, kw_only=True)
class QueryResult:
    header: Header
    rows: list[bytes] = field(default_factory=list)
    end: End | None = None

    @property
    def cursor(self) -> Cursor | None:
        return None if self.end is None else self.end.cursor


class VaultClient:
    """One connection to a vault. Use :meth:`connect`; close with :meth:`aclose`
    (or ``async with``)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, window: int = 8
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.conn = ClientConnection()
        self.window = window

    @classmethod
    async def connect(cls, host: str, port: int, *, window: int = 8) -> VaultClient:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            raise VaultError(ErrorCode.UNAVAILABLE, f"cannot connect to {host}:{port}") from None
        client = cls(reader, writer, window=window)
        await client._flush()
        return client

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> VaultClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except OSError:
                raise VaultError(ErrorCode.UNAVAILABLE, "the vault closed the connection") from None

    async def _next(self) -> Event | ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self._reader.read(RECEIVE_SIZE)
            except OSError:
                data = b""
            self.conn.receive_data(data)

    async def hello(self) -> ServerHello:
        """The vault's hello (its id and the chosen version), waiting for it if needed."""
        while self.conn.server is None:
            event = await self._next()
            if isinstance(event, Error):
                raise VaultError(event.code, event.message)
            if isinstance(event, ConnectionClosed):
                raise VaultError(ErrorCode.UNAVAILABLE, "the vault closed the connection")
        return self.conn.server

    async def request(
        self, envelope: bytes, query: bytes
    ) -> AsyncIterator[Header | RowBatch | End]:
        """Send one request and yield its :class:`Header`, :class:`RowBatch` es and :class:`End`.
        An error frame raises :class:`VaultError`; a consumer that stops reading stops the
        vault (credit is only granted back as batches are consumed)."""
        rid = self.conn.next_request_id()
        self.conn.send(Request(request_id=rid, envelope=envelope, query=query, credit=self.window))
        await self._flush()
        while True:
            event = await self._next()
            if isinstance(event, ServerHello):
                continue
            if isinstance(event, ConnectionClosed):
                raise VaultError(ErrorCode.UNAVAILABLE, "the vault closed the connection mid-query")
            if isinstance(event, Error):
                raise VaultError(event.code, event.message)
            if isinstance(event, End):
                yield event
                return
            if isinstance(event, Header | RowBatch):
                if (
                    isinstance(event, RowBatch)
                    and self.conn.credit <= self.window // 2
                    and self.conn.state is State.STREAMING
                ):
                    self.conn.send(Credit(request_id=rid, batches=self.window - self.conn.credit))
                    await self._flush()
                yield event

    async def fetch(self, envelope: bytes, query: bytes) -> QueryResult:
        header: Header | None = None
        rows: list[bytes] = []
        async for event in self.request(envelope, query):
            if isinstance(event, Header):
                header = event
            elif isinstance(event, RowBatch):
                rows.extend(event.rows)
            elif header is not None:
                return QueryResult(header=header, rows=rows, end=event)
        raise VaultError(ErrorCode.PROTOCOL, "the response ended without an end frame")

    async def query(
        self,
        key: IdentityKey,
        capability: Capability,
        query: Query,
        *,
        clock: Callable[[], int] = _wall_clock,
        rng: Callable[[int], bytes] = secrets.token_bytes,
    ) -> QueryResult:
        """Sign an invocation of ``capability`` for this vault and ``query``, and run it."""
        hello = await self.hello()
        query_bytes = query.encode()
        envelope = invoke_for_vault(
            capability, key, hello.vault, query_bytes, now=clock(), nonce=rng(NONCE_SIZE)
        )
        return await self.fetch(envelope.raw, query_bytes)


async def query_vault(
    host: str, port: int, key: IdentityKey, capability: Capability, query: Query, **kw: Any
) -> QueryResult:
    """Connect, run one query, close."""
    client = await VaultClient.connect(host, port)
    async with client:
        return await client.query(key, capability, query, **kw)


# The names ``psp`` exports (loaded on first use, so ``import psp`` does not import asyncio).
AsyncioVaultClient = VaultClient
query_vault_asyncio = query_vault
serve_vault_asyncio = serve_vault
AsyncioVaultServer = VaultServer
