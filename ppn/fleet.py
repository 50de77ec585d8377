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

from ._fleet_directory import (
    DirectoryError,
    Member,
    MemberDirectory,
    StaticDirectory,
    derive_node_id,
)
from ._fleet_heartbeat import (
    Heartbeat,
    HeartbeatAuthError,
    ReplayGuard,
    SignedHeartbeat,
    decode_heartbeat,
    encode_heartbeat,
)
from ._fleet_placement import (
    MIGRATION_REFUSAL,
    SAFETY_MARGIN_MB,
    Candidate,
    Placed,
    PlacementRequest,
    Refused,
    place,
)
from ._fleet_roster import RosterDirectory
from ._fleet_spawn import (
    SpawnAnswer,
    SpawnAuthError,
    SpawnClient,
    SpawnDecision,
    SpawnRequested,
    SpawnServer,
)
from ._fleet_table import (
    DEFAULT_EVICTION_TIMEOUT,
    HeartbeatAccepted,
    NodeEvicted,
    NodeJoined,
    NodeRecord,
    NodeTable,
)
from ._fleet_vm import VmRecord, VmSpec, VmState, is_totebox
from ._trio_fleet_controller import FleetController, FleetControllerConfig
from ._trio_fleet_host import DEFAULT_HEARTBEAT_INTERVAL, VmHostConfig, VmHostService

__all__ = [
    "DEFAULT_EVICTION_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "MIGRATION_REFUSAL",
    "SAFETY_MARGIN_MB",
    "Candidate",
    "DirectoryError",
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
    "VmRecord",
    "VmSpec",
    "VmState",
    "decode_heartbeat",
    "derive_node_id",
    "encode_heartbeat",
    "is_totebox",
    "place",
]
