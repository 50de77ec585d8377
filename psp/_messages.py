"""PSP wire messages (RFC-NOTES §9.5): frame payloads as canonical msgpack maps with a type ``t``.

Client → vault: ``hello``, ``req`` (invocation envelope + query bytes + initial credit),
``credit`` (more row batches the client can take), ``cancel``.
Vault → client: ``hello`` (chosen version, vault id), ``head``, ``rows``, ``end``, ``err``.

Version 2 adds two optional fields, sent only on a version-2 connection (so a version-1 peer
never sees a key it would refuse): ``replica`` in ``head`` (the answer comes from a replica,
:class:`ReplicaMark`) and ``seal`` in ``end`` (the primary's signature over a ``replicate``
answer, RFC-NOTES §9.5.1).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgpack

from ppn._fields import Fields, unpack_typed
from ppn.wire import pack_canonical

from ._errors import ErrorCode, RemoteProtocolError

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_CREDIT",
    "MAX_FRAME",
    "PROTOCOL_VERSIONS",
    "Cancel",
    "ClientHello",
    "Credit",
    "Cursor",
    "End",
    "Error",
    "Event",
    "Header",
    "Request",
    "RowBatch",
    "ReplicaMark",
    "RowDigest",
    "ServerHello",
    "decode_message",
    "encode_message",
    "error_code",
]

MAX_FRAME = 1 << 20
PROTOCOL_VERSIONS = (1, 2)
SEALED_VERSION = 2  # the first version with ``replica`` in head and ``seal`` in end
MAX_BATCH_ROWS = 4096
MAX_CREDIT = 1 << 16  # outstanding batches a client may grant at once
MAX_REQUEST_ID = 2**32 - 1
MAX_MESSAGE = 512


@dataclass(frozen=True, kw_only=True)
class ClientHello:
    versions: tuple[int, ...] = PROTOCOL_VERSIONS


@dataclass(frozen=True, kw_only=True)
class ServerHello:
    version: int
    vault: bytes


@dataclass(frozen=True, kw_only=True)
class Request:
    request_id: int
    envelope: bytes
    query: bytes
    credit: int = 8


@dataclass(frozen=True, kw_only=True)
class Credit:
    request_id: int
    batches: int


@dataclass(frozen=True, kw_only=True)
class Cancel:
    request_id: int


@dataclass(frozen=True, kw_only=True)
class ReplicaMark:
    """What a replica says about itself in ``head`` (RFC-NOTES §9.5): it holds the primary's
    chain up to ``as_of``; ``synced`` is when (Unix seconds) it last heard from the primary, whose
    head was then ``primary_head``."""

    as_of: int
    synced: int
    primary_head: int


@dataclass(frozen=True, kw_only=True)
class Header:
    request_id: int
    vault: bytes
    query_id: bytes
    as_of: int
    replica: ReplicaMark | None = None


@dataclass(frozen=True, kw_only=True)
class RowBatch:
    request_id: int
    rows: tuple[bytes, ...]


@dataclass(frozen=True, kw_only=True)
class Cursor:
    """Where to resume: the same query with this ``as_of`` and ``offset``."""

    as_of: int
    offset: int


@dataclass(frozen=True, kw_only=True)
class End:
    request_id: int
    count: int
    digest: bytes
    cursor: Cursor | None = None
    seal: bytes | None = None  # a replicate answer's signature (RFC-NOTES §9.5.1)


@dataclass(frozen=True, kw_only=True)
class Error:
    """An error frame. ``request_id`` 0 means the connection itself (it closes after)."""

    request_id: int
    code: ErrorCode
    message: str = ""

    @property
    def retryable(self) -> bool:
        return self.code.retryable


Event = ClientHello | ServerHello | Request | Credit | Cancel | Header | RowBatch | End | Error


class RowDigest:
    """SHA-256 over the rows in order, each as ``u32(len(row)) || row``."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def update(self, rows: tuple[bytes, ...] | list[bytes]) -> None:
        for row in rows:
            self._h.update(struct.pack(">I", len(row)))
            self._h.update(row)
        self.count += len(rows)

    def digest(self) -> bytes:
        return self._h.digest()


_pack = msgpack.Packer(use_bin_type=True).pack
_UINT64 = 2**64


def _flat_canonical(m: dict[str, Any]) -> bool:
    """True if ``m`` (keys already in canonical order) holds only values whose plain msgpack
    encoding is canonical: non-negative 64-bit ints, bytes, text, and lists of those."""
    for v in m.values():
        kind = type(v)
        if kind is int:
            if not 0 <= v < _UINT64:
                return False
        elif kind is list:
            for x in v:
                kx = type(x)
                if kx is not bytes and (kx is not int or not 0 <= x < _UINT64):
                    return False
        elif kind is not bytes and kind is not str:
            return False
    return True


def encode_message(event: Event) -> bytes:
    """The canonical bytes of a message. Maps are built with their keys in canonical order, so
    a message of plain values is packed directly; anything else (an int subclass, a value out of
    range) goes through the full canonical encoder, which sorts, converts or refuses it."""
    m: dict[str, Any]
    if isinstance(event, RowBatch):
        m = {"id": event.request_id, "rows": list(event.rows), "t": "rows"}
    elif isinstance(event, Header):
        m = {"as_of": event.as_of, "id": event.request_id, "qid": event.query_id}
        if event.replica is not None:
            r = event.replica
            m["replica"] = [r.as_of, r.synced, r.primary_head]
        m.update(t="head", vault=event.vault)
    elif isinstance(event, End):
        m = {"count": event.count}
        if event.cursor is not None:
            m["cursor"] = [event.cursor.as_of, event.cursor.offset]
        m.update(digest=event.digest, id=event.request_id)
        if event.seal is not None:
            m["seal"] = event.seal
        m["t"] = "end"
    elif isinstance(event, Request):
        m = {
            "credit": event.credit,
            "id": event.request_id,
            "inv": event.envelope,
            "q": event.query,
            "t": "req",
        }
    elif isinstance(event, Credit):
        m = {"id": event.request_id, "n": event.batches, "t": "credit"}
    elif isinstance(event, Cancel):
        m = {"id": event.request_id, "t": "cancel"}
    elif isinstance(event, ClientHello):
        m = {"t": "hello", "v": list(event.versions)}
    elif isinstance(event, ServerHello):
        m = {"t": "hello", "v": event.version, "vault": event.vault}
    else:
        m = {"code": int(event.code), "id": event.request_id, "msg": event.message, "t": "err"}
    if _flat_canonical(m):
        packed: bytes = _pack(m)
        return packed
    return pack_canonical(m)


_KEYS_V = frozenset({"t", "v"})
_KEYS_V_VAULT = frozenset({"t", "v", "vault"})
_KEYS_ID_INV_Q_CREDIT = frozenset({"t", "id", "inv", "q", "credit"})
_KEYS_ID_N = frozenset({"t", "id", "n"})
_KEYS_ID = frozenset({"t", "id"})
_KEYS_ID_VAULT_QID_AS_OF = frozenset({"t", "id", "vault", "qid", "as_of"})
_KEYS_ID_ROWS = frozenset({"t", "id", "rows"})
_KEYS_ID_COUNT_DIGEST = frozenset({"t", "id", "count", "digest"})
_KEYS_ID_CODE_MSG = frozenset({"t", "id", "code", "msg"})
_KEYS_CURSOR = frozenset({"cursor"})
_KEYS_CURSOR_SEAL = frozenset({"cursor", "seal"})
_KEYS_REPLICA = frozenset({"replica"})


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed PSP message: {detail}")


# Bound once: a call per message costs no Python frame beyond the reader's own.
_fields = partial(Fields, error=_bad)


def error_code(raw: int) -> ErrorCode:
    """The code of an ``err`` frame; an unknown one (from a newer peer) keeps its retry class."""
    try:
        return ErrorCode(raw)
    except ValueError:
        return ErrorCode.INTERNAL if raw >= 200 else ErrorCode.PROTOCOL


def decode_message(data: bytes, *, from_server: bool) -> Event:
    """Decode one frame payload sent by the server (``from_server``) or by a client."""
    t, m = unpack_typed(data, error=_bad, max_depth=3)
    if t == "hello" and not from_server:
        f = _fields(m, required=_KEYS_V)
        v = m["v"]
        if (
            not isinstance(v, list)
            or not 1 <= len(v) <= 16
            or not all(type(x) is int and 0 < x < 2**16 for x in v)
        ):
            raise _bad("'v' must list versions")
        return ClientHello(versions=tuple(v))
    if t == "hello":
        f = _fields(m, required=_KEYS_V_VAULT)
        return ServerHello(version=f.integer("v", 1, 2**16 - 1), vault=f.blob("vault", size=32))
    if t == "req" and not from_server:
        f = _fields(m, required=_KEYS_ID_INV_Q_CREDIT)
        return Request(
            request_id=f.integer("id", 1, MAX_REQUEST_ID),
            envelope=f.blob("inv"),
            query=f.blob("q"),
            credit=f.integer("credit", 0, MAX_CREDIT),
        )
    if t == "credit" and not from_server:
        f = _fields(m, required=_KEYS_ID_N)
        return Credit(
            request_id=f.integer("id", 1, MAX_REQUEST_ID), batches=f.integer("n", 1, MAX_CREDIT)
        )
    if t == "cancel" and not from_server:
        f = _fields(m, required=_KEYS_ID)
        return Cancel(request_id=f.integer("id", 1, MAX_REQUEST_ID))
    if t == "head" and from_server:
        f = _fields(m, required=_KEYS_ID_VAULT_QID_AS_OF, optional=_KEYS_REPLICA)
        replica = None
        if "replica" in m:
            as_of, synced, primary_head = f.integers("replica", count=3)
            replica = ReplicaMark(as_of=as_of, synced=synced, primary_head=primary_head)
        return Header(
            request_id=f.integer("id", 1, MAX_REQUEST_ID),
            vault=f.blob("vault", size=32),
            query_id=f.blob("qid", high=64),
            as_of=f.integer("as_of"),
            replica=replica,
        )
    if t == "rows" and from_server:
        f = _fields(m, required=_KEYS_ID_ROWS)
        rows = m["rows"]
        if (
            not isinstance(rows, list)
            or not 1 <= len(rows) <= MAX_BATCH_ROWS
            or not all(isinstance(r, bytes) for r in rows)
        ):
            raise _bad("'rows' must be 1..4096 byte strings")
        return RowBatch(request_id=f.integer("id", 1, MAX_REQUEST_ID), rows=tuple(rows))
    if t == "end" and from_server:
        f = _fields(m, required=_KEYS_ID_COUNT_DIGEST, optional=_KEYS_CURSOR_SEAL)
        cursor = None
        if "cursor" in m:
            as_of, offset = f.integers("cursor", count=2)
            cursor = Cursor(as_of=as_of, offset=offset)
        return End(
            request_id=f.integer("id", 1, MAX_REQUEST_ID),
            count=f.integer("count"),
            digest=f.blob("digest", size=32),
            cursor=cursor,
            seal=f.blob("seal", size=64) if "seal" in m else None,
        )
    if t == "err" and from_server:
        f = _fields(m, required=_KEYS_ID_CODE_MSG)
        return Error(
            request_id=f.integer("id", 0, MAX_REQUEST_ID),
            code=error_code(f.integer("code", 0, 65535)),
            message=f.text("msg", high=MAX_MESSAGE),
        )
    raise _bad(f"unexpected message type {t!r}")
