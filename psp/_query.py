"""Queries: the fixed schema a holder signs (RFC-NOTES §9.3), its validation, and the check
against a capability's scope.

A query is a canonical msgpack map::

    {"v": 1, "coll": C, "op": "read"|"stream"|"count"|"aggregate",
     "where": [[F, "eq", V] | [F, "in", [V...]] | [F, "range", LO|nil, HI|nil] | [F, "prefix", S]],
     "select": [F...], "order": [F, "asc"|"desc"], "limit": N,
     "agg": {"fn": "count"|"sum"|"min"|"max", "field": F, "group": F},
     "as_of": SEQ, "offset": K}

Only ``v``, ``coll`` and ``op`` are required. Values V are text, integers, booleans or nil.
``range`` is ``LO <= x < HI``. ``as_of`` 0 means "the vault's head now"; the vault answers with
the sequence number it used, so a client can repeat or resume the query exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ppn.wire import EncodingError, pack_canonical, unpack_canonical

from ._errors import ErrorCode, QueryError
from ._scope import ANY, MAX_ROWS, QUERY_OPERATIONS, Scope, valid_collection, valid_field

__all__ = [
    "Aggregate",
    "Filter",
    "MAX_QUERY_SIZE",
    "Query",
    "Value",
    "check_permitted",
    "decode_query",
]

Value = str | int | bool | None

MAX_QUERY_SIZE = 4096
MAX_FILTERS = 8
MAX_IN_VALUES = 256
MAX_SELECT = 64
MAX_TEXT = 256
MAX_OFFSET = 2**63 - 1
VAULT_MAX_ROWS = 100_000  # the vault's own cost ceiling per query, whatever the capability says
FILTER_OPS = ("eq", "in", "range", "prefix")
AGGREGATES = ("count", "sum", "min", "max")
_KEYS = frozenset(
    {"v", "coll", "op", "where", "select", "order", "limit", "agg", "as_of", "offset"}
)
_AGG_KEYS = frozenset({"fn", "field", "group"})


def _invalid(detail: str) -> QueryError:
    return QueryError(ErrorCode.QUERY_INVALID, detail)


def _value(v: object) -> Value:
    if v is None or isinstance(v, bool | int):
        return v
    if isinstance(v, str) and len(v) <= MAX_TEXT:
        return v
    raise _invalid("a filter value must be text (≤256 chars), an integer, a boolean or nil")


def _field(f: object) -> str:
    if not valid_field(f):
        raise _invalid("a field name is a letter then letters, digits or '_' (≤64)")
    assert isinstance(f, str)
    return f


@dataclass(frozen=True, kw_only=True)
class Filter:
    field: str
    op: str
    args: tuple[Any, ...]

    def to_wire(self) -> list[Any]:
        if self.op == "in":
            return [self.field, "in", list(self.args)]
        return [self.field, self.op, *self.args]

    @classmethod
    def from_wire(cls, value: object) -> Filter:
        if not isinstance(value, list) or len(value) < 3:
            raise _invalid("a filter is [field, op, args...]")
        field, op = _field(value[0]), value[1]
        rest = value[2:]
        if op == "eq" and len(rest) == 1:
            return cls(field=field, op=op, args=(_value(rest[0]),))
        if op == "in" and len(rest) == 1 and isinstance(rest[0], list):
            if len(rest[0]) > MAX_IN_VALUES:
                raise QueryError(ErrorCode.COST_LIMIT, f"'in' takes at most {MAX_IN_VALUES} values")
            if not rest[0]:
                raise _invalid("'in' needs at least one value")
            return cls(field=field, op=op, args=tuple(_value(v) for v in rest[0]))
        if op == "range" and len(rest) == 2:
            lo, hi = (_value(v) for v in rest)
            bounds = [b for b in (lo, hi) if b is not None]
            if not bounds or any(isinstance(b, bool) for b in bounds):
                raise _invalid("'range' needs an integer or text bound (nil for open ends)")
            if len({type(b) for b in bounds}) != 1:
                raise _invalid("'range' bounds must both be integers or both text")
            return cls(field=field, op=op, args=(lo, hi))
        if op == "prefix" and len(rest) == 1 and isinstance(rest[0], str):
            return cls(field=field, op=op, args=(_value(rest[0]),))
        raise _invalid(f"unknown filter {op!r} or wrong arguments; have {', '.join(FILTER_OPS)}")


@dataclass(frozen=True, kw_only=True)
class Aggregate:
    fn: str
    field: str | None = None
    group: str | None = None

    def to_wire(self) -> dict[str, Any]:
        m: dict[str, Any] = {"fn": self.fn}
        if self.field is not None:
            m["field"] = self.field
        if self.group is not None:
            m["group"] = self.group
        return m


@dataclass(frozen=True, kw_only=True)
class Query:
    collection: str
    op: str = "read"
    where: tuple[Filter, ...] = ()
    select: tuple[str, ...] = ()
    order: tuple[str, bool] | None = None  # (field, descending)
    limit: int | None = None
    agg: Aggregate | None = None
    as_of: int = 0
    offset: int = 0

    def to_wire(self) -> dict[str, Any]:
        m: dict[str, Any] = {"v": 1, "coll": self.collection, "op": self.op}
        if self.where:
            m["where"] = [f.to_wire() for f in self.where]
        if self.select:
            m["select"] = list(self.select)
        if self.order is not None:
            m["order"] = [self.order[0], "desc" if self.order[1] else "asc"]
        if self.limit is not None:
            m["limit"] = self.limit
        if self.agg is not None:
            m["agg"] = self.agg.to_wire()
        if self.as_of:
            m["as_of"] = self.as_of
        if self.offset:
            m["offset"] = self.offset
        return m

    def encode(self) -> bytes:
        """The canonical bytes a holder signs. Validates by decoding them back."""
        data = pack_canonical(self.to_wire())
        decode_query(data)
        return data

    def fields(self) -> set[str]:
        """Every field the query reads, filters, orders or groups on."""
        names = {f.field for f in self.where} | set(self.select)
        if self.order is not None:
            names.add(self.order[0])
        if self.agg is not None:
            names |= {n for n in (self.agg.field, self.agg.group) if n is not None}
        return names


def _count(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _invalid(f"{what} must be an integer in [{low}, {high}]")
    return value


def decode_query(data: bytes) -> Query:
    """Parse and validate query bytes; raises :class:`QueryError` and nothing else."""
    try:
        m = unpack_canonical(data, max_depth=4, max_size=MAX_QUERY_SIZE)
    except EncodingError:
        raise _invalid("the query is not canonical msgpack within 4 KB") from None
    if not isinstance(m, dict) or m.get("v") != 1 or type(m.get("v")) is not int:
        raise _invalid("the query is not a version-1 query map")
    if set(m) - _KEYS:
        raise _invalid(f"unknown query keys: {', '.join(sorted(set(m) - _KEYS))}")
    collection, op = m.get("coll"), m.get("op")
    if not valid_collection(collection):
        raise _invalid("a collection name is letters, digits, '_', '.', '-' (≤64)")
    assert isinstance(collection, str)
    if op not in QUERY_OPERATIONS:
        raise _invalid(f"the operation must be one of {', '.join(QUERY_OPERATIONS)}")
    where_raw = m.get("where", [])
    if not isinstance(where_raw, list) or (not where_raw and "where" in m):
        raise _invalid("'where' is a non-empty list of filters")
    if len(where_raw) > MAX_FILTERS:
        raise QueryError(ErrorCode.COST_LIMIT, f"at most {MAX_FILTERS} filters")
    where = tuple(Filter.from_wire(f) for f in where_raw)
    select_raw = m.get("select", [])
    if not isinstance(select_raw, list) or (not select_raw and "select" in m):
        raise _invalid("'select' is a non-empty list of fields")
    if len(select_raw) > MAX_SELECT:
        raise QueryError(ErrorCode.COST_LIMIT, f"at most {MAX_SELECT} selected fields")
    select = tuple(_field(f) for f in select_raw)
    if len(set(select)) != len(select):
        raise _invalid("'select' names a field twice")
    order: tuple[str, bool] | None = None
    if "order" in m:
        o = m["order"]
        if not isinstance(o, list) or len(o) != 2 or o[1] not in ("asc", "desc"):
            raise _invalid("'order' is [field, 'asc'|'desc']")
        order = (_field(o[0]), o[1] == "desc")
    limit = _count(m["limit"], "'limit'", 1, MAX_ROWS) if "limit" in m else None
    as_of = _count(m.get("as_of", 0), "'as_of'", 0, MAX_OFFSET)
    offset = _count(m.get("offset", 0), "'offset'", 0, MAX_OFFSET)
    if ("as_of" in m and as_of == 0) or ("offset" in m and offset == 0):
        raise _invalid("omit 'as_of' and 'offset' rather than sending 0")
    agg: Aggregate | None = None
    if "agg" in m:
        a = m["agg"]
        if not isinstance(a, dict) or set(a) - _AGG_KEYS or a.get("fn") not in AGGREGATES:
            raise _invalid("'agg' is {fn: count|sum|min|max, field?, group?}")
        agg = Aggregate(
            fn=a["fn"],
            field=_field(a["field"]) if "field" in a else None,
            group=_field(a["group"]) if "group" in a else None,
        )
        if (agg.fn == "count") != (agg.field is None):
            raise _invalid("'count' takes no field; sum, min and max need one")
    if op == "aggregate" and agg is None:
        raise _invalid("an 'aggregate' query needs 'agg'")
    if op != "aggregate" and agg is not None:
        raise _invalid("only an 'aggregate' query takes 'agg'")
    if op in ("count", "aggregate") and (select or order is not None):
        raise _invalid("'count' and 'aggregate' queries take no 'select' or 'order'")
    return Query(
        collection=collection,
        op=op,
        where=where,
        select=select,
        order=order,
        limit=limit,
        agg=agg,
        as_of=as_of,
        offset=offset,
    )


def check_permitted(query: Query, scope: Scope) -> int:
    """Raise unless ``scope`` allows ``query``; return the row limit to apply."""
    if not scope.allows_collection(query.collection) or query.op not in scope.ops:
        raise QueryError(ErrorCode.NOT_PERMITTED)
    if scope.fields != (ANY,):
        denied = sorted(f for f in query.fields() if not scope.allows_field(f))
        if denied:
            raise QueryError(ErrorCode.NOT_PERMITTED, f"field {denied[0]!r} is not in scope")
    if query.limit is not None and query.limit > scope.rows:
        raise QueryError(ErrorCode.ROW_LIMIT)
    limit = query.limit if query.limit is not None else min(scope.rows, VAULT_MAX_ROWS)
    if limit > VAULT_MAX_ROWS:
        raise QueryError(ErrorCode.COST_LIMIT, f"a query returns at most {VAULT_MAX_ROWS} rows")
    return limit
