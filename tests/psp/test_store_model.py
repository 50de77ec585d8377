"""The store's query engine against a plain-Python model of RFC-NOTES §9.3 semantics."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psp import Filter, Query, Scope
from psp._io_store import Store

VAULT = b"\x09" * 32
SCOPE = Scope(vaults=(VAULT,))
FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(["", "a", "ab", "b", "1", "é"]),
    st.floats(-3, 3, allow_nan=False).map(lambda x: round(x, 1)),
)
RECORDS = st.lists(
    st.dictionaries(st.sampled_from(["x", "y"]), FIELD_VALUES, max_size=2), min_size=1, max_size=25
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["", "a", "ab", "b", "1", "é"])
)


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    field = draw(st.sampled_from(["x", "y"]))
    op = draw(st.sampled_from(["eq", "in", "range", "prefix"]))
    if op == "eq":
        return Filter(field=field, op=op, args=(draw(SCALARS),))
    if op == "in":
        return Filter(
            field=field, op=op, args=tuple(draw(st.lists(SCALARS, min_size=1, max_size=4)))
        )
    if op == "prefix":
        return Filter(field=field, op=op, args=(draw(st.sampled_from(["", "a", "%", "é"])),))
    kind = draw(st.sampled_from([st.integers(-3, 3), st.sampled_from(["", "a", "b", "é"])]))
    lo, hi = draw(st.one_of(st.none(), kind)), draw(st.one_of(st.none(), kind))
    if lo is None and hi is None:
        lo = draw(kind)
    return Filter(field=field, op="range", args=(lo, hi))


def _kind(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return repr(v)
    return "number" if isinstance(v, int | float) else "text"


def matches(record: dict[str, Any], f: Filter) -> bool:
    if f.field not in record:
        return False
    v = record[f.field]
    if f.op in ("eq", "in"):
        return any(
            _kind(v) == _kind(a) and (v == a if _kind(a) in ("number", "text") else True)
            for a in f.args
        )
    if f.op == "prefix":
        return isinstance(v, str) and v.startswith(f.args[0])
    lo, hi = f.args
    bound = lo if lo is not None else hi
    if _kind(v) != _kind(bound):
        return False
    return (lo is None or v >= lo) and (hi is None or v < hi)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, st.lists(filters(), max_size=2), st.integers(1, 30), st.data())
def test_queries_match_the_model(
    records: list[dict[str, Any]], where: list[Filter], supersede_at: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(Path(tmp), name="m", vault_id=VAULT, now=1)
        store.append_many("c", records, now=5)
        current = {i + 1: r for i, r in enumerate(records)}
        as_of = store.head()[0]
        if supersede_at <= len(records):  # supersede one record after as_of: invisible at as_of
            store.append("c", {"x": "new"}, now=6, supersedes=supersede_at)
        q = Query(collection="c", where=tuple(where), as_of=as_of)
        cur = store.execute(q, SCOPE, limit=100)
        got = [json.loads(r)["_seq"] for r in cur.fetch(1000)]
        expected = [seq for seq, r in current.items() if all(matches(r, f) for f in where)]
        assert got == expected
        counted = store.execute(
            Query(collection="c", op="count", where=tuple(where), as_of=as_of), SCOPE, limit=1
        )
        assert json.loads(counted.fetch(1)[0]) == {"count": len(expected)}
        field = data.draw(st.sampled_from(["x", "y"]))
        order = store.execute(
            Query(collection="c", order=(field, True), as_of=as_of), SCOPE, limit=100
        )
        assert sorted(json.loads(r)["_seq"] for r in order.fetch(1000)) == list(current)
        store.close()


def test_type_confusion_is_impossible(tmp_path: Path) -> None:
    store = Store.create(tmp_path, name="t", vault_id=VAULT, now=1)
    store.append_many("c", [{"x": True}, {"x": 1}, {"x": "1"}, {"x": 1.0}, {"x": None}, {}], now=1)

    def seqs(*where: Filter) -> list[int]:
        cur = store.execute(Query(collection="c", where=where), SCOPE, limit=100)
        return [json.loads(r)["_seq"] for r in cur.fetch(100)]

    assert seqs(Filter(field="x", op="eq", args=(True,))) == [1]
    assert seqs(Filter(field="x", op="eq", args=(1,))) == [2, 4]
    assert seqs(Filter(field="x", op="eq", args=("1",))) == [3]
    assert seqs(Filter(field="x", op="eq", args=(None,))) == [5]
    assert seqs(Filter(field="x", op="in", args=(None, "1", True))) == [1, 3, 5]
    assert seqs(Filter(field="x", op="range", args=(0, None))) == [2, 4]
    assert seqs(Filter(field="x", op="range", args=("", None))) == [3]
