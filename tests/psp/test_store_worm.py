"""The WORM store: SQL-level immutability, the hash chain, as_of queries, crash safety."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psp import Aggregate, ErrorCode, Filter, Query, QueryError, Scope
from psp._chain import GENESIS, canonical_json, entry_hash
from psp._io_store import DB_FILE, Store, StoreError

VAULT = b"\x07" * 32
SCOPE = Scope(vaults=(VAULT,))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.create(tmp_path / "v", name="test", vault_id=VAULT, now=100)
    s.append_many(
        "people",
        [
            {"name": n, "age": a, "city": c}
            for n, a, c in [
                ("ann", 30, "Oslo"),
                ("bob", 41, "Lima"),
                ("cy", 25, "Oslo"),
                ("di", 52, "Rome"),
            ]
        ],
        now=200,
    )
    s.append("ledger", {"amount": 10, "account": "x"}, now=300)
    assert s.revoke(b"\x01" * 32, now=300) and not s.revoke(b"\x01" * 32, now=301)
    return s


def rows(
    store: Store, query: Query, scope: Scope = SCOPE, limit: int = 100
) -> list[dict[str, object]]:
    cur = store.execute(query, scope, limit=limit)
    return [json.loads(r) for r in cur.fetch(10_000)]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE entries SET payload = '{}' WHERE seq = 2",
        "DELETE FROM entries WHERE seq = 5",
        "DELETE FROM entries",
        "INSERT INTO entries (seq, collection, ts, payload, hash) VALUES (99, 'x', 1, '{}', x'00')",
        "INSERT INTO entries (seq, collection, ts, payload, hash) VALUES (3, 'x', 1, '{}', x'00')",
        "UPDATE meta SET value = 'evil' WHERE key = 'vault_id'",
        "DELETE FROM revocations",
    ],
)
def test_worm_is_enforced_by_sqlite_itself(store: Store, sql: str) -> None:
    raw = sqlite3.connect(store.directory / DB_FILE)
    with pytest.raises(sqlite3.DatabaseError):
        raw.execute(sql)
    raw.close()
    assert store.verify().ok


def test_chain_matches_the_documented_formula(store: Store) -> None:
    db = store.raw_connection()
    prev = GENESIS
    for seq, coll, ts, sup, payload, h in db.execute("SELECT * FROM entries ORDER BY seq"):
        prev = entry_hash(
            prev, seq=seq, ts=ts, supersedes=sup, collection=coll, payload=payload.encode()
        )
        assert prev == h
    report = store.verify()
    assert report.ok and report.entries == 5 and report.head == prev


def test_verify_names_the_first_tampered_entry(store: Store) -> None:
    store.close()
    raw = sqlite3.connect(store.directory / DB_FILE)
    raw.execute("DROP TRIGGER entries_never_updated")  # an attacker with the file can do this…
    raw.execute(
        """UPDATE entries SET payload = '{"age":31,"city":"Oslo","name":"ann"}' WHERE seq = 1"""
    )
    raw.commit()
    raw.close()
    report = Store.open(store.directory).verify()  # …but the chain shows it
    assert report.first_broken == 1 and not report.ok


def test_supersede_hides_the_old_version_only_after_as_of(store: Store) -> None:
    before = store.head()[0]
    seq = store.append("people", {"name": "ann", "age": 31, "city": "Oslo"}, now=400, supersedes=1)
    q = Query(collection="people", where=(Filter(field="name", op="eq", args=("ann",)),))
    assert [r["age"] for r in rows(store, q)] == [31]
    pinned = Query(collection="people", where=q.where, as_of=before)
    assert [r["age"] for r in rows(store, pinned)] == [30]
    assert rows(store, Query(collection="people", op="count"))[0]["count"] == 4
    with pytest.raises(StoreError):
        store.append("people", {"name": "x"}, now=401, supersedes=1)  # already superseded
    with pytest.raises(StoreError):
        store.append("ledger", {"name": "x"}, now=401, supersedes=2)  # other collection
    assert seq == before + 1 and store.verify().ok


def test_filters_projection_order_and_cursor(store: Store) -> None:
    q = Query(
        collection="people",
        where=(Filter(field="city", op="eq", args=("Oslo",)),),
        select=("name",),
    )
    assert [r["name"] for r in rows(store, q)] == ["ann", "cy"]
    assert all(set(r) == {"_seq", "_ts", "name"} for r in rows(store, q))
    q = Query(
        collection="people",
        where=(Filter(field="age", op="range", args=(30, 52)),),
        order=("age", True),
    )
    assert [r["name"] for r in rows(store, q)] == ["bob", "ann"]
    q = Query(collection="people", where=(Filter(field="name", op="in", args=("di", "cy", "zz")),))
    assert [r["name"] for r in rows(store, q)] == ["cy", "di"]
    q = Query(collection="people", where=(Filter(field="city", op="prefix", args=("O",)),))
    assert len(rows(store, q)) == 2
    q = Query(collection="people", where=(Filter(field="city", op="prefix", args=("%",)),))
    assert rows(store, q) == []
    page = store.execute(Query(collection="people", order=("name", False)), SCOPE, limit=3)
    first = [json.loads(r)["name"] for r in page.fetch(100)]
    assert first == ["ann", "bob", "cy"] and page.resume_offset == 3
    rest = store.execute(
        Query(collection="people", order=("name", False), as_of=page.as_of, offset=3),
        SCOPE,
        limit=3,
    )
    assert [json.loads(r)["name"] for r in rest.fetch(100)] == ["di"] and rest.resume_offset is None


def test_aggregates(store: Store) -> None:
    q = Query(
        collection="people", op="aggregate", agg=Aggregate(fn="sum", field="age", group="city")
    )
    assert rows(store, q) == [
        {"group": "Lima", "sum": 41},
        {"group": "Oslo", "sum": 55},
        {"group": "Rome", "sum": 52},
    ]
    q = Query(collection="people", op="aggregate", agg=Aggregate(fn="max", field="age"))
    assert rows(store, q) == [{"max": 52}]
    assert rows(store, Query(collection="people", op="count")) == [{"count": 4}]


def test_scope_fields_and_time_window_apply(store: Store) -> None:
    narrow = Scope(vaults=(VAULT,), fields=("name",), time=(250, 1000))
    assert rows(store, Query(collection="people"), narrow) == []  # people were recorded at 200
    narrow = Scope(vaults=(VAULT,), fields=("name",), time=(0, 250))
    assert all(
        set(r) == {"_seq", "_ts", "name"} for r in rows(store, Query(collection="people"), narrow)
    )


def test_as_of_ahead_of_head_is_refused(store: Store) -> None:
    with pytest.raises(QueryError) as info:
        store.execute(Query(collection="people", as_of=99), SCOPE, limit=10)
    assert info.value.code is ErrorCode.AS_OF_AHEAD


def test_records_must_be_canonicalisable(store: Store) -> None:
    with pytest.raises(StoreError):
        store.append("people", [1, 2], now=1)
    with pytest.raises(StoreError):
        store.append("people", {"x": float("nan")}, now=1)
    with pytest.raises(StoreError):
        store.append("bad name!", {"x": 1}, now=1)
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_open_refuses_non_vaults(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store.open(tmp_path)
    (tmp_path / DB_FILE).write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError):
        Store.open(tmp_path)


_WRITER = """
import sys
from psp._io_store import Store
s = Store.open(sys.argv[1])
i = 0
while True:
    seq = s.append_many("c", [{"i": i, "pad": "x" * 200}] * 3, now=1)
    print(seq, flush=True)
    i += 1
"""


def test_a_killed_writer_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    Store.create(tmp_path, name="crash", vault_id=VAULT, now=1).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged = 0
    deadline = time.monotonic() + 20
    while acknowledged < 60 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)  # mid-append: the writer never stops between appends
    proc.wait()
    store = Store.open(tmp_path)
    report = store.verify()
    assert report.ok, report
    assert report.entries >= acknowledged >= 60
    assert report.entries % 3 == 0  # batches are atomic: no torn batch


def test_field_index_serves_equality_and_order(store: Store) -> None:
    assert store.create_index("name") and not store.create_index("name")
    q = Query(collection="people", where=(Filter(field="name", op="eq", args=("cy",)),))
    assert [r["name"] for r in rows(store, q)] == ["cy"]
    plan = (
        store.raw_connection()
        .execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM entries e WHERE e.collection = 'people' "
            "AND json_extract(e.payload, '$.name') IN ('cy')"
        )
        .fetchall()
    )
    assert any("field_name" in str(row) for row in plan)
    with pytest.raises(StoreError):
        store.create_index("bad name")
    assert store.verify().ok
