"""The aggregator over real loopback TCP in one process: many vaults against a single-vault
oracle, and statelessness — the aggregator restarted between two pages of a resumed query."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from psp import Aggregate, ErrorCode, Query, RemoteProtocolError
from psp._io_store import Store
from psp.aggregation import OrchestrationClient, query_via
from psp.aggregation._connection import Target
from psp.aggregation._merge import Mode, VaultStatus
from psp.aggregation._plan import AggregateCursor, plan_targets

from ._orchestration_support import HOLDER, clock, make_vault, serve_fleet, start_aggregator

N_VAULTS = 12


def _records(i: int) -> list[dict[str, Any]]:
    return [
        {"name": f"v{i}-{j}", "age": (i * 13 + j * 7) % 40, "city": ["Oslo", "Lima", "Rome"][j % 3]}
        for j in range(20 + i)
    ]


def _oracle(tmp: Path) -> Store:
    store = Store.create(tmp / "oracle", name="oracle", vault_id=b"\x01" * 32, now=0)
    for i in range(N_VAULTS):
        store.append_many("people", _records(i), now=clock())
    return store


def _oracle_rows(store: Store, query: Query) -> list[Any]:
    from psp import Scope
    from psp._query import check_permitted

    scope = Scope(vaults=(b"\x01" * 32,), rows=100_000)
    cursor = store.execute(query, scope, limit=check_permitted(query, scope))
    rows = []
    while not cursor.done:
        rows += cursor.fetch(256)
    return [{k: v for k, v in json.loads(r).items() if k != "_seq"} for r in rows]


async def test_many_vaults_match_one(nursery: trio.Nursery, tmp_path: Path) -> None:
    vaults = [make_vault(tmp_path / f"v{i}", i + 1, _records(i)) for i in range(N_VAULTS)]
    fleet = await serve_fleet(nursery, vaults)
    port, _ = await start_aggregator(nursery)
    oracle = _oracle(tmp_path)
    queries = [
        Query(collection="people", op="count"),
        Query(
            collection="people", op="aggregate", agg=Aggregate(fn="sum", field="age", group="city")
        ),
        Query(
            collection="people", op="aggregate", agg=Aggregate(fn="max", field="name", group="age")
        ),
        Query(collection="people", op="read", order=("age", False), select=("name", "age")),
        Query(collection="people", op="read", order=("name", True), limit=17),
    ]
    async with await OrchestrationClient.connect("127.0.0.1", port) as client:
        for query in queries:
            result = await client.query(HOLDER, fleet.caps, fleet.addresses, query, clock=clock)
            merged = [
                {k: v for k, v in json.loads(r).items() if k != "_seq"} for _, r in result.rows
            ]
            assert merged == _oracle_rows(oracle, query), query
            if query.limit is None:
                assert result.complete
            if query.op == "read":
                # Every merged row is tagged with the vault it came from.
                for index, raw in result.rows:
                    assert index is not None
                    assert json.loads(raw)["name"].startswith(f"v{index}-")


async def test_restarting_the_aggregator_between_pages(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    vaults = [make_vault(tmp_path / f"v{i}", i + 1, _records(i)) for i in range(4)]
    fleet = await serve_fleet(nursery, vaults)
    query = Query(
        collection="people", op="read", order=("age", True), select=("name", "age"), limit=30
    )
    everything = Query(collection="people", op="read", order=("age", True), select=("name", "age"))
    pages: list[Any] = []
    cursor: AggregateCursor | None = None
    for _ in range(10):
        port, scope = await start_aggregator(nursery)  # a fresh aggregator for every page
        result = await query_via(
            "127.0.0.1",
            port,
            HOLDER,
            fleet.caps,
            fleet.addresses,
            query,
            cursor=cursor,
            clock=clock,
        )
        scope.cancel()  # ... and it is gone; only the client's cursor carries over
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        pages += [{k: v for k, v in json.loads(r).items() if k != "_seq"} for _, r in result.rows]
        assert all(s.status in (VaultStatus.OK, VaultStatus.TRUNCATED) for s in result.statuses)
        cursor = result.cursor
        if cursor is None:
            break
        cursor = AggregateCursor.from_text(cursor.to_text())  # as a user would paste it
    assert cursor is None
    single = await query_via(
        "127.0.0.1",
        (await start_aggregator(nursery))[0],
        HOLDER,
        fleet.caps,
        fleet.addresses,
        everything,
        clock=clock,
    )
    assert pages == [
        {k: v for k, v in json.loads(r).items() if k != "_seq"} for _, r in single.rows
    ]
    assert len(pages) == sum(20 + i for i in range(4))


async def test_the_aggregator_refuses_mismatched_targets(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    vaults = [make_vault(tmp_path / f"v{i}", i + 1, _records(i)) for i in range(2)]
    fleet = await serve_fleet(nursery, vaults)
    port, _ = await start_aggregator(nursery)
    _, a = plan_targets(
        HOLDER,
        fleet.caps,
        fleet.addresses[:1],
        Query(collection="people", op="count"),
        request_id=1,
        now=clock(),
        rng=secrets.token_bytes,
    )
    _, b = plan_targets(
        HOLDER,
        fleet.caps,
        fleet.addresses[1:],
        Query(collection="people", op="read"),
        request_id=1,
        now=clock(),
        rng=secrets.token_bytes,
    )
    targets = [a[0], Target(**{**b[0].__dict__, "index": 1})]
    async with await OrchestrationClient.connect("127.0.0.1", port) as client:
        try:
            async for _ in client.events(targets, mode=Mode.STRICT, deadline=5):
                raise AssertionError("the request should have been refused")
        except RemoteProtocolError as exc:
            assert exc.code is ErrorCode.QUERY_INVALID
        # The connection stays usable for a good request.
        ok = await client.query(
            HOLDER, fleet.caps, fleet.addresses, Query(collection="people", op="count"), clock=clock
        )
        assert ok.complete
