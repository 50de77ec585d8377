"""The genesis package's error hierarchy (ARCHITECTURE §3.4)."""

from __future__ import annotations

__all__ = ["GenesisError", "LocalProtocolError", "RemoteProtocolError"]


class GenesisError(Exception):
    """Base class for every error the genesis package raises on purpose."""


class LocalProtocolError(GenesisError):
    """The caller misused a core (wrong state, bad argument). A bug on our side."""


class RemoteProtocolError(GenesisError):
    """The peer sent something the protocol does not allow."""
