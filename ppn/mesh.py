"""The PPN mesh: signed roster, addressing, names, topology and the roster-sync protocol.

Typical use::

    from ppn import mesh

    roster = mesh.Roster.found(genesis_key, name="genesis", wg_key=wg.public, now=now)
    record = roster.admit(genesis_key, name="relay", identity=..., wg_key=..., now=now)
    other.ingest(values)                 # records from a peer: verified, merged, reported
    mesh.resolve(roster.view(), "relay") # name -> mesh address and endpoints
    topo = mesh.plan_topology(roster.view(), network=roster.network,
                              self_identity=me, observations={}, now=now)

Sans-IO cores: :class:`Roster` (a join-semilattice of signed records), :class:`RosterView`
(members, conflicts, problems), :func:`plan_topology` (direct peers vs. the relay hub),
:class:`ControlConnection` (PPN control on TCP 9206) and :class:`MeshAgent` (when to pull, push,
reconcile). :class:`MeshNode` is the trio adapter; ``ppn up`` runs it against the state
directory and a real WireGuard device (RFC-NOTES §7). :class:`AsyncioMeshNode` is the same agent
on asyncio, for daemons embedding the mesh (RFC-NOTES §12).
"""

from __future__ import annotations

from ._addressing import DEFAULT_CIDR, AddressSpaceExhausted, first_host, lowest_free, parse_cidr
from ._asyncio_mesh import AsyncioMeshNode, AsyncWireGuardPort
from ._control import (
    CONTROL_PORT,
    ConnectionClosed,
    ControlConnection,
    ControlProtocolError,
    ControlState,
    Pull,
    Push,
    PushAcknowledged,
    Role,
    RosterUpdated,
    SyncComplete,
)
from ._mesh_agent import MeshAgent, PullFrom, PushTo, Reconcile, SaveState
from ._mesh_bootstrap import PreliminaryMember, sponsor_admissions, with_bootstrap_peers
from ._mesh_ids import control_network, mesh_id, node_address6, node_id, short_id
from ._mesh_removal import RefusalKind, RemovalPlan, RemovalRefused, plan_removal, sign_removal
from ._names import Resolution, hosts_fragment, replace_hosts_block, resolve
from ._roster import MergeResult, Rejection, Roster
from ._roster_records import (
    Admission,
    InvalidRecord,
    MemberRecord,
    Record,
    Tombstone,
    decode_record,
    record_from_bytes,
    sign_admission,
    sign_member,
    sign_tombstone,
)
from ._roster_view import Member, Problem, ProblemKind, RosterView, compute_view
from ._topology import (
    HANDSHAKE_FRESH,
    KEEPALIVE,
    DesiredConfig,
    DesiredPeer,
    Observation,
    PathKind,
    PeerPath,
    Topology,
    choose_hub,
    plan_topology,
)
from ._trio_mesh import MeshNode, WireGuardPort, pull_once, push_once, serve_connection

__all__ = [
    "RemovalRefused",
    "RemovalPlan",
    "RefusalKind",
    "sign_removal",
    "plan_removal",
    "node_address6",
    "control_network",
    "CONTROL_PORT",
    "DEFAULT_CIDR",
    "HANDSHAKE_FRESH",
    "KEEPALIVE",
    "AddressSpaceExhausted",
    "Admission",
    "AsyncWireGuardPort",
    "AsyncioMeshNode",
    "ConnectionClosed",
    "ControlConnection",
    "ControlProtocolError",
    "ControlState",
    "DesiredConfig",
    "DesiredPeer",
    "InvalidRecord",
    "Member",
    "MemberRecord",
    "MergeResult",
    "MeshAgent",
    "MeshNode",
    "Observation",
    "PathKind",
    "PeerPath",
    "PreliminaryMember",
    "Problem",
    "ProblemKind",
    "Pull",
    "PullFrom",
    "Push",
    "PushAcknowledged",
    "PushTo",
    "Reconcile",
    "Record",
    "Rejection",
    "Resolution",
    "Role",
    "Roster",
    "RosterUpdated",
    "RosterView",
    "SaveState",
    "SyncComplete",
    "Tombstone",
    "Topology",
    "WireGuardPort",
    "choose_hub",
    "compute_view",
    "decode_record",
    "first_host",
    "hosts_fragment",
    "lowest_free",
    "mesh_id",
    "node_id",
    "parse_cidr",
    "plan_topology",
    "pull_once",
    "push_once",
    "record_from_bytes",
    "replace_hosts_block",
    "resolve",
    "serve_connection",
    "short_id",
    "sign_admission",
    "sign_member",
    "sign_tombstone",
    "sponsor_admissions",
    "with_bootstrap_peers",
]
