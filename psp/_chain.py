"""The vault's hash chain and record encoding (RFC-NOTES §9.4.2), free of I/O.

Each entry ``n`` (sequence numbers from 1) links to the previous one::

    h_0 = 32 zero bytes
    h_n = SHA-256( h_{n-1} || u64(seq) || u64(ts) || u64(supersedes or 0)
                   || u32(len(collection)) || collection || u32(len(payload)) || payload )

integers big-endian, ``collection`` UTF-8, ``payload`` the record's canonical JSON (UTF-8, keys
sorted, no insignificant whitespace, no NaN/Infinity). This is the platform's service-fs chain
(``h_{n-1} || cursor || id || payload``) with the entry's other fields bound and every
variable-length part length-prefixed, so no two entries hash the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

__all__ = ["GENESIS", "MAX_RECORD_SIZE", "canonical_json", "entry_hash"]

GENESIS = bytes(32)
MAX_RECORD_SIZE = 256 * 1024
_FIXED = struct.Struct(">QQQ")
_LEN = struct.Struct(">I")


class RecordError(ValueError):
    """A record that is not a JSON object with a canonical encoding within the size limit."""


def canonical_json(record: Any) -> bytes:
    if not isinstance(record, dict):
        raise RecordError("a record is a JSON object")
    try:
        text = json.dumps(
            record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise RecordError(f"the record has no canonical JSON form: {exc}") from None
    data = text.encode("utf-8")
    if len(data) > MAX_RECORD_SIZE:
        raise RecordError(f"a record is at most {MAX_RECORD_SIZE} bytes of JSON")
    return data


def entry_hash(
    prev: bytes, *, seq: int, ts: int, supersedes: int | None, collection: str, payload: bytes
) -> bytes:
    coll = collection.encode("utf-8")
    return hashlib.sha256(
        b"".join(
            (
                prev,
                _FIXED.pack(seq, ts, supersedes or 0),
                _LEN.pack(len(coll)),
                coll,
                _LEN.pack(len(payload)),
                payload,
            )
        )
    ).digest()
