"""The trio client of a PSP aggregator (RFC-NOTES §10): :class:`OrchestrationClient` signs one
invocation per vault (:func:`plan_targets`), sends the request, grants credit as it consumes merged
rows; :func:`query_via` runs one query and closes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

import trio

from ppn import IdentityKey

from .._capability import Capability
from .._errors import ErrorCode, PSPError, RemoteProtocolError
from .._messages import Credit, Error
from .._query import Query
from ._connection import (
    AggregateRequest,
    AggregatorHello,
    Done,
    MergedRows,
    OrchestrationClientConnection,
    Phase,
    Target,
    TargetReport,
)
from ._connection import ConnectionClosed as ClientGone
from ._merge import Mode, TargetStatus, VaultStatus, default_mode
from ._plan import AggregateCursor, VaultAddress, plan_targets

__all__ = ["AggregateResult", "AggregationFailed", "OrchestrationClient", "query_via"]

RECEIVE_SIZE = 65536


class AggregationFailed(PSPError):
    """A strict request failed: some vault was not ok. ``result`` holds the statuses."""

    def __init__(self, result: AggregateResult) -> None:
        bad = [
            s for s in result.statuses if s.status.failed and s.status is not VaultStatus.CANCELLED
        ]
        super().__init__(f"{len(bad)} of {len(result.statuses)} vaults failed")
        self.result = result


@dataclass(frozen=True, kw_only=True)
class AggregateResult:
    vaults: list[VaultAddress]
    rows: list[tuple[int | None, bytes]]
    statuses: list[TargetStatus]
    done: Done
    mode: Mode

    @property
    def complete(self) -> bool:
        return self.done.complete

    @property
    def cursor(self) -> AggregateCursor | None:
        """Where to resume the vaults that have more (or failed retryably); None when none,
        and None for a failed strict request (its rows were withheld: run it again)."""
        if self.mode is Mode.STRICT and self.done.failed:
            return None
        positions = tuple(
            (self.vaults[s.index].vault, s.cursor[0], s.cursor[1])
            for s in self.statuses
            if s.cursor is not None
        )
        return AggregateCursor(positions=positions) if positions else None


class OrchestrationClient:
    """One connection to an aggregator. Use :meth:`connect`; close with :meth:`aclose`."""

    def __init__(self, stream: trio.abc.Stream, *, window: int = 8) -> None:
        self._stream = stream
        self.conn = OrchestrationClientConnection()
        self.window = window

    @classmethod
    async def connect(cls, host: str, port: int, *, window: int = 8) -> OrchestrationClient:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            raise RemoteProtocolError(
                f"cannot connect to the aggregator at {host}:{port}", ErrorCode.UNAVAILABLE
            ) from None
        client = cls(stream, window=window)
        await client._flush()
        return client

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> OrchestrationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self._stream.send_all(data)

    async def _next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(bytes(data))

    async def events(
        self,
        targets: Sequence[Target],
        *,
        mode: Mode,
        deadline: float,
        vault_deadline: float | None = None,
    ) -> AsyncIterator[MergedRows | TargetReport | Done]:
        """Send one aggregated request (``targets`` from :func:`plan_targets`, numbered with
        :meth:`next_request_id`) and yield its events up to :class:`Done`. A refusal raises
        :class:`RemoteProtocolError` with the aggregator's code."""
        deadline_ms = max(1, int(deadline * 1000))
        if vault_deadline is None:
            vault_deadline = deadline - min(max(deadline / 10, 0.05), 1.0)
        vault_ms = max(1, min(int(vault_deadline * 1000), deadline_ms))
        rid = targets[0].request_id
        self.conn.send(
            AggregateRequest(
                request_id=rid,
                targets=len(targets),
                mode=mode,
                deadline_ms=deadline_ms,
                vault_deadline_ms=vault_ms,
                credit=self.window,
            )
        )
        for t in targets:
            self.conn.send(t)
        await self._flush()
        while True:
            event = await self._next()
            if isinstance(event, AggregatorHello):
                continue
            if isinstance(event, ClientGone):
                raise RemoteProtocolError(
                    "the aggregator closed the connection", ErrorCode.UNAVAILABLE
                )
            if isinstance(event, Error):
                raise RemoteProtocolError(f"{event.code.name}: {event.message}", event.code)
            if (
                isinstance(event, MergedRows)
                and self.conn.credit <= self.window // 2
                and self.conn.phase is not Phase.IDLE
            ):
                self.conn.send(Credit(request_id=rid, batches=self.window - self.conn.credit))
                await self._flush()
            assert isinstance(event, MergedRows | TargetReport | Done)
            yield event
            if isinstance(event, Done):
                return

    def next_request_id(self) -> int:
        return self.conn.next_request_id()

    async def query(
        self,
        key: IdentityKey,
        capabilities: Sequence[Capability],
        vaults: Sequence[VaultAddress],
        query: Query,
        *,
        mode: Mode | None = None,
        deadline: float = 10.0,
        vault_deadline: float | None = None,
        cursor: AggregateCursor | None = None,
        clock: Callable[[], int] = lambda: int(time.time()),
        rng: Callable[[int], bytes] = secrets.token_bytes,
    ) -> AggregateResult:
        """Sign, send, collect. Strict mode (the default for count and aggregate queries)
        raises :class:`AggregationFailed` when any vault was not ok."""
        mode = mode or default_mode(query)
        chosen, targets = plan_targets(
            key,
            capabilities,
            vaults,
            query,
            request_id=self.next_request_id(),
            now=clock(),
            rng=rng,
            cursor=cursor,
        )
        if not targets:
            raise ValueError("no vault to query (the cursor lists none of them)")
        rows: list[tuple[int | None, bytes]] = []
        reports: list[TargetStatus] = []
        done: Done | None = None
        async for event in self.events(
            targets, mode=mode, deadline=deadline, vault_deadline=vault_deadline
        ):
            if isinstance(event, MergedRows):
                rows.extend(event.rows)
            elif isinstance(event, TargetReport):
                reports.append(
                    TargetStatus(
                        index=event.index,
                        status=event.status,
                        rows=event.rows,
                        as_of=event.as_of,
                        code=event.code,
                        message=event.message,
                        cursor=event.cursor,
                    )
                )
            else:
                done = event
        assert done is not None
        result = AggregateResult(vaults=chosen, rows=rows, statuses=reports, done=done, mode=mode)
        if mode is Mode.STRICT and done.failed:
            raise AggregationFailed(replace(result, rows=[]))
        return result


async def query_via(
    host: str,
    port: int,
    key: IdentityKey,
    capabilities: Sequence[Capability],
    vaults: Sequence[VaultAddress],
    query: Query,
    **kw: object,
) -> AggregateResult:
    """Connect to the aggregator at ``host:port``, run one aggregated query, close."""
    async with await OrchestrationClient.connect(host, port) as client:
        return await client.query(key, capabilities, vaults, query, **kw)  # type: ignore[arg-type]
