"""Strict field readers for fleet messages decoded from canonical msgpack.

Every fleet message is a map with an exact key set; a reader either returns a value of the
expected type and range or raises :class:`RemoteProtocolError` naming the field. Keeping these
in one place keeps the decoders short and makes "only RemoteProtocolError escapes" easy to hold.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from .. import wire
from .._errors import RemoteProtocolError

__all__ = [
    "expect_bool",
    "expect_bytes",
    "expect_int",
    "expect_list",
    "expect_map",
    "expect_text",
    "unpack_message",
]


def unpack_message(payload: bytes, *, what: str, max_size: int) -> Any:
    """Canonical msgpack or a RemoteProtocolError (never a wire error)."""
    try:
        return wire.unpack_canonical(payload, max_size=max_size)
    except wire.WireError as exc:
        raise RemoteProtocolError(f"{what}: {exc}") from exc


def expect_map(
    value: Any, *, what: str, required: Collection[str], optional: Collection[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what} must be a map")
    keys = set(value)
    missing = set(required) - keys
    if missing:
        raise RemoteProtocolError(f"{what} lacks {', '.join(sorted(missing))}")
    unknown = keys - set(required) - set(optional)
    if unknown:
        raise RemoteProtocolError(f"{what} has unknown fields {', '.join(sorted(unknown))}")
    return value


def expect_text(
    m: dict[str, Any], key: str, *, what: str, max_len: int, pattern: re.Pattern[str] | None = None
) -> str:
    value = m[key]
    if not isinstance(value, str) or len(value) > max_len:
        raise RemoteProtocolError(f"{what}.{key} must be text of at most {max_len} characters")
    if pattern is not None and not pattern.match(value):
        raise RemoteProtocolError(f"{what}.{key} is not well-formed")
    return value


def expect_int(m: dict[str, Any], key: str, *, what: str, low: int, high: int) -> int:
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RemoteProtocolError(f"{what}.{key} must be an integer in [{low}, {high}]")
    return value


def expect_bool(m: dict[str, Any], key: str, *, what: str) -> bool:
    value = m[key]
    if not isinstance(value, bool):
        raise RemoteProtocolError(f"{what}.{key} must be true or false")
    return value


def expect_bytes(m: dict[str, Any], key: str, *, what: str, size: int) -> bytes:
    value = m[key]
    if not isinstance(value, bytes) or len(value) != size:
        raise RemoteProtocolError(f"{what}.{key} must be {size} bytes")
    return value


def expect_list(m: dict[str, Any], key: str, *, what: str, max_len: int) -> list[Any]:
    value = m[key]
    if not isinstance(value, list) or len(value) > max_len:
        raise RemoteProtocolError(f"{what}.{key} must be a list of at most {max_len} items")
    return value
