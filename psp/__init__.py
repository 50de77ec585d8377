"""PSP, the PointSav Protocol: capability-based queries to per-entity WORM vaults (VM-Toteboxes),
fanned out by a stateless aggregator (VM-Orchestration)."""

from __future__ import annotations

from ._errors import LocalProtocolError, PSPError, RemoteProtocolError

__all__ = ["LocalProtocolError", "PSPError", "RemoteProtocolError"]
