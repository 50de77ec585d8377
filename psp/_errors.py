"""The psp package's error hierarchy (ARCHITECTURE §3.4)."""

from __future__ import annotations

__all__ = ["PSPError", "LocalProtocolError", "RemoteProtocolError"]


class PSPError(Exception):
    """Base class for every error the psp package raises on purpose."""


class LocalProtocolError(PSPError):
    """The caller misused a core (wrong state, bad argument). A bug on our side."""


class RemoteProtocolError(PSPError):
    """The peer sent something the protocol does not allow."""
