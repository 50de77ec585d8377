"""What the last successful sync applied, per interface: endpoints and the peers this node owns.

The roam rule needs to know whether the *desired* endpoint changed since the last pass, and
``--only-owned`` needs to know which peers ppn put there. Both live in a small JSON record
(public keys and endpoints only, never a secret) under ``$PPN_WG_STATE_DIR`` or
``/run/ppn/wg``, written atomically, and only when it changes.

The roam rule looks at the few peers whose endpoint differs from the device's, so the record
is decoded lazily, entry by entry: a 10,000-peer sync does not parse 10,000 keys to ask about
three. A damaged entry counts as no history for that peer (the safe side of the roam rule).
"""

from __future__ import annotations

import binascii
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ._model import Endpoint, PeerConfig

__all__ = ["SyncRecord", "load_record", "save_record", "state_dir"]


def state_dir() -> str:
    return os.environ.get("PPN_WG_STATE_DIR", "/run/ppn/wg")


def _b64(key: bytes) -> str:
    return binascii.b2a_base64(key, newline=False).decode("ascii")


class RecordedEndpoints(Mapping[bytes, "Endpoint | None"]):
    """Public key → endpoint desired on the last pass, decoded on access."""

    def __init__(self, raw: Mapping[str, object]) -> None:
        self.raw = raw

    def __getitem__(self, key: bytes) -> Endpoint | None:
        text = self.raw[_b64(key)]  # KeyError: not recorded
        if text is None:
            return None
        if not isinstance(text, str):
            raise KeyError(key)
        try:
            return Endpoint.parse(text)
        except ValueError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes) or len(key) != 32:
            return False
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[bytes]:
        from .._keys import KeyFormatError, decode_key

        for text in self.raw:
            try:
                key = decode_key(text)
            except KeyFormatError:
                continue
            if key in self:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True, kw_only=True)
class SyncRecord:
    endpoints: Mapping[bytes, Endpoint | None] = field(default_factory=dict)

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
        peers = data["peers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(peers, dict):
        return None
    return SyncRecord(endpoints=RecordedEndpoints(peers))


def save_record(
    interface: str,
    peers: Iterable[PeerConfig],
    directory: str | None = None,
    *,
    unless_equal: SyncRecord | None = None,
) -> bool:
    """Record ``peers`` as the last sync; with ``unless_equal``, write only when the record
    would differ from that one (a no-change sync then writes nothing at all). True if written."""
    recorded = {_b64(p.public_key): None if p.endpoint is None else str(p.endpoint) for p in peers}
    before = None if unless_equal is None else unless_equal.endpoints
    if isinstance(before, RecordedEndpoints) and before.raw == recorded:
        return False
    path = _path(interface, directory)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"interface": interface, "peers": recorded}, f, separators=(",", ":"))
    os.replace(tmp, path)
    return True
