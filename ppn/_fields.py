"""Checked reads from one decoded message map: the one field reader every PPN protocol uses.

Every wire message of the genesis ceremony, PPN control, the fleet services, PSP and PSP
aggregation is a canonical msgpack map with an exact key set (RFC-NOTES §2). :class:`Fields`
checks the key set once, then each read returns a value of the expected type and range or
raises the protocol's own RemoteProtocolError naming the field. The caller passes that error
type in (``error``), so genesis, ppn and psp keep their separate error hierarchies.

Sans-IO core. The per-message cost matters for PSP row batches (ARCHITECTURE §8.2): the key check
is one comparison of the key view with a frozenset on the common path, and the readers test the
exact types msgpack produces (``type(v) is int`` also refuses ``bool``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from . import wire

__all__ = ["ErrorFactory", "Fields", "MAX_INT", "unpack_typed"]

MAX_INT = 2**63 - 1

ErrorFactory = Callable[[str], Exception]
"""Builds the protocol's RemoteProtocolError from a sentence (an exception class will do)."""


def unpack_typed(
    payload: bytes, *, error: ErrorFactory, max_depth: int, max_size: int | None = None
) -> tuple[str, dict[str, Any]]:
    """A frame payload as ``(type, map)``: canonical msgpack, a map with a text field ``t``."""
    try:
        value = wire.unpack_canonical(payload, max_depth=max_depth, max_size=max_size)
    except wire.EncodingError as exc:
        raise error(f"not canonical msgpack: {exc}") from None
    if type(value) is not dict or type(value.get("t")) is not str:
        raise error("not a map with a text field 't'")
    return value["t"], value


class Fields:
    """One decoded map with a checked key set, and typed reads of its fields.

    ``required`` keys must all be present; ``optional`` ones may be; any other key is refused.
    ``what`` names the message in errors (``"heartbeat.seq must be …"``); without it a field is
    named by its key alone (``"'seq' must be …"``).
    """

    __slots__ = ("_error", "_what", "m")

    def __init__(
        self,
        value: Any,
        *,
        error: ErrorFactory,
        required: frozenset[str],
        optional: frozenset[str] = frozenset(),
        what: str = "",
    ) -> None:
        self._error = error
        self._what = what
        if type(value) is not dict:
            raise error(f"{what or 'a message'} must be a map")
        keys = value.keys()
        if keys != required and not (optional and required <= keys <= required | optional):
            raise self._key_error(keys, required, optional)
        self.m: dict[str, Any] = value

    def __getitem__(self, key: str) -> Any:
        return self.m[key]

    def __contains__(self, key: str) -> bool:
        return key in self.m

    def error(self, detail: str) -> Exception:
        """The protocol's error for a sentence about this message (for checks of its own)."""
        return self._error(detail)

    def bad(self, key: str, rule: str) -> Exception:
        """The protocol's error for field ``key`` breaking ``rule`` (``"must be …"``)."""
        name = f"{self._what}.{key}" if self._what else repr(key)
        return self._error(f"{name} {rule}")

    def integer(self, key: str, low: int = 0, high: int = MAX_INT) -> int:
        v = self.m[key]
        if type(v) is not int or not low <= v <= high:
            raise self.bad(key, f"must be an integer in [{low}, {high}]")
        return v

    def blob(self, key: str, *, size: int | None = None, low: int = 0, high: int = 0) -> bytes:
        """Bytes of exactly ``size``, or of ``low``..``high`` (0 = no upper bound)."""
        v = self.m[key]
        if type(v) is not bytes:
            raise self.bad(key, "must be bytes")
        if size is not None:
            if len(v) != size:
                raise self.bad(key, f"must be {size} bytes")
        elif len(v) < low or (high and len(v) > high):
            raise self.bad(key, f"must be {low}..{high or 'any'} bytes")
        return v

    def text(
        self, key: str, *, high: int, low: int = 0, pattern: re.Pattern[str] | None = None
    ) -> str:
        v = self.m[key]
        if type(v) is not str or not low <= len(v) <= high:
            raise self.bad(key, f"must be text of {low}..{high} characters")
        if pattern is not None and not pattern.match(v):
            raise self.bad(key, "is not well-formed")
        return v

    def boolean(self, key: str) -> bool:
        v = self.m[key]
        if type(v) is not bool:
            raise self.bad(key, "must be true or false")
        return v

    def items(self, key: str, *, high: int, low: int = 0) -> list[Any]:
        """A list of ``low``..``high`` entries (their own checks are the caller's)."""
        v = self.m[key]
        if type(v) is not list or not low <= len(v) <= high:
            raise self.bad(key, f"must be a list of {low}..{high} items")
        return v

    def integers(self, key: str, *, count: int, low: int = 0, high: int = MAX_INT) -> list[int]:
        """A list of exactly ``count`` integers, each in [low, high]."""
        v = self.m[key]
        if (
            type(v) is not list
            or len(v) != count
            or not all(type(x) is int and low <= x <= high for x in v)
        ):
            raise self.bad(key, f"must be {count} integers in [{low}, {high}]")
        return v

    def _key_error(
        self, keys: Collection[str], required: frozenset[str], optional: frozenset[str]
    ) -> Exception:
        what = self._what or "the message"
        missing = required - set(keys)
        if missing:
            return self._error(f"{what} lacks {', '.join(sorted(missing))}")
        unknown = set(keys) - required - optional
        return self._error(f"{what} has unknown fields {', '.join(sorted(unknown))}")
