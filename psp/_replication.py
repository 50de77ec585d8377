"""Replication of a vault's chain (RFC-NOTES §9.5.1), free of I/O.

A follower holding the primary's chain up to ``(seq, head)`` asks for the entries after it with
a ``replicate`` query (a capability operation of its own, §9.2.3); the primary answers with at
most ``max`` entries, each a row ``[seq, ts, supersedes, collection, payload]``, and seals the
answer: its ``end`` frame carries the vault key's signature over the chain head the answer
reaches. :class:`ReplicaChain` checks an answer entry by entry — consecutive sequence numbers,
canonical records, each hash recomputed from its predecessor (§9.4.2) — and then the seal, so
nothing is written unless every link holds and the vault's own key vouches for where they lead.

Both ends of the bytes live here: the query's codec and the permission check the vault makes,
the row codec, the seal, and the follower's check.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from ppn.wire import EncodingError, pack_canonical, unpack_canonical

from ._chain import GENESIS, MAX_RECORD_SIZE, entry_hash
from ._ed25519 import verify_in_context
from ._errors import ErrorCode, PSPError, QueryError
from ._query import MAX_QUERY_SIZE, Query, decode_query
from ._scope import Scope, valid_collection

__all__ = [
    "CONTEXT_SEAL",
    "MAX_ANSWER_BYTES",
    "MAX_ENTRIES",
    "MAX_REVOCATIONS",
    "Entry",
    "ReplicaChain",
    "ReplicateQuery",
    "ReplicationError",
    "VerifiedBatch",
    "decode_entry",
    "decode_request_query",
    "encode_entry",
    "encode_revocation",
    "permit_replicate",
    "seal_message",
]

MAX_ENTRIES = 4096  # entries per replicate answer
MAX_REVOCATIONS = 1024  # revocations per replicate answer (they come first)
MAX_ANSWER_BYTES = 8 << 20  # the answer stops after the entry that reaches this many row bytes
# A row is a record (at most MAX_RECORD_SIZE) plus its collection and three integers.
MAX_ROW = MAX_RECORD_SIZE + 128
CONTEXT_SEAL = b"PSP-v1 replica seal\x00"
_SEAL = struct.Struct(">Q")
_MAX_SEQ = 2**63 - 1
_QUERY_KEYS = frozenset({"v", "op", "after", "prev", "max", "revs"})
_QUERY_REQUIRED = frozenset({"v", "op", "after", "prev"})


class ReplicationError(PSPError):
    """A replicate answer that does not continue the follower's chain, or whose seal does not
    verify. Nothing of the answer may be written."""


def _invalid(detail: str) -> QueryError:
    return QueryError(ErrorCode.QUERY_INVALID, detail)


@dataclass(frozen=True, kw_only=True)
class ReplicateQuery:
    """Entries after ``after``, whose hash the follower holds as ``prev``; at most ``max_entries``."""

    after: int
    prev: bytes
    max_entries: int = MAX_ENTRIES
    revocations: int = 0  # the primary's revocations the follower holds (ids 1..revocations)

    def encode(self) -> bytes:
        m: dict[str, Any] = {"after": self.after}
        if self.max_entries != MAX_ENTRIES:
            m["max"] = self.max_entries
        m.update(op="replicate", prev=self.prev)
        if self.revocations:
            m["revs"] = self.revocations
        m["v"] = 1
        return pack_canonical(m)


def decode_request_query(data: bytes) -> Query | ReplicateQuery:
    """The query of a request: a ``replicate`` query, or any other (:func:`decode_query`)."""
    try:
        m = unpack_canonical(data, max_depth=4, max_size=MAX_QUERY_SIZE)
    except EncodingError:
        raise _invalid("the query is not canonical msgpack within 4 KB") from None
    if not isinstance(m, dict) or m.get("op") != "replicate":
        return decode_query(data)
    if set(m) - _QUERY_KEYS or not set(m) >= _QUERY_REQUIRED:
        raise _invalid("a replicate query is {v, op, after, prev, max?, revs?}")
    after, prev, most = m["after"], m["prev"], m.get("max", MAX_ENTRIES)
    if m["v"] != 1 or type(m["v"]) is not int:
        raise _invalid("the query is not a version-1 query map")
    if type(after) is not int or not 0 <= after <= _MAX_SEQ:
        raise _invalid("'after' is a sequence number (0 for the start)")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise _invalid("'prev' is the 32-byte chain hash at 'after'")
    if (
        type(most) is not int
        or not 1 <= most <= MAX_ENTRIES
        or ("max" in m and most == MAX_ENTRIES)
    ):
        raise _invalid(f"'max' is 1..{MAX_ENTRIES - 1} (omitted for {MAX_ENTRIES})")
    revs = m.get("revs", 0)
    if type(revs) is not int or not 0 <= revs <= _MAX_SEQ or ("revs" in m and revs == 0):
        raise _invalid("'revs' is a count of revocations (omitted for 0)")
    return ReplicateQuery(after=after, prev=prev, max_entries=most, revocations=revs)


def permit_replicate(query: ReplicateQuery, scope: Scope) -> int:
    """The most entries the answer may hold under ``scope``, or raise. ``replicate`` must be
    granted, over the whole vault: a chain is only checkable whole."""
    if "replicate" not in scope.ops:
        raise QueryError(ErrorCode.NOT_PERMITTED)
    if not scope.whole_vault:
        raise QueryError(
            ErrorCode.NOT_PERMITTED,
            "replicate needs a capability for every collection, field and record time",
        )
    if scope.rows == 0:
        raise QueryError(ErrorCode.ROW_LIMIT)
    return min(query.max_entries, scope.rows)


class Entry(NamedTuple):
    """One chain entry as replicated (a named tuple: a catch-up makes millions of them)."""

    seq: int
    ts: int
    supersedes: int | None
    collection: str
    payload: bytes  # the record's canonical JSON


_pack = msgpack.Packer(use_bin_type=True).pack
# The encoder of _chain.canonical_json, built once (json.dumps builds one per call when given
# options): a catch-up checks every record's canonical form.
_canonical_text = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


_decode_json = json.JSONDecoder().decode


def _canonical(record: dict[str, Any]) -> bytes:
    return _canonical_text(record).encode("utf-8")


def encode_entry(
    seq: int, ts: int, supersedes: int | None, collection: str, payload: bytes
) -> bytes:
    """One answer row: canonical msgpack ``[seq, ts, supersedes or 0, collection, payload]``
    (all plain values, so msgpack's own encoding is the canonical one)."""
    packed: bytes = _pack([seq, ts, supersedes or 0, collection, payload])
    return packed


_collections_seen: set[str] = set()  # valid names met before (a vault has few collections)


def _collection_ok(name: str) -> bool:
    if not valid_collection(name):
        return False
    if len(_collections_seen) < 1024:
        _collections_seen.add(name)
    return True


def decode_entry(row: bytes) -> Entry:
    """An answer row, strictly: five plain values whose msgpack encoding is exactly ``row``
    (for plain values msgpack's own encoding is the canonical one, so re-packing and comparing
    is the canonical check of RFC-NOTES §2.2, at a fraction of the general decoder's cost)."""
    if len(row) > MAX_ROW:
        raise ReplicationError("an entry is larger than an entry may be")
    try:
        value = msgpack.unpackb(row, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ReplicationError("an entry is not msgpack") from None
    if not (
        type(value) is list
        and len(value) == 5
        and type(value[0]) is int
        and type(value[1]) is int
        and type(value[2]) is int
        and min(value[0], value[1], value[2]) >= 0
        and max(value[0], value[1], value[2]) <= _MAX_SEQ
        and type(value[3]) is str
        and (value[3] in _collections_seen or _collection_ok(value[3]))
        and type(value[4]) is bytes
        and _pack(value) == row
    ):
        raise ReplicationError(
            "an entry is the canonical [seq, ts, supersedes, collection, payload]"
        )
    seq, ts, sup, collection, payload = value
    return Entry(seq, ts, sup or None, collection, payload)


def encode_revocation(rev_id: int, link: bytes) -> bytes:
    """A revocation row: canonical msgpack ``[id, link id]`` (the primary's revocation number,
    1, 2, …, and the revoked link's id)."""
    packed: bytes = _pack([rev_id, link])
    return packed


def _decode_revocation(row: bytes) -> tuple[int, bytes] | None:
    """A revocation row, or None if ``row`` is not one (then it must be an entry)."""
    if len(row) > 64:
        return None
    try:
        value = msgpack.unpackb(row, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if (
        type(value) is list
        and len(value) == 2
        and type(value[0]) is int
        and 1 <= value[0] <= _MAX_SEQ
        and type(value[1]) is bytes
        and len(value[1]) == 32
        and _pack(value) == row
    ):
        return value[0], value[1]
    return None


def seal_message(
    vault_id: bytes, seq: int, head: bytes, revocations: int = 0, revoked: bytes = b""
) -> bytes:
    """What the primary signs (after :data:`CONTEXT_SEAL`): its id, the chain head
    ``(seq, head)`` an answer reaches, and the revocations it holds through this answer with
    SHA-256 of the link ids the answer carries (``revoked``: those ids concatenated)."""
    return (
        vault_id
        + _SEAL.pack(seq)
        + head
        + _SEAL.pack(revocations)
        + hashlib.sha256(revoked).digest()
    )


@dataclass(frozen=True, kw_only=True)
class VerifiedBatch:
    """Entries that continue the chain, each with its hash; ``primary_head`` is the primary's
    head sequence number when it answered."""

    entries: tuple[tuple[Entry, bytes], ...]
    seq: int
    head: bytes
    primary_head: int
    revoked: tuple[bytes, ...] = ()  # link ids the primary revoked, in its order
    revocations: int = 0  # the primary's revocations held once this batch is written


class ReplicaChain:
    """The follower's view of the chain it copies: where it stands, what to ask next, and the
    check of an answer. Advance it with :meth:`advance` only once the batch is on disk."""

    def __init__(
        self, *, vault_id: bytes, seq: int = 0, head: bytes = GENESIS, revocations: int = 0
    ) -> None:
        self.vault_id = vault_id
        self.seq = seq
        self.head = head
        self.revocations = revocations

    def query(self, max_entries: int = MAX_ENTRIES) -> ReplicateQuery:
        return ReplicateQuery(
            after=self.seq, prev=self.head, max_entries=max_entries, revocations=self.revocations
        )

    def check(
        self, rows: list[bytes], *, seal: bytes | None, primary_head: int, asked: int
    ) -> VerifiedBatch:
        """The answer's revocations, then every entry in order, then the seal over where they
        lead. Raises :class:`ReplicationError`; a bad seal gets one sentence, whatever was wrong
        with it."""
        revoked: list[bytes] = []
        for row in rows[:MAX_REVOCATIONS]:
            revocation = _decode_revocation(row)
            if revocation is None:
                break
            if revocation[0] != self.revocations + len(revoked) + 1:
                raise ReplicationError("the primary's revocations are not in order")
            revoked.append(revocation[1])
        rows = rows[len(revoked) :]
        if len(rows) > asked:
            raise ReplicationError(f"the answer holds {len(rows)} entries; {asked} were asked for")
        size = 0
        seq, head = self.seq, self.head
        out: list[tuple[Entry, bytes]] = []
        for row in rows:
            if size >= MAX_ANSWER_BYTES:
                raise ReplicationError("the answer is larger than an answer may be")
            size += len(row)
            entry = decode_entry(row)
            seq += 1
            if entry.seq != seq:
                raise ReplicationError(f"entry {entry.seq} where entry {seq} was due")
            if entry.supersedes is not None and entry.supersedes >= seq:
                raise ReplicationError(f"entry {seq} supersedes a later entry")
            if len(entry.payload) > MAX_RECORD_SIZE:
                raise ReplicationError(f"entry {seq}: the record is larger than a record may be")
            try:
                record = _decode_json(entry.payload.decode("utf-8"))
                canonical = type(record) is dict and _canonical(record) == entry.payload
            except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError included
                canonical = False
            if not canonical:
                raise ReplicationError(f"entry {seq}: the record is not canonical JSON")
            head = entry_hash(
                head,
                seq=seq,
                ts=entry.ts,
                supersedes=entry.supersedes,
                collection=entry.collection,
                payload=entry.payload,
            )
            out.append((entry, head))
        if primary_head < seq:
            raise ReplicationError("the answer reaches beyond the head the primary announced")
        revocations = self.revocations + len(revoked)
        message = seal_message(self.vault_id, seq, head, revocations, b"".join(revoked))
        if seal is None or not verify_in_context(self.vault_id, CONTEXT_SEAL, message, seal):
            raise ReplicationError("the primary's seal over the answer does not verify")
        return VerifiedBatch(
            entries=tuple(out),
            seq=seq,
            head=head,
            primary_head=primary_head,
            revoked=tuple(revoked),
            revocations=revocations,
        )

    def advance(self, batch: VerifiedBatch) -> None:
        self.seq, self.head, self.revocations = batch.seq, batch.head, batch.revocations
