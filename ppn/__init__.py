"""PPN, the PointSav Private Network: WireGuard peer management, the signed roster, mesh
addressing and names, the relay hub, fleet heartbeats and advisory VM placement.

Public modules, each with a curated ``__all__``:

- ``ppn.wg`` — WireGuard model, wg(8) config files, the minimal-diff reconcile planner and the
  UAPI / kernel / fake backends (RFC-NOTES §6);
- ``ppn.mesh`` — node and mesh ids, the signed roster, addressing, names, topology, PPN control
  and the node agent (RFC-NOTES §7);
- ``ppn.fleet`` — heartbeats, the node table with eviction, advisory placement, the vm-host and
  fleet-controller services (RFC-NOTES §8);
- ``ppn.wire`` — the shared low-level byte layer: frames and canonical msgpack (RFC-NOTES §2).

This package itself exports the errors and the key types every node holds. Key types load on
first use, so ``ppn`` commands that do not need them start faster.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._errors import LocalProtocolError, PPNError, RemoteProtocolError

if TYPE_CHECKING:
    from ._keys import (
        IdentityKey,
        KeyFormatError,
        WireGuardKeyPair,
        decode_key,
        encode_key,
        verify_signature,
    )

_LAZY = {
    "IdentityKey": "_keys",
    "KeyFormatError": "_keys",
    "WireGuardKeyPair": "_keys",
    "decode_key": "_keys",
    "encode_key": "_keys",
    "verify_signature": "_keys",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppn' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
