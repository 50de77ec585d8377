"""The aggregator under faults, in one trio process on in-memory streams (so ``autojump_clock``
runs the deadlines in virtual time): vaults that answer, deny, hang, send garbage, die
mid-stream or cannot be reached — each in the status table; strict versus best effort exact;
a client that goes away cancels the vaults; a slow client holds the vaults back."""

from __future__ import annotations

import errno
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from psp import Capability, ErrorCode, Query, RowBatch
from psp._connection import ServerConnection
from psp._io_vault import Vault
from psp._messages import Header, Request
from psp._trio import handle_connection
from psp.aggregation import AggregationFailed, OrchestrationClient, VaultPool, handle_client
from psp.aggregation import _trio_server as server
from psp.aggregation._connection import MergedRows
from psp.aggregation._merge import Mode, VaultStatus
from psp.aggregation._plan import VaultAddress

from ._orchestration_support import HOLDER, cap_for, clock, make_vault

COUNT = Query(collection="people", op="count")


class Lab:
    """Vaults reachable through an injected connector: ``kind`` says how each behaves."""

    def __init__(self, nursery: trio.Nursery, tmp: Path) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.kinds: dict[int, str] = {}
        self.vaults: dict[int, Vault] = {}
        self.addresses: list[VaultAddress] = []
        self.caps: list[Capability] = []
        self.closed: dict[int, trio.Event] = {}
        self.sent: dict[int, int] = {}

    def add(self, kind: str, records: list[dict[str, Any]]) -> int:
        port = 1000 + len(self.addresses)
        vault = make_vault(self.tmp / str(port), port, records)
        self.kinds[port], self.vaults[port] = kind, vault
        self.addresses.append(VaultAddress(vault=vault.vault_id, host="127.0.0.1", port=port))
        scope: dict[str, Any] = {"collections": ("other",)} if kind == "denied" else {}
        self.caps.append(cap_for(vault, **scope))
        self.closed[port] = trio.Event()
        self.sent[port] = 0
        return port

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        kind = self.kinds[port]
        if kind == "unreachable":
            raise OSError(errno.ECONNREFUSED, "Connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        behaviour: dict[str, Callable[[int, trio.abc.Stream], Awaitable[None]]] = {
            "good": self._serve,
            "denied": self._serve,
            "hang": self._hang,
            "garbage": self._garbage,
            "killed": self._killed,
            "impostor": self._impostor,
        }
        self.nursery.start_soon(self._guarded, behaviour[kind], port, theirs)
        return ours

    async def _guarded(
        self,
        run: Callable[[int, trio.abc.Stream], Awaitable[None]],
        port: int,
        stream: trio.abc.Stream,
    ) -> None:
        try:
            await run(port, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the aggregator hung up first

    async def _serve(self, port: int, stream: trio.abc.Stream) -> None:
        lab = self

        class Counting(trio.abc.Stream):
            async def send_all(self, data: Any) -> None:
                lab.sent[port] += len(data)
                await stream.send_all(data)

            async def wait_send_all_might_not_block(self) -> None:
                await stream.wait_send_all_might_not_block()

            async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
                return await stream.receive_some(max_bytes)

            async def aclose(self) -> None:
                await stream.aclose()

        try:
            await handle_connection(self.vaults[port], Counting(), clock=clock)
        finally:
            self.closed[port].set()

    async def _impostor(self, port: int, stream: trio.abc.Stream) -> None:
        """Another vault answers at this address."""
        other = next(v for p, v in self.vaults.items() if p != port)
        await handle_connection(other, stream, clock=clock)

    async def _hang(self, port: int, stream: trio.abc.Stream) -> None:
        """Greets like the vault, then never answers (a vault that never greets reads like an
        unreachable one: test_aggregator_hostile.py)."""
        conn = ServerConnection(vault_id=self.vaults[port].vault_id)
        conn.receive_data(bytes(await stream.receive_some(65536)))
        await stream.send_all(conn.data_to_send())
        await trio.sleep_forever()

    async def _garbage(self, port: int, stream: trio.abc.Stream) -> None:
        await stream.send_all(b"\x00\x00\x00\x05hello, this is not PSP")
        await trio.sleep_forever()

    async def _killed(self, port: int, stream: trio.abc.Stream) -> None:
        """Answers like a vault, then dies after the first batch (no end frame)."""
        conn = ServerConnection(vault_id=self.vaults[port].vault_id)
        request = None
        while request is None:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            while (event := conn.next_event()) is not None:
                if isinstance(event, Request):
                    request = event
        conn.send(
            Header(request_id=request.request_id, vault=conn.vault_id, query_id=b"q", as_of=7)
        )
        conn.send(RowBatch(request_id=request.request_id, rows=(b'{"count":1000}',)))
        await stream.send_all(conn.data_to_send())
        await stream.aclose()

    async def client(
        self, pool: VaultPool | None = None, *, row_budget: int = server.ROW_BUDGET
    ) -> OrchestrationClient:
        ours, theirs = trio.testing.memory_stream_pair()
        own = pool or VaultPool(connect=self.connect)
        self.nursery.start_soon(lambda: handle_client(theirs, pool=own, row_budget=row_budget))
        client = OrchestrationClient(ours)
        await client._flush()
        return client


def _people(n: int) -> list[dict[str, Any]]:
    return [{"name": f"p{i:04}", "age": i % 90, "bio": "x" * 80} for i in range(n)]


@pytest.fixture
async def lab(nursery: trio.Nursery, tmp_path: Path) -> Lab:
    return Lab(nursery, tmp_path)


FAULTS = ["good", "denied", "hang", "garbage", "killed", "unreachable", "good"]
EXPECTED = [
    VaultStatus.OK,
    VaultStatus.DENIED,
    VaultStatus.TIMEOUT,
    VaultStatus.ERROR,
    VaultStatus.UNREACHABLE,
    VaultStatus.UNREACHABLE,
    VaultStatus.OK,
]


async def test_every_fault_is_in_the_status_table_best_effort(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    for i, kind in enumerate(FAULTS):
        lab.add(kind, _people(10 + i))
    client = await lab.client()
    start = trio.current_time()
    result = await client.query(
        HOLDER, lab.caps, lab.addresses, COUNT, mode=Mode.BEST_EFFORT, deadline=6, clock=clock
    )
    # The hung vault cost exactly the per-vault deadline (6 s less 10%), no more.
    assert trio.current_time() - start == pytest.approx(5.4, abs=0.01)
    assert [json.loads(r) for _, r in result.rows] == [{"count": 10 + 16}]
    assert [s.status for s in result.statuses] == EXPECTED
    by = {s.index: s for s in result.statuses}
    assert by[1].code is ErrorCode.NOT_PERMITTED and by[1].cursor is None
    assert by[2].code is ErrorCode.DEADLINE and by[2].cursor == (0, 0)
    assert by[3].code is ErrorCode.PROTOCOL
    assert "mid-stream" in by[4].message and by[4].as_of == 7
    # (no errno: refused, unroutable and silent read alike, RFC-NOTES §10.7)
    assert by[5].code is ErrorCode.UNAVAILABLE
    assert by[5].message == f"no PSP vault answers at {lab.addresses[5].address}"
    assert not result.complete and result.done.failed == 5
    # Nothing is dropped silently: every vault that is not ok carries a resume cursor or is final.
    cursor = result.cursor
    assert cursor is not None and {v for v, _, _ in cursor.positions} == {
        lab.addresses[i].vault for i in (2, 3, 4, 5)
    }


async def test_strict_fails_the_whole_query(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    for i, kind in enumerate(FAULTS):
        lab.add(kind, _people(10 + i))
    client = await lab.client()
    start = trio.current_time()
    with pytest.raises(AggregationFailed) as caught:
        await client.query(HOLDER, lab.caps, lab.addresses, COUNT, deadline=6, clock=clock)
    # The first failure stops the request: strict does not wait for the hung vault.
    assert trio.current_time() - start < 0.5
    result = caught.value.result
    assert result.rows == [] and result.mode is Mode.STRICT and not result.complete
    assert result.cursor is None  # the rows were withheld: nothing to resume, run it again
    statuses = [s.status for s in result.statuses]
    assert VaultStatus.TIMEOUT not in statuses and result.done.failed >= 1
    for s, expected in zip(result.statuses, EXPECTED, strict=True):
        # Each vault is either what it really is, or cancelled (with a cursor to redo it).
        assert s.status is expected or (s.status is VaultStatus.CANCELLED and s.cursor is not None)
    assert result.done.failed == sum(s.failed for s in statuses)


async def test_strict_succeeds_when_every_vault_is_ok(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    for n in (3, 4, 5):
        lab.add("good", _people(n))
    pool = VaultPool(connect=lab.connect)
    client = await lab.client(pool)
    result = await client.query(HOLDER, lab.caps, lab.addresses, COUNT, clock=clock)
    assert result.complete and [json.loads(r) for _, r in result.rows] == [{"count": 12}]
    assert result.cursor is None
    # A second request on the same connection reuses the pooled vault connections.
    again = await client.query(HOLDER, lab.caps, lab.addresses, COUNT, clock=clock)
    assert again.complete and pool.connects == 3


async def test_ordered_rows_best_effort_account_for_the_killed_vault(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    lab.add("good", _people(40))
    lab.add("killed", _people(5))
    lab.add("good", _people(25))
    client = await lab.client()
    query = Query(collection="people", op="read", select=("name",), order=("age", True))
    result = await client.query(HOLDER, lab.caps, lab.addresses, query, clock=clock)
    rows = [(i, json.loads(r)) for i, r in result.rows]
    # The order field was added to select for the merge (the killed stub's row has none).
    ages = [r["age"] for i, r in rows if i != 1]
    assert ages == sorted(ages, reverse=True)
    assert [s.status for s in result.statuses] == [
        VaultStatus.OK,
        VaultStatus.UNREACHABLE,
        VaultStatus.OK,
    ]
    # The killed vault sent one row before dying. Whether the merge had already delivered it
    # when the failure arrived depends on scheduling (delivered rows cannot be retracted; queued
    # ones are dropped, RFC-NOTES §10.4). Either way the answer accounts for it exactly: its
    # status counts the rows delivered and its cursor resumes right after them.
    killed = result.statuses[1]
    from_killed = [r for i, r in rows if i == 1]
    assert len(from_killed) == killed.rows <= 1
    assert killed.cursor is not None and killed.cursor[1] == killed.rows
    assert len(rows) == 65 + killed.rows
    assert {i for i, _ in rows} - {1} == {0, 2}
    assert not result.complete


async def test_client_going_away_cancels_the_vaults(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    ports = [lab.add("good", _people(3000)) for _ in range(3)]
    client = await lab.client()
    from psp.aggregation._plan import plan_targets

    _, targets = plan_targets(
        HOLDER,
        lab.caps,
        lab.addresses,
        Query(collection="people", op="read"),
        request_id=1,
        now=clock(),
        rng=lambda n: trio.current_time().hex().encode()[:n].ljust(n, b"0"),
    )
    events = client.events(targets, mode=Mode.BEST_EFFORT, deadline=60)
    first = await events.__anext__()
    assert isinstance(first, MergedRows)
    await events.aclose()
    await client.aclose()  # the client goes away mid-stream
    with trio.fail_after(1):
        for port in ports:
            await lab.closed[port].wait()  # each vault saw its connection end
    total = sum(len(json.dumps(r)) for r in _people(3000))
    assert all(lab.sent[p] < total / 2 for p in ports)


async def test_slow_client_holds_the_vaults_back(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    # A 64 KB row budget per request (4 MiB by default) against 3 × 330 KB of rows.
    budget = 64 << 10
    ports = [lab.add("good", _people(3000)) for _ in range(3)]
    client = await lab.client(row_budget=budget)
    client.window = 1
    from psp.aggregation._plan import plan_targets

    _, targets = plan_targets(
        HOLDER,
        lab.caps,
        lab.addresses,
        Query(collection="people", op="read"),
        request_id=1,
        now=clock(),
        rng=lambda n: bytes(n),
    )
    events = client.events(targets, mode=Mode.BEST_EFFORT, deadline=120)
    first = await events.__anext__()
    assert isinstance(first, MergedRows)
    await trio.sleep(30)  # a client that stopped reading
    stalled = dict(lab.sent)
    await trio.sleep(10)
    assert lab.sent == stalled  # the vaults wait for credit
    row = len(json.dumps(_people(1)[0])) + 30  # a row as a vault sends it (_seq, _ts, framing)
    total = 3000 * row
    # The vaults stopped early: what they sent is what the client took or has in flight (two
    # merged frames: window 1, plus the credit granted on the first), the request's row budget,
    # and one batch per vault (256 rows) the aggregator asked for before the budget ran out.
    assert all(lab.sent[p] < total / 2 for p in ports), (lab.sent, total)
    bound = 2 * server.OUT_ROWS * row + budget + 3 * 256 * row
    assert sum(lab.sent.values()) <= bound, (lab.sent, bound)
    n = len(first.rows)
    async for event in events:  # reading again drains everything
        if isinstance(event, MergedRows):
            n += len(event.rows)
    assert n == 9000


async def test_the_pool_is_bounded_and_forgets_idle_links(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    ports = [lab.add("good", _people(2)) for _ in range(3)]
    pool = VaultPool(connect=lab.connect, max_idle=2, idle_timeout=30)
    client = await lab.client(pool)
    await client.query(HOLDER, lab.caps, lab.addresses, COUNT, clock=clock)
    assert pool.connects == 3 and pool.idle == 2  # the third link was closed, not kept
    await trio.sleep(31)
    await client.query(HOLDER, lab.caps, lab.addresses[:1], COUNT, clock=clock)
    # The stale links were swept (their vaults saw the connection end) and one fresh link kept.
    assert pool.idle == 1 and pool.connects == 4
    with trio.fail_after(1):
        for port in ports:
            await lab.closed[port].wait()


async def test_another_vault_at_the_address_is_an_error(
    lab: Lab, autojump_clock: trio.testing.MockClock
) -> None:
    lab.add("good", _people(3))
    lab.add("impostor", _people(4))
    client = await lab.client()
    result = await client.query(
        HOLDER, lab.caps, lab.addresses, COUNT, mode=Mode.BEST_EFFORT, clock=clock
    )
    assert [json.loads(r) for _, r in result.rows] == [{"count": 3}]
    impostor = result.statuses[1]
    assert impostor.status is VaultStatus.ERROR and impostor.code is ErrorCode.WRONG_VAULT
