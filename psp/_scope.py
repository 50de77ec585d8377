"""The fixed-schema scope of a capability (RFC-NOTES §9.2.3) and the "within" relation.

No policy language: a scope is exactly these six dimensions, every one required.

- ``vaults``: vault ids (32-byte Ed25519 public keys) the capability is good at.
- ``collections`` / ``fields``: exact names, sorted and unique, or ``["*"]`` for any.
- ``ops``: a sorted subset of ``aggregate``, ``count``, ``read``, ``replicate``, ``stream``
  (``replicate`` copies the whole chain, RFC-NOTES §9.5.1; never granted by default).
- ``time``: ``[lo, hi]``, the record-time window ``lo <= ts < hi`` (seconds).
- ``rows``: most rows one query may return, 0 ≤ rows < 2**32.

Names are compared exactly (never by prefix), so ``people`` grants nothing on ``people_private``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._errors import AuthorizationError, ErrorCode

__all__ = [
    "ANY",
    "MAX_ROWS",
    "MAX_TIME",
    "OPERATIONS",
    "QUERY_OPERATIONS",
    "Scope",
    "valid_collection",
    "valid_field",
]

ANY = "*"
QUERY_OPERATIONS = ("aggregate", "count", "read", "stream")  # a scope's default
OPERATIONS = ("aggregate", "count", "read", "replicate", "stream")
MAX_ROWS = 2**32 - 1
MAX_TIME = 2**40  # seconds; far beyond any real date, small enough to never overflow anywhere
MAX_NAMES = 64
_KEYS = frozenset({"vaults", "collections", "fields", "ops", "time", "rows"})
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def valid_collection(name: object) -> bool:
    return isinstance(name, str) and _COLLECTION.fullmatch(name) is not None


def valid_field(name: object) -> bool:
    return isinstance(name, str) and _FIELD.fullmatch(name) is not None


def _invalid() -> AuthorizationError:
    return AuthorizationError(ErrorCode.SCOPE_INVALID)


def _names(value: object, check: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NAMES:
        raise _invalid()
    if value == [ANY]:
        return (ANY,)
    if not all(check(v) for v in value) or value != sorted(set(value)):
        raise _invalid()
    return tuple(value)


def _contains(parent: tuple[str, ...], child: tuple[str, ...]) -> bool:
    if parent == (ANY,):
        return True
    if child == (ANY,):
        return False
    return set(child) <= set(parent)


@dataclass(frozen=True, kw_only=True)
class Scope:
    vaults: tuple[bytes, ...]
    collections: tuple[str, ...] = (ANY,)
    fields: tuple[str, ...] = (ANY,)
    ops: tuple[str, ...] = QUERY_OPERATIONS
    time: tuple[int, int] = (0, MAX_TIME)
    rows: int = 10_000

    def to_wire(self) -> dict[str, Any]:
        return {
            "vaults": sorted(self.vaults),
            "collections": list(self.collections),
            "fields": list(self.fields),
            "ops": list(self.ops),
            "time": list(self.time),
            "rows": self.rows,
        }

    @classmethod
    def from_wire(cls, value: object) -> Scope:
        """Parse and validate; raises :class:`AuthorizationError` (UNKNOWN_KEY, SCOPE_INVALID…)."""
        if not isinstance(value, dict):
            raise AuthorizationError(ErrorCode.MALFORMED)
        if set(value) - _KEYS:
            raise AuthorizationError(ErrorCode.UNKNOWN_KEY)
        if set(value) != _KEYS:
            raise AuthorizationError(ErrorCode.MALFORMED)
        vaults = value["vaults"]
        if (
            not isinstance(vaults, list)
            or not 1 <= len(vaults) <= MAX_NAMES
            or not all(isinstance(v, bytes) and len(v) == 32 for v in vaults)
            or vaults != sorted(set(vaults))
        ):
            raise _invalid()
        ops = value["ops"]
        if (
            not isinstance(ops, list)
            or not ops
            or not all(isinstance(o, str) and o in OPERATIONS for o in ops)
            or ops != sorted(set(ops))
        ):
            raise _invalid()
        window = value["time"]
        if (
            not isinstance(window, list)
            or len(window) != 2
            or not all(type(t) is int and 0 <= t <= MAX_TIME for t in window)
            or window[0] > window[1]
        ):
            raise _invalid()
        rows = value["rows"]
        if type(rows) is not int or not 0 <= rows <= MAX_ROWS:
            raise _invalid()
        return cls(
            vaults=tuple(vaults),
            collections=_names(value["collections"], valid_collection),
            fields=_names(value["fields"], valid_field),
            ops=tuple(ops),
            time=(window[0], window[1]),
            rows=rows,
        )

    def validate(self) -> Scope:
        """Round-trip through the wire form: raises if this scope could not be sent."""
        return Scope.from_wire(self.to_wire())

    def within(self, parent: Scope) -> bool:
        """True when this scope grants nothing ``parent`` does not, in every dimension."""
        return (
            set(self.vaults) <= set(parent.vaults)
            and _contains(parent.collections, self.collections)
            and _contains(parent.fields, self.fields)
            and set(self.ops) <= set(parent.ops)
            and parent.time[0] <= self.time[0]
            and self.time[1] <= parent.time[1]
            and self.rows <= parent.rows
        )

    def allows_collection(self, name: str) -> bool:
        return self.collections == (ANY,) or name in self.collections

    def allows_field(self, name: str) -> bool:
        return self.fields == (ANY,) or name in self.fields

    @property
    def whole_vault(self) -> bool:
        """Every collection, field and record time: what ``replicate`` needs, since a chain can
        only be checked whole."""
        return self.collections == (ANY,) and self.fields == (ANY,) and self.time == (0, MAX_TIME)
