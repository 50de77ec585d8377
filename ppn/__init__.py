"""PPN, the PointSav Private Network: WireGuard peer management, the signed roster, mesh
addressing and names, the relay hub, fleet heartbeats and advisory VM placement.

``ppn.wire`` is the shared low-level byte layer (frames, canonical msgpack).
"""

from __future__ import annotations

from ._errors import LocalProtocolError, PPNError, RemoteProtocolError
from ._keys import (
    IdentityKey,
    KeyFormatError,
    WireGuardKeyPair,
    decode_key,
    encode_key,
    verify_signature,
)

__all__ = [
    "IdentityKey",
    "KeyFormatError",
    "LocalProtocolError",
    "PPNError",
    "RemoteProtocolError",
    "WireGuardKeyPair",
    "decode_key",
    "encode_key",
    "verify_signature",
]
