"""The asyncio adapter for the PSP client (RFC-NOTES §9.5, §12).

:class:`VaultClient` drives the same sans-IO :class:`ClientConnection` as ``psp._trio``'s client,
over asyncio streams: hello, one request at a time, credit granted back as row batches are
consumed (``window`` batches in flight), ``count``/``digest`` checked by the core before an
``End`` is handed out. Errors are the package's (:class:`VaultError` with its code).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ppn import IdentityKey

from ._capability import NONCE_SIZE, Capability, invoke_for_vault
from ._connection import ClientConnection, ConnectionClosed, State
from ._errors import ErrorCode, VaultError
from ._messages import Credit, Cursor, End, Error, Event, Header, Request, RowBatch, ServerHello
from ._query import Query

__all__ = [
    "AsyncioVaultClient",
    "QueryResult",
    "VaultClient",
    "query_vault",
    "query_vault_asyncio",
]

RECEIVE_SIZE = 65536


def _wall_clock() -> int:
    return int(time.time())


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
