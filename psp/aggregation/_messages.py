"""The aggregation protocol's frames and their codec (RFC-NOTES §10.2), sans-IO.

The connection cores that speak it are in :mod:`psp.aggregation._connection`.

Same framing as the vault protocol (§9.5: 4-byte length, 1 MiB limit, one canonical msgpack map
per frame with a type ``t``), its own message types so neither port can be mistaken for the
other:

client → aggregator: ``ohello`` (versions), ``agg`` (one aggregated request: target count, mode,
deadlines, initial credit), then exactly ``n`` × ``tgt`` (target index, vault id, address, the
signed envelope and the exact query bytes for that vault), ``credit``, ``cancel``.
aggregator → client: ``ohello`` (chosen version), ``mrows`` (merged rows tagged with their target
index, or nil for a combined aggregate row), ``vstat`` (one per target, once it is final),
``done`` (completeness), ``err`` (the request was refused; id 0: the connection).

Flow control as in §9.5: each ``mrows`` frame uses one unit of the client's credit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from ppn._fields import Fields, unpack_typed
from ppn.wire import pack_canonical

from .._capability import MAX_ENVELOPE_SIZE
from .._errors import ErrorCode, RemoteProtocolError
from .._messages import MAX_CREDIT, MAX_MESSAGE, Cancel, Credit, Error, error_code
from .._query import MAX_QUERY_SIZE
from ._merge import Mode, VaultStatus

__all__ = [
    "AGGREGATION_VERSIONS",
    "MAX_CLIENT_FRAME",
    "MAX_DEADLINE_MS",
    "MAX_TARGETS",
    "AggregateRequest",
    "AggregatorHello",
    "Done",
    "Event",
    "MergedRows",
    "OrchestrationHello",
    "Target",
    "TargetReport",
    "decode_orchestration",
    "encode_orchestration",
]

AGGREGATION_VERSIONS = (1,)
MAX_TARGETS = 4096
MAX_CLIENT_FRAME = 16 * 1024  # a client's frame (a tgt is at most ~12.7 KB); §10.2
MAX_DEADLINE_MS = 300_000
MAX_MERGED_ROWS = 4096  # entries per mrows frame
MAX_ADDRESS = 300
_MAX_ID = 2**32 - 1


@dataclass(frozen=True, kw_only=True)
class OrchestrationHello:
    versions: tuple[int, ...] = AGGREGATION_VERSIONS


@dataclass(frozen=True, kw_only=True)
class AggregatorHello:
    version: int


@dataclass(frozen=True, kw_only=True)
class AggregateRequest:
    """Opens request ``request_id``; exactly ``targets`` :class:`Target` frames follow."""

    request_id: int
    targets: int
    mode: Mode
    deadline_ms: int  # the whole request, from when the aggregator reads this frame
    vault_deadline_ms: int  # each vault; below deadline_ms so statuses arrive in time
    credit: int = 8


@dataclass(frozen=True, kw_only=True)
class Target:
    request_id: int
    index: int
    vault: bytes
    address: str  # HOST:PORT of the vault
    envelope: bytes = b""
    query: bytes = b""


@dataclass(frozen=True, kw_only=True)
class MergedRows:
    request_id: int
    rows: tuple[tuple[int | None, bytes], ...]


@dataclass(frozen=True, kw_only=True)
class TargetReport:
    request_id: int
    index: int
    status: VaultStatus
    rows: int
    as_of: int = 0
    code: ErrorCode | None = None
    message: str = ""
    cursor: tuple[int, int] | None = None


@dataclass(frozen=True, kw_only=True)
class Done:
    request_id: int
    complete: bool  # every target ok
    failed: int  # targets neither ok nor truncated
    count: int  # merged rows sent


Event = (
    OrchestrationHello
    | AggregatorHello
    | AggregateRequest
    | Target
    | Credit
    | Cancel
    | MergedRows
    | TargetReport
    | Done
    | Error
)


def encode_orchestration(event: Event) -> bytes:
    m: dict[str, Any]
    if isinstance(event, OrchestrationHello):
        m = {"t": "ohello", "v": list(event.versions)}
    elif isinstance(event, AggregatorHello):
        m = {"t": "ohello", "v": event.version}
    elif isinstance(event, AggregateRequest):
        m = {
            "t": "agg",
            "id": event.request_id,
            "n": event.targets,
            "mode": event.mode.value,
            "deadline": event.deadline_ms,
            "vdeadline": event.vault_deadline_ms,
            "credit": event.credit,
        }
    elif isinstance(event, Target):
        m = {
            "t": "tgt",
            "id": event.request_id,
            "i": event.index,
            "vault": event.vault,
            "addr": event.address,
            "inv": event.envelope,
            "q": event.query,
        }
    elif isinstance(event, Credit):
        m = {"t": "credit", "id": event.request_id, "n": event.batches}
    elif isinstance(event, Cancel):
        m = {"t": "cancel", "id": event.request_id}
    elif isinstance(event, MergedRows):
        m = {"t": "mrows", "id": event.request_id, "rows": [[i, r] for i, r in event.rows]}
    elif isinstance(event, TargetReport):
        m = {
            "t": "vstat",
            "id": event.request_id,
            "i": event.index,
            "st": event.status.value,
            "rows": event.rows,
            "as_of": event.as_of,
        }
        if event.code is not None:
            m["code"] = int(event.code)
        if event.message:
            m["msg"] = event.message[:MAX_MESSAGE]
        if event.cursor is not None:
            m["cursor"] = list(event.cursor)
    elif isinstance(event, Done):
        m = {
            "t": "done",
            "id": event.request_id,
            "complete": event.complete,
            "failed": event.failed,
            "count": event.count,
        }
    else:
        m = {"t": "err", "id": event.request_id, "code": int(event.code), "msg": event.message}
    return pack_canonical(m)


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed aggregation message: {detail}")


_fields = partial(Fields, error=_bad)


_KEYS_V = frozenset({"t", "v"})
_KEYS_AGG = frozenset({"t", "id", "n", "mode", "deadline", "vdeadline", "credit"})
_KEYS_TGT = frozenset({"t", "id", "i", "vault", "addr", "inv", "q"})
_KEYS_ID_N = frozenset({"t", "id", "n"})
_KEYS_ID = frozenset({"t", "id"})
_KEYS_ID_ROWS = frozenset({"t", "id", "rows"})
_KEYS_VSTAT = frozenset({"t", "id", "i", "st", "rows", "as_of"})
_KEYS_VSTAT_OPTIONAL = frozenset({"code", "msg", "cursor"})
_KEYS_DONE = frozenset({"t", "id", "complete", "failed", "count"})
_KEYS_ERR = frozenset({"t", "id", "code", "msg"})


def decode_orchestration(data: bytes, *, from_server: bool) -> Event:
    """Decode one frame payload sent by the aggregator (``from_server``) or by a client."""
    t, m = unpack_typed(data, error=_bad, max_depth=4)
    if t == "ohello" and not from_server:
        v = _fields(m, required=_KEYS_V).items("v", low=1, high=16)
        if not all(type(x) is int and 0 < x < 2**16 for x in v):
            raise _bad("'v' must list versions")
        return OrchestrationHello(versions=tuple(v))
    if t == "ohello":
        return AggregatorHello(version=_fields(m, required=_KEYS_V).integer("v", 1, 2**16 - 1))
    if t == "agg" and not from_server:
        f = _fields(m, required=_KEYS_AGG)
        if m["mode"] not in ("strict", "best_effort"):
            raise _bad("'mode' is strict or best_effort")
        deadline = f.integer("deadline", 1, MAX_DEADLINE_MS)
        return AggregateRequest(
            request_id=f.integer("id", 1, _MAX_ID),
            targets=f.integer("n", 1, MAX_TARGETS),
            mode=Mode(m["mode"]),
            deadline_ms=deadline,
            vault_deadline_ms=f.integer("vdeadline", 1, deadline),
            credit=f.integer("credit", 0, MAX_CREDIT),
        )
    if t == "tgt" and not from_server:
        f = _fields(m, required=_KEYS_TGT)
        return Target(
            request_id=f.integer("id", 1, _MAX_ID),
            index=f.integer("i", 0, MAX_TARGETS - 1),
            vault=f.blob("vault", size=32),
            address=f.text("addr", low=1, high=MAX_ADDRESS),
            envelope=f.blob("inv", low=1, high=MAX_ENVELOPE_SIZE),
            query=f.blob("q", low=1, high=MAX_QUERY_SIZE),
        )
    if t == "credit" and not from_server:
        f = _fields(m, required=_KEYS_ID_N)
        return Credit(request_id=f.integer("id", 1, _MAX_ID), batches=f.integer("n", 1, MAX_CREDIT))
    if t == "cancel" and not from_server:
        return Cancel(request_id=_fields(m, required=_KEYS_ID).integer("id", 1, _MAX_ID))
    if t == "mrows" and from_server:
        f = _fields(m, required=_KEYS_ID_ROWS)
        rows: list[tuple[int | None, bytes]] = []
        for entry in f.items("rows", low=1, high=MAX_MERGED_ROWS):
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not (entry[0] is None or (type(entry[0]) is int and 0 <= entry[0] < MAX_TARGETS))
                or not isinstance(entry[1], bytes)
            ):
                raise _bad("a merged row is [target index | nil, bytes]")
            rows.append((entry[0], entry[1]))
        return MergedRows(request_id=f.integer("id", 1, _MAX_ID), rows=tuple(rows))
    if t == "vstat" and from_server:
        f = _fields(m, required=_KEYS_VSTAT, optional=_KEYS_VSTAT_OPTIONAL)
        try:
            status = VaultStatus(m["st"])
        except ValueError:
            raise _bad("unknown target status") from None
        cursor = None
        if "cursor" in m:
            as_of, offset = f.integers("cursor", count=2)
            cursor = (as_of, offset)
        return TargetReport(
            request_id=f.integer("id", 1, _MAX_ID),
            index=f.integer("i", 0, MAX_TARGETS - 1),
            status=status,
            rows=f.integer("rows"),
            as_of=f.integer("as_of"),
            code=error_code(f.integer("code", 0, 65535)) if "code" in m else None,
            message=f.text("msg", high=MAX_MESSAGE) if "msg" in m else "",
            cursor=cursor,
        )
    if t == "done" and from_server:
        f = _fields(m, required=_KEYS_DONE)
        return Done(
            request_id=f.integer("id", 1, _MAX_ID),
            complete=f.boolean("complete"),
            failed=f.integer("failed", 0, MAX_TARGETS),
            count=f.integer("count"),
        )
    if t == "err" and from_server:
        f = _fields(m, required=_KEYS_ERR)
        return Error(
            request_id=f.integer("id", 0, _MAX_ID),
            code=error_code(f.integer("code", 0, 65535)),
            message=f.text("msg", high=MAX_MESSAGE),
        )
    raise _bad(f"unexpected message type {t!r}")
