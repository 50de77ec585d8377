"""Genesis: the PPN join ceremony (CPace PAKE keyed by a short code, key confirmation, SAS).

``genesis.cpace`` is the low-level CPace implementation (public for interop tests and
benchmarks). The ceremony's sans-IO cores and trio adapter are re-exported here.
"""

from __future__ import annotations

from ._errors import GenesisError, LocalProtocolError, RemoteProtocolError

__all__ = ["GenesisError", "LocalProtocolError", "RemoteProtocolError"]
