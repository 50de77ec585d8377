"""Genesis: the PPN join ceremony (CPace PAKE keyed by a short code, key confirmation, SAS).

``genesis.cpace`` is the low-level CPace implementation (public for interop tests and
benchmarks). The ceremony's sans-IO cores (:class:`Sponsor`, :class:`Joiner`), their events,
the join code, the window book and the state directory are re-exported here (loaded on first
use). The trio adapter is ``genesis._trio`` (:func:`run_ceremony`, :func:`serve_windows`,
:func:`join`, :func:`join_stream`); importing ``genesis`` does not import trio. For asyncio
daemons, :func:`join_asyncio` (``genesis._asyncio``) runs the joiner's side (RFC-NOTES §12).
RFC-NOTES §5 is the specification.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._errors import GenesisError, LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from ._asyncio import join_asyncio, serve_windows_asyncio
    from ._bundle import JoinerBundle, MemberRecord, SponsorBundle, lowest_free_address
    from ._code import CodeFormatError, JoinCode, make_code, parse_code
    from ._derive import PartyInfo, mesh_id_for
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
    from ._io_state import (
        MeshState,
        NodeState,
        StateError,
        discard_staged_key,
        load_mesh,
        load_node,
        promote_node_key,
        stage_node_key,
        staged_node_key,
        write_membership,
    )
    from ._joiner import Joiner, JoinerState
    from ._sponsor import Sponsor, SponsorState
    from ._trio import ServeOutcome, join, serve_windows
    from ._window import AttemptLimiter, RateLimited, WindowBook, WindowStatus

# Loaded on first use, so `ppn` commands of other families do not pay for the ceremony's
# imports (cryptography, the cores) at start-up.
_LAZY = {
    "join_asyncio": "_asyncio",
    "JoinerBundle": "_bundle",
    "MemberRecord": "_bundle",
    "SponsorBundle": "_bundle",
    "lowest_free_address": "_bundle",
    "CodeFormatError": "_code",
    "JoinCode": "_code",
    "make_code": "_code",
    "parse_code": "_code",
    "PartyInfo": "_derive",
    "mesh_id_for": "_derive",
    "Abort": "_events",
    "AcceptWindow": "_events",
    "ConfirmSas": "_events",
    "Failed": "_events",
    "FailureReason": "_events",
    "Grant": "_events",
    "Joined": "_events",
    "JoinRequested": "_events",
    "SasReady": "_events",
    "MeshState": "_io_state",
    "NodeState": "_io_state",
    "StateError": "_io_state",
    "load_mesh": "_io_state",
    "load_node": "_io_state",
    "discard_staged_key": "_io_state",
    "promote_node_key": "_io_state",
    "stage_node_key": "_io_state",
    "staged_node_key": "_io_state",
    "write_membership": "_io_state",
    "Joiner": "_joiner",
    "JoinerState": "_joiner",
    "Sponsor": "_sponsor",
    "SponsorState": "_sponsor",
    "AttemptLimiter": "_window",
    "RateLimited": "_window",
    "WindowBook": "_window",
    "WindowStatus": "_window",
    # The embedding API on trio (issue 20; RFC-NOTES §12); join_asyncio is its asyncio twin.
    "serve_windows_asyncio": "_asyncio",
    "join": "_trio",
    "serve_windows": "_trio",
    "ServeOutcome": "_trio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'genesis' has no attribute {name!r}")
    value = getattr(import_module(f"genesis.{module}"), name)
    globals()[name] = value
    return value


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
    "discard_staged_key",
    "join",
    "join_asyncio",
    "serve_windows",
    "serve_windows_asyncio",
    "ServeOutcome",
    "load_mesh",
    "load_node",
    "lowest_free_address",
    "make_code",
    "mesh_id_for",
    "parse_code",
    "promote_node_key",
    "stage_node_key",
    "staged_node_key",
    "write_membership",
]
