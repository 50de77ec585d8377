"""The fleet: heartbeats, eviction, advisory placement and operator-confirmed VM creation.

Two services (RFC-NOTES §8): every infrastructure node runs a vm-host (:class:`VmHostService`)
that heartbeats to the fleet controller every 10 s and launches VMs through its provisioner
command when the controller asks; the cloud node runs the controller (:class:`FleetController`)
that keeps the live node table, evicts a node 30 s after its last heartbeat by its own clock,
advises where a VM should go, and dispatches it once the operator confirmed.

Membership comes from a :class:`MemberDirectory`: :class:`RosterDirectory` over the signed mesh
roster (``RosterDirectory(roster.view)``), or :class:`StaticDirectory` from a JSON document. The sans-IO cores (:class:`NodeTable`,
:func:`place`, the heartbeat and spawn codecs) are public so other event loops can drive them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asyncio import AsyncioFleetController, AsyncioVmHostService
    from ._directory import (
        DirectoryError,
        Member,
        MemberDirectory,
        StaticDirectory,
        derive_node_id,
    )
    from ._heartbeat import (
        Heartbeat,
        HeartbeatAuthError,
        ReplayGuard,
        SignedHeartbeat,
        decode_heartbeat,
        encode_heartbeat,
    )
    from ._placement import (
        DEFAULT_VCPU_OVERCOMMIT,
        MIGRATION_REFUSAL,
        SAFETY_MARGIN_MB,
        Candidate,
        Placed,
        PlacementRequest,
        Refused,
        place,
    )
    from ._roster import RosterDirectory
    from ._spawn import (
        SpawnAnswer,
        SpawnAuthError,
        SpawnClient,
        SpawnDecision,
        SpawnRequested,
        SpawnServer,
        VmActionRequested,
    )
    from ._table import (
        DEFAULT_EVICTION_TIMEOUT,
        HeartbeatAccepted,
        NodeEvicted,
        NodeJoined,
        NodeRecord,
        NodeTable,
    )
    from ._trio_controller import FleetController, FleetControllerConfig
    from ._trio_host import DEFAULT_HEARTBEAT_INTERVAL, VmHostConfig, VmHostService
    from ._vm import VmAction, VmRecord, VmSpec, VmState, is_totebox

# Loaded on first use: importing the facade (or any module of the package) loads no
# adapter, event loop, sqlite3 or pyroute2 until a name that needs it is asked for.
_LAZY: dict[str, str] = {
    "DirectoryError": "_directory",
    "Member": "_directory",
    "MemberDirectory": "_directory",
    "StaticDirectory": "_directory",
    "derive_node_id": "_directory",
    "Heartbeat": "_heartbeat",
    "HeartbeatAuthError": "_heartbeat",
    "ReplayGuard": "_heartbeat",
    "SignedHeartbeat": "_heartbeat",
    "decode_heartbeat": "_heartbeat",
    "encode_heartbeat": "_heartbeat",
    "DEFAULT_VCPU_OVERCOMMIT": "_placement",
    "MIGRATION_REFUSAL": "_placement",
    "SAFETY_MARGIN_MB": "_placement",
    "Candidate": "_placement",
    "Placed": "_placement",
    "PlacementRequest": "_placement",
    "Refused": "_placement",
    "place": "_placement",
    "RosterDirectory": "_roster",
    "SpawnAnswer": "_spawn",
    "SpawnAuthError": "_spawn",
    "SpawnClient": "_spawn",
    "SpawnDecision": "_spawn",
    "SpawnRequested": "_spawn",
    "SpawnServer": "_spawn",
    "VmActionRequested": "_spawn",
    "DEFAULT_EVICTION_TIMEOUT": "_table",
    "HeartbeatAccepted": "_table",
    "NodeEvicted": "_table",
    "NodeJoined": "_table",
    "NodeRecord": "_table",
    "NodeTable": "_table",
    "FleetController": "_trio_controller",
    # The embedding API on asyncio (issue 20; RFC-NOTES §12).
    "AsyncioFleetController": "_asyncio",
    "AsyncioVmHostService": "_asyncio",
    "FleetControllerConfig": "_trio_controller",
    "DEFAULT_HEARTBEAT_INTERVAL": "_trio_host",
    "VmHostConfig": "_trio_host",
    "VmHostService": "_trio_host",
    "VmAction": "_vm",
    "VmRecord": "_vm",
    "VmSpec": "_vm",
    "VmState": "_vm",
    "is_totebox": "_vm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppn.fleet' has no attribute {name!r}")
    value = getattr(import_module(f"ppn.fleet.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_EVICTION_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_VCPU_OVERCOMMIT",
    "MIGRATION_REFUSAL",
    "SAFETY_MARGIN_MB",
    "Candidate",
    "DirectoryError",
    "AsyncioFleetController",
    "AsyncioVmHostService",
    "FleetController",
    "FleetControllerConfig",
    "Heartbeat",
    "HeartbeatAccepted",
    "HeartbeatAuthError",
    "Member",
    "MemberDirectory",
    "NodeEvicted",
    "NodeJoined",
    "NodeRecord",
    "NodeTable",
    "Placed",
    "PlacementRequest",
    "Refused",
    "ReplayGuard",
    "RosterDirectory",
    "SignedHeartbeat",
    "SpawnAnswer",
    "SpawnAuthError",
    "SpawnClient",
    "SpawnDecision",
    "SpawnRequested",
    "SpawnServer",
    "StaticDirectory",
    "VmHostConfig",
    "VmHostService",
    "VmAction",
    "VmActionRequested",
    "VmRecord",
    "VmSpec",
    "VmState",
    "decode_heartbeat",
    "derive_node_id",
    "encode_heartbeat",
    "is_totebox",
    "place",
]
