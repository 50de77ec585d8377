"""Genesis: the PPN join ceremony (CPace PAKE keyed by a short code, key confirmation, SAS).

``genesis.cpace`` is the low-level CPace implementation (public for interop tests and
benchmarks). The ceremony's sans-IO cores (:class:`Sponsor`, :class:`Joiner`), their events,
the join code, the window book and the state directory are re-exported here; the trio adapter
is ``genesis._trio`` (:func:`run_ceremony`, :func:`serve_windows`, :func:`join`), re-exported
lazily so importing ``genesis`` does not import trio. RFC-NOTES §5 is the specification.
"""

from __future__ import annotations

from ._bundle import JoinerBundle, MemberRecord, SponsorBundle, lowest_free_address
from ._code import CodeFormatError, JoinCode, make_code, parse_code
from ._derive import PartyInfo, mesh_id_for
from ._errors import GenesisError, LocalProtocolError, RemoteProtocolError
from ._events import (
    Abort,
    AcceptWindow,
    ConfirmSas,
    Failed,
    FailureReason,
    Grant,
    Joined,
    JoinRequested,
    SasReady,
)
from ._io_state import MeshState, NodeState, StateError, load_mesh, load_node, write_membership
from ._joiner import Joiner, JoinerState
from ._sponsor import Sponsor, SponsorState
from ._window import AttemptLimiter, RateLimited, WindowBook, WindowStatus

__all__ = [
    "Abort",
    "AcceptWindow",
    "AttemptLimiter",
    "CodeFormatError",
    "ConfirmSas",
    "Failed",
    "FailureReason",
    "GenesisError",
    "Grant",
    "JoinCode",
    "JoinRequested",
    "Joined",
    "Joiner",
    "JoinerBundle",
    "JoinerState",
    "LocalProtocolError",
    "MemberRecord",
    "MeshState",
    "NodeState",
    "PartyInfo",
    "RateLimited",
    "RemoteProtocolError",
    "SasReady",
    "Sponsor",
    "SponsorBundle",
    "SponsorState",
    "StateError",
    "WindowBook",
    "WindowStatus",
    "load_mesh",
    "load_node",
    "lowest_free_address",
    "make_code",
    "mesh_id_for",
    "parse_code",
    "write_membership",
]
