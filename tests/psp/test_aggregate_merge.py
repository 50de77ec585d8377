"""The sans-IO merge against a single-vault oracle.

Records are spread over several real stores (SQLite does each vault's ordering and partial
aggregates exactly as a served vault would); the same records in one store are the oracle. The
per-vault answers reach :class:`Aggregation` in random batch sizes and random interleavings,
output is taken in random chunks, and pages are resumed with the per-vault cursors until none is
left. The concatenated pages must equal the oracle's answer exactly — including order, since
records go into the oracle vault by vault, so its tie-break (sequence number) is the merge's
(target index, then the vault's own order).
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psp import Aggregate, ErrorCode, LocalProtocolError, Query, Scope
from psp._io_store import Store
from psp._query import check_permitted
from psp.aggregation._merge import Aggregation, Mode, VaultStatus, sort_key, status_for_code

NOW = 1_800_000_000
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None

values = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.booleans(),
    st.text(alphabet="abé", max_size=2),
)
records = st.fixed_dictionaries(
    {"k": values, "g": st.sampled_from(["x", "y", "z", 1, None]), "n": st.integers(-50, 50)}
)
vault_records = st.lists(st.lists(records, max_size=12), min_size=1, max_size=4)


def _queries() -> st.SearchStrategy[Query]:
    read = st.builds(
        lambda order, limit: Query(collection="c", op="read", order=order, limit=limit),
        st.one_of(st.none(), st.tuples(st.sampled_from(["k", "n"]), st.booleans())),
        st.one_of(st.none(), st.integers(1, 7)),
    )
    count = st.just(Query(collection="c", op="count"))
    agg = st.builds(
        lambda fn, group, limit: Query(
            collection="c",
            op="aggregate",
            agg=Aggregate(
                fn=fn,
                field=None if fn == "count" else ("k" if fn in ("min", "max") else "n"),
                group=group,
            ),
            limit=limit,
        ),
        st.sampled_from(["count", "sum", "min", "max"]),
        st.sampled_from([None, "g", "k"]),
        st.one_of(st.none(), st.integers(1, 4)),
    )
    return st.one_of(read, count, agg)


@contextmanager
def _stores(groups: list[list[dict[str, Any]]]) -> Iterator[tuple[list[Store], Store]]:
    with tempfile.TemporaryDirectory(dir=SHM) as tmp:
        stores = []
        oracle = Store.create(Path(tmp) / "oracle", name="o", vault_id=b"\0" * 32, now=NOW)
        for i, recs in enumerate(groups):
            s = Store.create(
                Path(tmp) / f"v{i}", name=f"v{i}", vault_id=bytes([i + 1]) * 32, now=NOW
            )
            if recs:
                s.append_many("c", recs, now=NOW)
                oracle.append_many("c", recs, now=NOW)
            stores.append(s)
        try:
            yield stores, oracle
        finally:
            for s in [*stores, oracle]:
                s.close()


def _answer(
    store: Store, query: Query, rows: int
) -> tuple[int, list[bytes], tuple[int, int] | None]:
    # The capability's row limit truncates a vault's answer (with a cursor) when the query has
    # no limit of its own; a limited query is within it.
    scope = Scope(vaults=(b"\1" * 32,), rows=rows if query.limit is None else 100_000)
    cursor = store.execute(query, scope, limit=check_permitted(query, scope))
    out: list[bytes] = []
    while not cursor.done:
        out += cursor.fetch(256)
    resume = cursor.resume_offset
    return cursor.as_of, out, None if resume is None else (cursor.as_of, resume)


def _strip(row: bytes) -> dict[str, Any]:
    obj = json.loads(row)
    obj.pop("_seq", None)
    return obj


def _run_pages(
    stores: list[Store], query: Query, vault_rows: int, rng: random.Random
) -> list[bytes]:
    """Run the aggregated query page by page; return every merged row in order."""
    positions: dict[int, tuple[int, int]] = {i: (0, 0) for i in range(len(stores))}
    merged: list[bytes] = []
    for _ in range(200):
        targets = sorted(positions)
        queries = [
            Query(**{**query.__dict__, "as_of": positions[i][0], "offset": positions[i][1]})
            for i in targets
        ]
        agg = Aggregation(query, [q.offset for q in queries], mode=Mode.STRICT)
        # Each vault's events, interleaved at random.
        pending: list[list[tuple[str, Any]]] = []
        for i, q in zip(targets, queries, strict=True):
            as_of, rows, cursor = _answer(stores[i], q, vault_rows)
            events: list[tuple[str, Any]] = [("head", as_of)]
            while rows:
                n = rng.randint(1, 4)
                events.append(("rows", rows[:n]))
                rows = rows[n:]
            events.append(("end", cursor))
            pending.append(events)
        while not agg.finished:
            live = [t for t, ev in enumerate(pending) if ev]
            if live and rng.random() < 0.7:
                t = rng.choice(live)
                kind, arg = pending[t].pop(0)
                getattr(agg, {"head": "header", "rows": "rows", "end": "end"}[kind])(t, arg)
            else:
                taken = agg.take(rng.randint(1, 5))
                merged += [row for _, row in taken]
                if not live and not taken:
                    agg.take(1000)  # nothing left to feed: must finish now
                    assert agg.finished
        assert all(s.status in (VaultStatus.OK, VaultStatus.TRUNCATED) for s in agg.statuses())
        positions = {targets[s.index]: s.cursor for s in agg.statuses() if s.cursor is not None}
        if not positions:
            return merged
        if query.limit is not None:
            return merged  # one page of a limited query is what the limit asks for
    raise AssertionError("pagination did not terminate")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=vault_records,
    query=_queries(),
    vault_rows=st.sampled_from([2, 3, 1000]),
    seed=st.integers(0, 2**32),
)
def test_merged_pages_equal_the_single_vault_oracle(
    groups: list[list[dict[str, Any]]], query: Query, vault_rows: int, seed: int
) -> None:
    rng = random.Random(seed)
    with _stores(groups) as (stores, oracle):
        merged = _run_pages(stores, query, vault_rows, rng)
        _, expected, _ = _answer(oracle, query, 100_000)
    if query.limit is not None:
        expected = expected[: query.limit]
    if query.op in ("count", "aggregate"):
        # Floats aside, partial aggregates combine to exactly the oracle's rows.
        assert [json.loads(r) for r in merged] == [json.loads(r) for r in expected]
    elif query.order is None and query.limit is None:
        # Unordered: arrival order; the rows (as a multiset) are exactly the oracle's.
        key = lambda r: json.dumps(_strip(r), sort_keys=True)  # noqa: E731
        assert sorted(map(key, merged)) == sorted(map(key, expected))
    elif query.order is None:
        assert len(merged) == len(expected)
    else:
        assert [_strip(r) for r in merged] == [_strip(r) for r in expected]


def test_sort_key_is_sqlite_order() -> None:
    """Checked against SQLite itself: json_extract values ordered by ORDER BY."""
    import sqlite3

    values = [None, True, False, -2, 0.5, 1, 3, "", "a", "B", "b", "é", "[", {"b": 1, "a": 2}, [1]]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (i INTEGER, v TEXT)")
    db.executemany(
        "INSERT INTO t VALUES (?, ?)",
        [
            (i, json.dumps({"x": v}, sort_keys=True, separators=(",", ":")))
            for i, v in enumerate(values)
        ],
    )
    expected = [i for (i,) in db.execute("SELECT i FROM t ORDER BY json_extract(v, '$.x'), i")]
    assert sorted(range(len(values)), key=lambda i: (sort_key(values[i]), i)) == expected


def _agg(n: int, mode: Mode, query: Query | None = None) -> Aggregation:
    return Aggregation(query or Query(collection="c", op="count"), [0] * n, mode=mode)


def test_strict_count_fails_on_any_failed_vault() -> None:
    agg = _agg(3, Mode.STRICT)
    agg.header(0, 5)
    agg.rows(0, [b'{"count":2}'])
    agg.end(0, None)
    agg.fail(1, VaultStatus.DENIED, ErrorCode.NOT_PERMITTED, "no")
    assert agg.failed and agg.finished and agg.take(10) == []
    statuses = agg.statuses()
    assert [s.status for s in statuses] == [
        VaultStatus.OK,
        VaultStatus.DENIED,
        VaultStatus.CANCELLED,
    ]
    assert statuses[1].cursor is None and statuses[2].cursor == (0, 0)


def test_best_effort_count_sums_what_arrived_and_says_so() -> None:
    agg = _agg(3, Mode.BEST_EFFORT)
    for i, n in ((0, 2), (2, 5)):
        agg.header(i, 9)
        agg.rows(i, [json.dumps({"count": n}).encode()])
        agg.end(i, None)
    agg.fail(1, VaultStatus.TIMEOUT, ErrorCode.DEADLINE, "late")
    assert agg.take(10) == [(None, b'{"count":7}')]
    assert agg.finished and not agg.failed and not agg.complete
    assert [s.status for s in agg.statuses()] == [
        VaultStatus.OK,
        VaultStatus.TIMEOUT,
        VaultStatus.OK,
    ]
    assert agg.statuses()[1].cursor == (0, 0)


def test_garbage_row_fails_only_that_vault() -> None:
    q = Query(collection="c", op="read", order=("k", False))
    agg = _agg(2, Mode.BEST_EFFORT, q)
    agg.header(0, 1)
    agg.rows(0, [b'{"k":1}', b"\xff not json"])
    agg.rows(0, [b'{"k":2}'])  # ignored: the vault already failed
    agg.end(0, None)
    agg.header(1, 1)
    agg.rows(1, [b'{"k":0}'])
    agg.end(1, None)
    assert agg.take(10) == [(1, b'{"k":0}')]
    assert agg.finished
    s0, s1 = agg.statuses()
    assert s0.status is VaultStatus.ERROR and s0.code is ErrorCode.PROTOCOL and s0.cursor == (1, 0)
    assert s1.status is VaultStatus.OK


def test_ordered_merge_waits_for_every_vault() -> None:
    q = Query(collection="c", op="read", order=("k", True))
    agg = _agg(2, Mode.BEST_EFFORT, q)
    agg.rows(0, [b'{"k":5}', b'{"k":1}'])
    assert agg.take(10) == []  # vault 1 might still send a larger k
    assert agg.wants_more(1, 1 << 20)
    agg.rows(1, [b'{"k":3}'])
    assert agg.take(10) == [(0, b'{"k":5}'), (1, b'{"k":3}')]
    agg.end(1, None)
    agg.end(0, None)
    assert agg.take(10) == [(0, b'{"k":1}')] and agg.complete


def test_credit_policy_bounds_queued_bytes() -> None:
    agg = _agg(2, Mode.BEST_EFFORT, Query(collection="c", op="read"))
    agg.rows(0, [b"x" * 100] * 10)
    assert agg.queued_bytes == 1000
    assert not agg.wants_more(0, 1000)  # over the budget: vault 0 waits for the client
    assert agg.wants_more(1, 1000)  # nothing queued from vault 1: it may send
    agg.take(10)
    assert agg.queued_bytes == 0 and agg.wants_more(0, 1000)


def test_status_for_code() -> None:
    assert status_for_code(ErrorCode.BAD_SIGNATURE) is VaultStatus.DENIED
    assert status_for_code(ErrorCode.ROW_LIMIT) is VaultStatus.DENIED
    assert status_for_code(ErrorCode.DEADLINE) is VaultStatus.TIMEOUT
    assert status_for_code(ErrorCode.UNAVAILABLE) is VaultStatus.UNREACHABLE
    assert status_for_code(ErrorCode.QUERY_INVALID) is VaultStatus.ERROR


def test_misuse_is_a_local_error() -> None:
    agg = _agg(1, Mode.BEST_EFFORT)
    agg.end(0, None)
    with pytest.raises(LocalProtocolError):
        agg.end(0, None)
    with pytest.raises(LocalProtocolError):
        agg.fail(0, VaultStatus.OK)
    with pytest.raises(LocalProtocolError):
        Aggregation(Query(collection="c"), [], mode=Mode.STRICT)
