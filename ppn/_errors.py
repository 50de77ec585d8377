"""The ppn package's error hierarchy (ARCHITECTURE §3.4)."""

from __future__ import annotations

__all__ = ["PPNError", "LocalProtocolError", "RemoteProtocolError"]


class PPNError(Exception):
    """Base class for every error the ppn package raises on purpose."""


class LocalProtocolError(PPNError):
    """The caller misused a core (wrong state, bad argument). A bug on our side."""


class RemoteProtocolError(PPNError):
    """The peer sent something the protocol does not allow."""
