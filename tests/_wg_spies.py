"""Spies on the kernel dump reader (``ppn.wg._netlink``) for the tests that count its work: which
peer nests were decoded, how many dump messages were indexed peer by peer. The real function
still runs; pytest's monkeypatch restores it after the test."""

from __future__ import annotations

from typing import Any

import pytest

from ppn.wg import _netlink

__all__ = ["decoded_keys", "indexed_messages"]


def decoded_keys(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The public key of every peer nest ``_read_peer`` decodes, in order."""
    decoded: list[bytes] = []
    real = _netlink._read_peer

    def reading(data: bytes, at: int, end: int, into: dict[bytes, Any]) -> None:
        decoded.append(data[at + 4 : at + 36])
        real(data, at, end, into)

    monkeypatch.setattr(_netlink, "_read_peer", reading)
    return decoded


def indexed_messages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per dump message indexed peer by peer (not taken as recorded)."""
    indexed: list[int] = []
    real = _netlink._index_peers

    def indexing(*args: Any) -> Any:
        indexed.append(1)
        return real(*args)

    monkeypatch.setattr(_netlink, "_index_peers", indexing)
    return indexed
