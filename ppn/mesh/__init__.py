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

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._addressing import (
        DEFAULT_CIDR,
        AddressSpaceExhausted,
        first_host,
        lowest_free,
        parse_cidr,
    )

    # Admin delegation (RFC-NOTES §7.14).
    from ._admin import (
        AdminPlan,
        AdminRefusal,
        AdminRefused,
        admins,
        plan_admin_act,
        sign_admin_act,
    )
    from ._agent import MeshAgent, PullFrom, PushTo, Reconcile, SaveState
    from ._asyncio import AsyncioMeshNode, AsyncWireGuardPort
    from ._bootstrap import PreliminaryMember, sponsor_admissions, with_bootstrap_peers
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
    from ._ids import control_network, mesh_id, node_address6, node_id, short_id
    from ._names import Resolution, hosts_fragment, replace_hosts_block, resolve
    from ._records import (
        ActKind,
        AdminAct,
        Admission,
        InvalidRecord,
        MemberRecord,
        Record,
        Tombstone,
        decode_record,
        record_from_bytes,
        sign_act,
        sign_admission,
        sign_member,
        sign_tombstone,
    )
    from ._removal import RefusalKind, RemovalPlan, RemovalRefused, plan_removal, sign_removal
    from ._roster import MergeResult, Rejection, Roster
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
    from ._trio import MeshNode, WireGuardPort, pull_once, push_once, serve_connection
    from ._view import Member, Problem, ProblemKind, Removed, RosterView, compute_view

# Loaded on first use: importing the facade (or any module of the package) loads no
# adapter, event loop, sqlite3 or pyroute2 until a name that needs it is asked for.
_LAZY: dict[str, str] = {
    "DEFAULT_CIDR": "_addressing",
    "AddressSpaceExhausted": "_addressing",
    "first_host": "_addressing",
    "lowest_free": "_addressing",
    "parse_cidr": "_addressing",
    "MeshAgent": "_agent",
    "PullFrom": "_agent",
    "PushTo": "_agent",
    "Reconcile": "_agent",
    "SaveState": "_agent",
    "AsyncioMeshNode": "_asyncio",
    "AsyncWireGuardPort": "_asyncio",
    "PreliminaryMember": "_bootstrap",
    "sponsor_admissions": "_bootstrap",
    "with_bootstrap_peers": "_bootstrap",
    "CONTROL_PORT": "_control",
    "ConnectionClosed": "_control",
    "ControlConnection": "_control",
    "ControlProtocolError": "_control",
    "ControlState": "_control",
    "Pull": "_control",
    "Push": "_control",
    "PushAcknowledged": "_control",
    "Role": "_control",
    "RosterUpdated": "_control",
    "SyncComplete": "_control",
    "control_network": "_ids",
    "mesh_id": "_ids",
    "node_address6": "_ids",
    "node_id": "_ids",
    "short_id": "_ids",
    "Resolution": "_names",
    "hosts_fragment": "_names",
    "replace_hosts_block": "_names",
    "resolve": "_names",
    "Admission": "_records",
    "InvalidRecord": "_records",
    "MemberRecord": "_records",
    "Record": "_records",
    "Tombstone": "_records",
    "decode_record": "_records",
    "record_from_bytes": "_records",
    "sign_admission": "_records",
    "sign_member": "_records",
    "sign_tombstone": "_records",
    "RefusalKind": "_removal",
    "RemovalPlan": "_removal",
    "RemovalRefused": "_removal",
    "plan_removal": "_removal",
    "sign_removal": "_removal",
    # Admin delegation (RFC-NOTES §7.14).
    "AdminPlan": "_admin",
    "AdminRefusal": "_admin",
    "AdminRefused": "_admin",
    "admins": "_admin",
    "plan_admin_act": "_admin",
    "sign_admin_act": "_admin",
    "ActKind": "_records",
    "AdminAct": "_records",
    "sign_act": "_records",
    "Removed": "_view",
    "MergeResult": "_roster",
    "Rejection": "_roster",
    "Roster": "_roster",
    "HANDSHAKE_FRESH": "_topology",
    "KEEPALIVE": "_topology",
    "DesiredConfig": "_topology",
    "DesiredPeer": "_topology",
    "Observation": "_topology",
    "PathKind": "_topology",
    "PeerPath": "_topology",
    "Topology": "_topology",
    "choose_hub": "_topology",
    "plan_topology": "_topology",
    "MeshNode": "_trio",
    "WireGuardPort": "_trio",
    "pull_once": "_trio",
    "push_once": "_trio",
    "serve_connection": "_trio",
    "Member": "_view",
    "Problem": "_view",
    "ProblemKind": "_view",
    "RosterView": "_view",
    "compute_view": "_view",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppn.mesh' has no attribute {name!r}")
    value = getattr(import_module(f"ppn.mesh.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    # Admin delegation (RFC-NOTES §7.14).
    "ActKind",
    "AdminAct",
    "AdminPlan",
    "AdminRefusal",
    "AdminRefused",
    "Removed",
    "admins",
    "plan_admin_act",
    "sign_act",
    "sign_admin_act",
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
