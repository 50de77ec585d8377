"""Fleet messages decoded from canonical msgpack, read with the shared field reader.

Every fleet message is a map with an exact key set; :func:`expect_map` checks it and returns a
:class:`ppn._fields.Fields` whose reads either return a value of the expected type and range or
raise :class:`RemoteProtocolError` naming the field (``heartbeat.seq must be …``). Keeping the
fleet's binding in one place makes "only RemoteProtocolError escapes" easy to hold.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import wire
from .._errors import RemoteProtocolError
from .._fields import Fields

__all__ = ["Fields", "expect_map", "unpack_message"]


def unpack_message(payload: bytes, *, what: str, max_size: int) -> Any:
    """Canonical msgpack or a RemoteProtocolError (never a wire error)."""
    try:
        return wire.unpack_canonical(payload, max_size=max_size)
    except wire.WireError as exc:
        raise RemoteProtocolError(f"{what}: {exc}") from exc


def expect_map(
    value: Any, *, what: str, required: Collection[str], optional: Collection[str] = ()
) -> Fields:
    """``value`` as a map with exactly the ``required`` keys (and perhaps ``optional`` ones)."""
    return Fields(
        value,
        error=RemoteProtocolError,
        required=frozenset(required),
        optional=frozenset(optional),
        what=what,
    )
