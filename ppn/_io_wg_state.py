"""What the last successful sync applied, per interface: endpoints and the peers this node owns.

The roam rule needs to know whether the *desired* endpoint changed since the last pass, and
``--only-owned`` needs to know which peers ppn put there. Both live in a small JSON record
(public keys and endpoints only, never a secret) under ``$PPN_WG_STATE_DIR`` or
``/run/ppn/wg``, written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._keys import KeyFormatError, decode_key, encode_key
from ._wg_model import Endpoint, PeerConfig

__all__ = ["SyncRecord", "load_record", "save_record", "state_dir"]


def state_dir() -> str:
    return os.environ.get("PPN_WG_STATE_DIR", "/run/ppn/wg")


@dataclass(frozen=True, kw_only=True)
class SyncRecord:
    endpoints: dict[bytes, Endpoint | None] = field(default_factory=dict)

    @property
    def owned(self) -> frozenset[bytes]:
        return frozenset(self.endpoints)


def _path(interface: str, directory: str | None) -> str:
    return os.path.join(directory or state_dir(), f"{interface}.json")


def load_record(interface: str, directory: str | None = None) -> SyncRecord | None:
    """The record of the last sync, or None (missing or unreadable: treated as no history)."""
    try:
        with open(_path(interface, directory), encoding="utf-8") as f:
            data = json.load(f)
        endpoints: dict[bytes, Endpoint | None] = {}
        for key, endpoint in data["peers"].items():
            endpoints[decode_key(key)] = None if endpoint is None else Endpoint.parse(endpoint)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, KeyFormatError):
        return None
    return SyncRecord(endpoints=endpoints)


def save_record(interface: str, peers: Iterable[PeerConfig], directory: str | None = None) -> None:
    path = _path(interface, directory)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    data = {
        "interface": interface,
        "peers": {
            encode_key(p.public_key): None if p.endpoint is None else str(p.endpoint) for p in peers
        },
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)
