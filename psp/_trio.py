"""The trio adapter: serve a vault over TCP, and query one (RFC-NOTES §9.5).

Server: :func:`serve_vault` accepts connections and drives a :class:`ServerConnection` per
connection; rows are pulled from the store only while the client has credit, so a slow reader
holds at most one batch in the vault. Client: :class:`VaultClient` drives a
:class:`ClientConnection`; :meth:`VaultClient.stream` yields protocol events as they arrive
(what an aggregator passing rows through wants), :meth:`VaultClient.fetch` collects them.
The clock is injected (``clock`` returns integer seconds) on both sides.
"""

from __future__ import annotations

import math
import secrets
import sqlite3
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import trio

from ppn import IdentityKey
from ppn._trio_listener import Connection, FrameMeter, ListenerGuard, ListenerLimits

from ._audit import STATUS_CLOSED, STATUS_END, AuditDraft
from ._capability import NONCE_SIZE, Capability, invoke_for_vault
from ._connection import ClientConnection, ConnectionClosed, ServerConnection, State
from ._errors import ErrorCode, PSPError, QueryError, VaultError
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
from ._trio_audit import commit_denials, committer_for

__all__ = [
    "QueryObserver",
    "QueryResult",
    "Response",
    "VaultClient",
    "handle_connection",
    "query_vault",
    "serve_vault",
    "wall_clock",
]

BATCH_ROWS = 256
CREDIT_WAIT = 60.0  # seconds a vault waits for a client to grant credit before giving up
RECEIVE_SIZE = 65536
MAX_PRE_AUTH = 64 * 1024  # bytes a frame may announce before the connection is admitted
WORKER_THREADS = 2  # heavy queries computing at once (SQLite runs without the GIL)
WORKER_SLOTS = 8  # heavy queries open at once (each holds a reader connection: 3 descriptors)
SLOT_WAIT = 10.0  # seconds a heavy query waits for a slot before UNAVAILABLE


class _Workers:
    """The vault's bounded pool for heavy queries (RFC-NOTES §9.8): a query that outruns its
    slice on the event loop is restarted here, on a reader connection of its own, under a
    scan budget and a deadline."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.slots = trio.Semaphore(WORKER_SLOTS)
        self.limiter = trio.CapacityLimiter(WORKER_THREADS)
        self.idle: list[sqlite3.Connection] = []

    async def start(self, cursor: ResultCursor) -> None:
        with trio.move_on_after(SLOT_WAIT):
            await self.slots.acquire()
            try:
                db = self.idle.pop() if self.idle else self.vault.store.open_reader()
            except BaseException:
                self.slots.release()
                raise
            budget = cursor.budget or ScanBudget()
            await trio.to_thread.run_sync(
                partial(cursor.start, db, budget=budget), limiter=self.limiter
            )
            return
        raise QueryError(ErrorCode.UNAVAILABLE, "every worker is busy; retry")

    async def fetch(self, cursor: ResultCursor, n: int) -> list[bytes]:
        return await trio.to_thread.run_sync(cursor.fetch, n, limiter=self.limiter)

    def release(self, cursor: ResultCursor) -> None:
        db = cursor.release()
        if db is not None:
            self.idle.append(db)
            self.slots.release()


_workers: weakref.WeakKeyDictionary[Vault, _Workers] = weakref.WeakKeyDictionary()


def _workers_for(vault: Vault) -> _Workers:
    workers = _workers.get(vault)
    if workers is None:
        workers = _workers[vault] = _Workers(vault)
    return workers


def wall_clock() -> int:
    return int(time.time())


class QueryObserver(Protocol):
    """Told of every request a vault answers (the metrics of ``ppn vault serve --metrics``,
    RFC-NOTES §3.1); ``seconds`` runs from the request's arrival to its end or error frame."""

    def ok(self, seconds: float) -> None:
        """The answer ended with its ``end`` frame."""

    def failed(self, code: ErrorCode, seconds: float, denied: bool) -> None:
        """It ended with an error; ``denied``: admission refused it (RFC-NOTES §9.4)."""


async def serve_vault(
    vault: Vault,
    host: str | None,
    port: int,
    *,
    clock: Callable[[], int] = wall_clock,
    limits: ListenerLimits | None = None,
    guard: ListenerGuard | None = None,
    observer: QueryObserver | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (port 0 picks one; see the listeners passed to ``started``).

    Connections are held within ``limits`` (RFC-NOTES §9.8): a connection is admitted once one
    of its invocations verified; until then it has ``first_frame_deadline`` seconds and may
    announce frames of at most ``pre_auth_bytes``. ``observer`` is told of every answer."""
    guard = guard or ListenerGuard(limits)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit_denials, vault.audit, clock)
            await guard.serve(partial(_guarded, vault, clock, guard.limits, observer), listeners)
    finally:
        workers = _workers_for(vault)
        for db in workers.idle:
            db.close()
        workers.idle.clear()


async def _guarded(
    vault: Vault,
    clock: Callable[[], int],
    limits: ListenerLimits,
    observer: QueryObserver | None,
    stream: trio.abc.Stream,
    connection: Connection,
) -> None:
    await handle_connection(
        vault, stream, clock=clock, connection=connection, limits=limits, observer=observer
    )


async def _flush(
    stream: trio.abc.Stream, conn: ServerConnection | ClientConnection, *, quiet: bool = False
) -> None:
    data = conn.data_to_send()
    if not data:
        return
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        if not quiet:
            raise


class _Session:
    """One client connection at the vault.

    A reader task feeds the core, so credit, cancel and EOF are seen while rows stream. It also
    answers a request itself as far as it can without waiting: admission, the header and the
    first batch, and the end when that was all (a small query costs no task switch, and its
    header, rows and end leave in one write). An answer that needs more batches is handed to the
    serving task, which streams the rest as the client's credit allows.
    """

    def __init__(
        self,
        vault: Vault,
        stream: trio.abc.Stream,
        clock: Callable[[], int],
        connection: Connection | None = None,
        limits: ListenerLimits | None = None,
        observer: QueryObserver | None = None,
    ) -> None:
        self.vault = vault
        self.observer = observer
        self.began = 0.0  # perf_counter() at the current request's arrival (with an observer)
        self.stream = stream
        self.clock = clock
        self.conn = ServerConnection(vault_id=vault.vault_id)
        self.guarded = connection
        # Until an invocation verifies, frame headers are watched so no frame larger than
        # ``pre_auth_bytes`` is buffered (RFC-NOTES §9.8); after that the 1 MiB limit applies.
        self.meter: FrameMeter | None = FrameMeter() if connection is not None else None
        self.workers = _workers_for(vault)
        self.pre_auth = limits.pre_auth_bytes if limits is not None else MAX_PRE_AUTH
        self.active: tuple[int, ResultCursor] | None = None  # an answer the serving task owns
        self.cancelled: set[int] = set()
        self.closed = False
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        # The answer in progress (admitted, not yet ended) and the audit ticket its last frame
        # waits for (RFC-NOTES §9.4.5).
        self.answering: AuditDraft | None = None
        self.audit_ticket = 0
        self.committer = committer_for(vault.audit)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait(self, timeout: float = math.inf) -> bool:
        """Wait for the reader to report something. False on timeout."""
        with trio.move_on_after(timeout):
            await self._changed.wait()
            return True
        return False

    def _audited(self, status: int) -> None:
        """The answer ends now: queue its audit entry; what is queued from here on leaves only
        once the entry is durable."""
        if self.answering is not None:
            self.audit_ticket = self.vault.audit.record(
                self.answering, rows=self.conn.rows_sent, status=status, now=self.clock()
            )
            self.answering = None

    async def flush(self) -> None:
        if not self.conn.has_data_to_send:
            return  # no lock, no checkpoint: most reader wake-ups (credit) send nothing
        if not self.vault.audit.is_durable(self.audit_ticket) and not (
            await self.committer.durable(self.audit_ticket, self.clock())
        ):
            self.conn.data_to_send()  # the end must not leave without its entry
            self.closed = True
            await self.stream.aclose()
            return
        try:
            self._send_lock.acquire_nowait()  # uncontended: skip acquire()'s two checkpoints
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await _flush(self.stream, self.conn, quiet=True)
        finally:
            self._send_lock.release()

    async def reader(self) -> None:
        try:
            while not self.closed:
                data = await self.stream.receive_some(RECEIVE_SIZE)
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
                self.conn.receive_data(bytes(data))
                # A complete frame restarts the idle clock, not any byte: a partial frame
                # trickled in never outlives the idle timeout.
                guarded = self.guarded
                while (event := self.conn.next_event()) is not None:
                    if guarded is not None:
                        guarded.touch()
                        guarded = None
                    if isinstance(event, Request):
                        # The core accepts a request only once the previous answer ended, so
                        # the serving task is idle here.
                        self._start(event)
                    elif isinstance(event, Cancel):
                        self.cancelled.add(event.request_id)
                    elif isinstance(event, ConnectionClosed):
                        self.closed = True
                await self.flush()  # the hello answer, or a whole small answer
                if self.active is not None or self.closed:
                    self._notify()  # the serving task, idle otherwise, needs no wake-up
        except PSPError:
            self.vault.audit.deny(ErrorCode.PROTOCOL, self.clock())
            await self.flush()  # the core queued a connection error frame
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed = True
        self._notify()

    def _start(self, request: Request) -> None:
        """Admit, send the header and the first batch, and the end if that was all; otherwise
        leave the rest to the serving task."""
        rid, conn, observer = request.request_id, self.conn, self.observer
        if observer is not None:
            self.began = time.perf_counter()
        try:
            started = self.vault.begin(request, now=self.clock())
        except Exception:
            started = Error(
                request_id=rid, code=ErrorCode.INTERNAL, message=ErrorCode.INTERNAL.sentence
            )
        if isinstance(started, Error):
            conn.send(started)
            if observer is not None:
                observer.failed(
                    started.code,
                    time.perf_counter() - self.began,
                    started.code is not ErrorCode.INTERNAL,
                )
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
        """One batch from the cursor (or ``rows`` a worker fetched); False (and an error sent)
        if the store failed. A cursor that outran its slice is left not ``started``: the
        serving task moves it to a worker."""
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
        if self.observer is not None:
            self.observer.ok(time.perf_counter() - self.began)

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

    def _error(self, request_id: int, code: ErrorCode, message: str = "") -> None:
        self._audited(code)
        self.conn.send(Error(request_id=request_id, code=code, message=message or code.sentence))
        if self.observer is not None:
            self.observer.failed(code, time.perf_counter() - self.began, False)

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
            await trio.sleep(0)  # let the reader see a cancel between batches
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
        # The last batch and the end leave in one write.
        self._end(rid, cursor)
        await self.flush()


async def handle_connection(
    vault: Vault,
    stream: trio.abc.Stream,
    *,
    clock: Callable[[], int] = wall_clock,
    connection: Connection | None = None,
    limits: ListenerLimits | None = None,
    observer: QueryObserver | None = None,
) -> None:
    """Serve one client connection until it closes or breaks the protocol (or, with a guard's
    ``connection``, until its deadline)."""
    session = _Session(vault, stream, clock, connection, limits, observer)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(session.reader)
        try:
            await session.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except PSPError:
            pass  # the reader found a protocol error mid-answer and already sent its error frame
        nursery.cancel_scope.cancel()
    if session.answering is not None:  # the connection closed before the answer's end
        session._audited(STATUS_CLOSED)
    if not vault.audit.is_durable(session.audit_ticket):
        with trio.CancelScope(shield=True):
            await session.committer.durable(session.audit_ticket, clock())


# --- client ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class QueryResult:
    header: Header
    rows: list[bytes] = field(default_factory=list)
    end: End | None = None

    @property
    def cursor(self) -> Cursor | None:
        return None if self.end is None else self.end.cursor


class VaultClient:
    """One connection to a vault. Use :meth:`connect`; close with :meth:`aclose`."""

    def __init__(self, stream: trio.abc.Stream, *, window: int = 8) -> None:
        self._stream = stream
        self.conn = ClientConnection()
        self.window = window

    @classmethod
    async def connect(cls, host: str, port: int, *, window: int = 8) -> VaultClient:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            raise VaultError(ErrorCode.UNAVAILABLE, f"cannot connect to {host}:{port}") from None
        client = cls(stream, window=window)
        await _flush(stream, client.conn)
        return client

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> VaultClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _next(self) -> Event | ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(bytes(data))

    async def hello(self) -> ServerHello:
        """The vault's hello (its id and the chosen version), waiting for it if needed."""
        while self.conn.server is None:
            event = await self._next()
            if isinstance(event, Error):
                raise VaultError(event.code, event.message)
            if isinstance(event, ConnectionClosed):
                raise VaultError(ErrorCode.UNAVAILABLE, "the vault closed the connection")
        return self.conn.server

    async def request(self, envelope: bytes, query: bytes) -> Response:
        """Send one request; iterate the returned :class:`Response` for its events."""
        rid = self.conn.next_request_id()
        self.conn.send(Request(request_id=rid, envelope=envelope, query=query, credit=self.window))
        await _flush(self._stream, self.conn)
        return Response(self, rid)

    async def fetch(self, envelope: bytes, query: bytes) -> QueryResult:
        header: Header | None = None
        rows: list[bytes] = []
        async for event in await self.request(envelope, query):
            if isinstance(event, Header):
                header = event
            elif isinstance(event, RowBatch):
                rows.extend(event.rows)
            else:
                assert header is not None
                return QueryResult(header=header, rows=rows, end=event)
        raise VaultError(
            ErrorCode.PROTOCOL, "the response ended without an end frame"
        )  # pragma: no cover

    async def query(
        self,
        key: IdentityKey,
        capability: Capability,
        query: Query,
        *,
        clock: Callable[[], int] = wall_clock,
        rng: Callable[[int], bytes] = secrets.token_bytes,
    ) -> QueryResult:
        """Sign an invocation of ``capability`` for this vault and ``query``, and run it."""
        hello = await self.hello()
        query_bytes = query.encode()
        envelope = invoke_for_vault(
            capability, key, hello.vault, query_bytes, now=clock(), nonce=rng(NONCE_SIZE)
        )
        return await self.fetch(envelope.raw, query_bytes)


class Response:
    """The events of one request: a :class:`Header`, :class:`RowBatch` es, then :class:`End`.

    Iterate with ``async for``. An error frame raises :class:`VaultError` (its ``code`` says
    whether to retry). Credit is granted back as batches are consumed, keeping ``window``
    batches in flight; a consumer that stops reading stops the vault. Call :meth:`cancel` to
    abandon the request early (the connection stays usable).
    """

    def __init__(self, client: VaultClient, request_id: int) -> None:
        self._client = client
        self.request_id = request_id
        self.finished = False
        self._cancelling = False

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> Header | RowBatch | End:
        event = await self.next_event()
        if event is None:
            raise StopAsyncIteration
        return event

    async def next_event(self) -> Header | RowBatch | End | None:
        if self.finished:
            return None
        client, conn = self._client, self._client.conn
        while True:
            event = await client._next()
            if isinstance(event, ServerHello):
                continue
            if isinstance(event, ConnectionClosed):
                self.finished = True
                raise VaultError(ErrorCode.UNAVAILABLE, "the vault closed the connection mid-query")
            if isinstance(event, Error):
                self.finished = True
                raise VaultError(event.code, event.message)
            if isinstance(event, End):
                self.finished = True
                return event
            if (
                isinstance(event, RowBatch)
                and conn.credit <= client.window // 2
                and conn.state is State.STREAMING  # not if its End is already in
                and not self._cancelling
            ):
                conn.send(Credit(request_id=self.request_id, batches=client.window - conn.credit))
                await _flush(client._stream, conn)
            if isinstance(event, Header | RowBatch):
                return event

    async def cancel(self) -> None:
        """Ask the vault to stop, then drain what it already sent up to its error or end."""
        if self.finished:
            return
        self._cancelling = True
        self._client.conn.send(Cancel(request_id=self.request_id))
        await _flush(self._client._stream, self._client.conn)
        try:
            while await self.next_event() is not None:
                pass
        except VaultError as exc:
            if exc.code is not ErrorCode.CANCELLED:
                raise


async def query_vault(
    host: str, port: int, key: IdentityKey, capability: Capability, query: Query, **kw: Any
) -> QueryResult:
    """Connect, run one query, close."""
    async with await VaultClient.connect(host, port) as client:
        return await client.query(key, capability, query, **kw)
