"""The byte layer every PPN protocol shares: length-prefixed frames and canonical msgpack.

Low-level and public: the genesis ceremony, PPN control, the fleet services and PSP all frame
their messages this way, so one exact implementation serves them all (RFC-NOTES §2).

Frames: a 4-byte big-endian unsigned length, then that many bytes of payload. A receiver fixes
its maximum frame size and rejects a longer length *before* buffering the payload.

Canonical msgpack: maps with text keys sorted by their UTF-8 bytes, integers in their shortest
form, text as ``str`` and bytes as ``bin``, no floats, no extension types, no duplicate keys.
:func:`unpack_canonical` enforces this by re-encoding what it decoded and comparing, so a value
has exactly one encoding and a signature over bytes is a signature over the value.

This module is a sans-IO core: it never touches sockets, clocks or randomness.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = [
    "HEADER_SIZE",
    "EncodingError",
    "FrameDecoder",
    "FrameError",
    "WireError",
    "encode_frame",
    "pack_canonical",
    "unpack_canonical",
]

HEADER_SIZE = 4
_HEADER = struct.Struct(">I")


class WireError(ValueError):
    """Base class for byte-layer errors. Protocol cores convert it to their RemoteProtocolError."""


class FrameError(WireError):
    """A frame header announced more bytes than the receiver accepts, or the stream ended mid-frame."""


class EncodingError(WireError):
    """Bytes that are not the canonical msgpack encoding of an allowed value."""


def encode_frame(payload: bytes, *, max_size: int) -> bytes:
    """Prefix ``payload`` with its length. Refuses a payload the peer would refuse."""
    if len(payload) > max_size:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the {max_size}-byte limit")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental frame splitter. Feed bytes with :meth:`feed`, take frames with :meth:`next_frame`.

    Memory is bounded by ``max_size + HEADER_SIZE`` plus whatever the caller feeds in one call:
    an oversized header is rejected as soon as its four bytes have arrived.
    """

    def __init__(self, *, max_size: int) -> None:
        if max_size <= 0 or max_size > 0xFFFFFFFF:
            raise ValueError("max_size must be between 1 and 2**32 - 1")
        self.max_size = max_size
        self._buffer = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def at_eof(self) -> bool:
        """True once EOF was fed and every complete frame has been taken."""
        return self._eof and not self._buffer

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None if more bytes are needed.

        Raises :class:`FrameError` for an oversized header, or for EOF in the middle of a frame.
        """
        if len(self._buffer) >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self.max_size:
                raise FrameError(f"peer announced a {length}-byte frame; limit is {self.max_size}")
            end = HEADER_SIZE + length
            if len(self._buffer) >= end:
                payload = bytes(self._buffer[HEADER_SIZE:end])
                del self._buffer[:end]
                return payload
        if self._eof and self._buffer:
            raise FrameError("connection closed in the middle of a frame")
        return None


# --- canonical msgpack -------------------------------------------------------------------------
#
# Text keys are ordered by their UTF-8 bytes. UTF-8 preserves code-point order, so that is the
# same as Python's own ``str`` ordering: no encoding is needed to sort or to check an order.

_MAX_DEPTH_DEFAULT = 16
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _check_and_sort(value: Any, depth: int, max_depth: int) -> Any:
    """Validate a value's types and return it with every map's keys in canonical order."""
    if depth > max_depth:
        raise EncodingError(f"value nested deeper than {max_depth} levels")
    kind = type(value)
    if kind is dict:
        for k in value:
            if type(k) is not str:
                raise EncodingError("map keys must be text")
        return {k: _check_and_sort(value[k], depth + 1, max_depth) for k in sorted(value)}
    if kind is list or kind is tuple:
        return [_check_and_sort(v, depth + 1, max_depth) for v in value]
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise EncodingError("integer out of the 64-bit range")
        return value
    if value is None or kind is bool or kind is str or kind is bytes:
        return value
    # Subclasses (IntEnum, OrderedDict…) encode as their base type.
    bases: tuple[Any, ...] = (bool, dict, list, tuple, int, str, bytes)
    for base in bases:
        if isinstance(value, base):
            return _check_and_sort(base(value), depth, max_depth)
    raise EncodingError(f"type {kind.__name__} has no canonical encoding")


def pack_canonical(value: Any, *, max_depth: int = _MAX_DEPTH_DEFAULT) -> bytes:
    """Encode ``value`` canonically. Raises :class:`EncodingError` for values with no encoding."""
    packed: bytes = msgpack.packb(_check_and_sort(value, 0, max_depth), use_bin_type=True)
    return packed


def _canonical_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    # Called by the C decoder for every map: keys must be text in strictly increasing order,
    # which also rules out duplicates.
    previous: str | None = None
    for key, _ in pairs:
        if type(key) is not str:
            raise EncodingError("map keys must be text")
        if previous is not None and key <= previous:
            raise EncodingError("map keys out of canonical order or duplicated")
        previous = key
    return dict(pairs)


def _reject_ext(code: int, data: bytes) -> Any:
    raise EncodingError("extension types are not allowed")


def _check_tree(value: Any, max_depth: int) -> None:
    """Reject floats and over-deep nesting in a decoded value (maps are checked while decoding)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is float:
            raise EncodingError("floats are not allowed")
        if kind is list or kind is dict:
            if depth >= max_depth and item:
                raise EncodingError(f"value nested deeper than {max_depth} levels")
            children = item.values() if kind is dict else item
            for child in children:
                if type(child) in (list, dict, float):
                    stack.append((child, depth + 1))


def unpack_canonical(
    data: bytes, *, max_depth: int = _MAX_DEPTH_DEFAULT, max_size: int | None = None
) -> Any:
    """Decode bytes that must be the canonical encoding of a value; anything else is rejected.

    Lists come back as lists, maps as dicts with text keys. ``max_size`` bounds the input before
    any parsing work. The check is: maps ordered and text-keyed (while decoding), no extension
    types, no floats, bounded depth, and re-encoding gives back exactly ``data`` (which pins the
    shortest integer and length forms and ``str`` versus ``bin``).
    """
    if max_size is not None and len(data) > max_size:
        raise EncodingError(f"{len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_canonical_map,
            ext_hook=_reject_ext,
        )
    except EncodingError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types (ValueError, ExtraData, TypeError…)
        raise EncodingError("not valid msgpack") from exc
    _check_tree(value, max_depth)
    if msgpack.packb(value, use_bin_type=True) != data:
        raise EncodingError("not the canonical encoding")
    return value
