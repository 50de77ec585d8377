"""Topology: which member peers directly with which, and what goes through the relay hub.

Input: a roster view, this node's identity, what the WireGuard device reports (latest handshake
and current endpoint per peer) and ``now`` (Unix seconds, the clock WireGuard reports handshakes
in). Output: the desired peers of this node's WireGuard interface, as data, plus a per-member
path for ``ppn status``. Pure: the same inputs always give the same plan (RFC-NOTES §7.8).

Rules:

* The *hub* is the live, routed member with role ``relay`` that was admitted first
  (``(admitted_at, node_id)``). Without a hub the mesh is a plain full mesh.
* On the hub: every member is a direct peer with its own address as allowed IP, and the hub
  forwards between them (IP forwarding on).
* Elsewhere: the hub's peer carries the whole mesh CIDR (plus its own address); longest-prefix
  match in WireGuard's routing sends everything without a more specific route through the hub.
  Every other member is a peer too (with an endpoint, so a direct handshake can happen); it gets
  its own address as allowed IP — a direct route — only while a handshake with it is fresh
  (at most 180 s old). Otherwise it is reached *via the hub*. Reachability is therefore
  configuration (endpoints) plus observation (handshake age), never a guess.
* Persistent keepalive 25 s toward the hub, toward members without endpoints (NATed), from a
  node that has no endpoint itself, and toward members being probed for a direct path.
* Every member also has an IPv6 *control address* derived from its node id (never contested):
  it follows the same rules (own /128 on a direct peer, the control /64 on the hub's peer), and
  stays routed for a member whose IPv4 address lost a conflict, so that member can still pull
  the roster that tells it to re-address.
* Two members neither of which lists an endpoint cannot peer directly: no peer entry; via hub.
* A member whose address lost a conflict is never routed; a member that lost its WireGuard key
  to another is not configured at all.
* The endpoint given for a peer is the one it is using while its handshake is fresh (WireGuard
  roaming); otherwise its listed endpoints on a network this node is attached to (``local
  networks``, from the I/O side) or, if none is, all its listed endpoints are tried in turn,
  each for 10 s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from ._addressing import MeshNetwork
from ._ids import control_network, node_address6
from ._view import Member, RosterView

__all__ = [
    "ENDPOINT_ROTATION",
    "HANDSHAKE_FRESH",
    "KEEPALIVE",
    "DesiredConfig",
    "DesiredPeer",
    "Observation",
    "PathKind",
    "PeerPath",
    "Topology",
    "choose_endpoint",
    "choose_hub",
    "plan_topology",
]

HANDSHAKE_FRESH = 180  # seconds: WireGuard's REJECT_AFTER_TIME; older means the path is down
KEEPALIVE = 25
ENDPOINT_ROTATION = 10  # seconds per listed endpoint while no handshake is fresh


class PathKind(Enum):
    SELF = "self"
    DIRECT = "direct"
    VIA_HUB = "via-hub"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What the WireGuard device reports about one peer (by WireGuard public key)."""

    wg_key: bytes
    endpoint: str | None = None
    last_handshake: int | None = None  # Unix seconds; None = never

    def handshake_age(self, now: int) -> int | None:
        if self.last_handshake is None or self.last_handshake <= 0:
            return None
        return max(0, now - self.last_handshake)

    def fresh(self, now: int) -> bool:
        age = self.handshake_age(now)
        return age is not None and age <= HANDSHAKE_FRESH


@dataclass(frozen=True, kw_only=True)
class DesiredPeer:
    """One WireGuard peer as this node wants it. ``endpoint`` None leaves the device's own."""

    wg_key: bytes
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    persistent_keepalive: int


@dataclass(frozen=True, kw_only=True)
class DesiredConfig:
    """This node's interface as the roster wants it (keys and ports come from the state)."""

    address: str  # this node's mesh address with the CIDR's prefix length, e.g. 10.8.0.1/24
    control_address: str  # this node's IPv6 control address with /64 (RFC-NOTES §7.1)
    peers: tuple[DesiredPeer, ...]  # ordered by WireGuard key
    forwarding: bool  # True on the hub: it routes between members


@dataclass(frozen=True, kw_only=True)
class PeerPath:
    """How this node reaches one member, for ``ppn status``."""

    member: Member
    kind: PathKind
    reachable: bool  # the next hop (the member, or the hub) has a fresh handshake
    handshake_age: int | None  # of the direct WireGuard session with the member, if any
    endpoint: str | None  # where the device currently sends to this member


@dataclass(frozen=True, kw_only=True)
class Topology:
    config: DesiredConfig | None  # None when this node is not a routed live member
    paths: tuple[PeerPath, ...]
    hub: Member | None


def choose_hub(view: RosterView) -> Member | None:
    relays = view.relays()
    return min(relays, key=lambda m: m.priority) if relays else None


def _host_prefix(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    return f"{parsed}/{parsed.max_prefixlen}"


def _endpoint_network_match(endpoint: str, local_networks: Sequence[MeshNetwork]) -> bool:
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(parsed.version == net.version and parsed in net for net in local_networks)


def choose_endpoint(
    endpoints: Sequence[str],
    observation: Observation | None,
    now: int,
    local_networks: Sequence[MeshNetwork] = (),
) -> str | None:
    """The endpoint to configure for a peer (RFC-NOTES §7.8): the one in use while the
    handshake is fresh; else, among the listed endpoints on a network this node is directly
    attached to (if any) or else all of them, each in turn for ``ENDPOINT_ROTATION`` seconds."""
    if observation is not None and observation.endpoint and observation.fresh(now):
        return observation.endpoint
    if not endpoints:
        return None
    candidates = [e for e in endpoints if _endpoint_network_match(e, local_networks)]
    candidates = candidates or list(endpoints)
    return candidates[(now // ENDPOINT_ROTATION) % len(candidates)]


def plan_topology(
    view: RosterView,
    *,
    network: MeshNetwork,
    self_identity: bytes,
    observations: Mapping[bytes, Observation],
    now: int,
    local_networks: Sequence[MeshNetwork] = (),
) -> Topology:
    """The desired WireGuard peers of this node and the path to every member (see module doc).

    Each other member falls under one of three rules: :func:`_full_mesh` (this node is the hub,
    or there is none), :func:`_to_hub` (the member is the hub) or :func:`_via_hub` (both are
    spokes)."""
    me = view.member(self_identity)
    hub = choose_hub(view)
    if me is None:
        return _not_a_member(view, self_identity, hub)
    hub_obs = observations.get(hub.wg_key) if hub is not None else None
    here = _Here(
        me=me,
        hub=hub,
        i_am_hub=hub is not None and hub.identity == me.identity,
        hub_fresh=hub_obs is not None and hub_obs.fresh(now),
        i_am_natted=not me.endpoints,
        network=network,
        control_net=control_network(me.record.mesh),
        predecessors=_predecessors(view),
    )
    peers: list[DesiredPeer] = []
    paths: list[PeerPath] = []
    for member in view.members:
        if member.identity == me.identity:
            paths.append(_path(member, PathKind.SELF, True, None, None))
            continue
        seen = _see(member, here, observations.get(member.wg_key), now, local_networks)
        if here.i_am_hub or hub is None:
            peer, path = _full_mesh(seen, here)
        elif member.identity == hub.identity:
            peer, path = _to_hub(seen, here)
        else:
            peer, path = _via_hub(seen, here)
        if peer is not None:
            peers.append(peer)
        paths.append(path)
    peers.sort(key=lambda p: p.wg_key)
    config = DesiredConfig(
        address=f"{me.address}/{network.prefixlen}",
        control_address=f"{node_address6(me.record.mesh, me.identity)}/64",
        peers=tuple(peers),
        forwarding=here.i_am_hub,
    )
    return Topology(config=config, paths=tuple(paths), hub=hub)


def _not_a_member(view: RosterView, self_identity: bytes, hub: Member | None) -> Topology:
    """A node that is not a routed live member configures nothing and reaches no one."""
    unreachable = tuple(
        _path(m, PathKind.UNREACHABLE, False, None, None)
        for m in view.members
        if m.identity != self_identity
    )
    return Topology(config=None, paths=unreachable, hub=hub)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Here:
    """This node's side of the plan: who it is, the hub, and what both share for every member."""

    me: Member
    hub: Member | None
    i_am_hub: bool
    hub_fresh: bool  # this node's handshake with the hub is fresh
    i_am_natted: bool  # this node lists no endpoint
    network: MeshNetwork
    control_net: str
    # successor -> the identities it rotated from (RFC-NOTES §7.15), oldest last
    predecessors: Mapping[bytes, tuple[bytes, ...]]


def _predecessors(view: RosterView) -> dict[bytes, tuple[bytes, ...]]:
    """For each identity that is some rotation's successor, every identity it descends from.
    A rotated member keeps its predecessors' control addresses routed: a node that crashed
    between handing its rotation over and taking its new identity still reaches its peers
    from the old control address (RFC-NOTES §7.15)."""
    parent = {new: old for old, new in view.rotated}
    out: dict[bytes, tuple[bytes, ...]] = {}
    for new in parent:
        chain: list[bytes] = []
        current = new
        while current in parent and len(chain) < len(parent):
            current = parent[current]
            chain.append(current)
        out[new] = tuple(chain)
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class _Seen:
    """One other member as this node sees it now, and the routes it would get."""

    member: Member
    fresh: bool
    age: int | None
    endpoint: str | None  # to configure (:func:`choose_endpoint`)
    in_use: str | None  # the endpoint the device reports, for the path
    natted: bool  # the member lists no endpoint
    own_route: tuple[str, ...]  # its address, if routed
    control_route: tuple[str, ...]


def _see(
    member: Member,
    here: _Here,
    obs: Observation | None,
    now: int,
    local_networks: Sequence[MeshNetwork],
) -> _Seen:
    return _Seen(
        member=member,
        fresh=obs is not None and obs.fresh(now),
        age=obs.handshake_age(now) if obs is not None else None,
        endpoint=choose_endpoint(member.endpoints, obs, now, local_networks),
        in_use=obs.endpoint if obs else None,
        natted=not member.endpoints,
        own_route=(_host_prefix(member.address),) if member.routed else (),
        # The control address never conflicts, so it is routed even when the IPv4 one is not.
        control_route=tuple(
            f"{node_address6(here.me.record.mesh, identity)}/128"
            for identity in (member.identity, *here.predecessors.get(member.identity, ()))
        ),
    )


def _peer(seen: _Seen, allowed_ips: tuple[str, ...], keepalive: int) -> DesiredPeer:
    return DesiredPeer(
        wg_key=seen.member.wg_key,
        endpoint=seen.endpoint,
        allowed_ips=allowed_ips,
        persistent_keepalive=keepalive,
    )


def _full_mesh(seen: _Seen, here: _Here) -> tuple[DesiredPeer | None, PeerPath]:
    """On the hub, or without one: every member a direct peer with its own routes."""
    member = seen.member
    if seen.natted and here.i_am_natted:
        return None, _path(member, PathKind.UNREACHABLE, False, seen.age, None)
    keepalive = KEEPALIVE if (seen.natted or here.i_am_natted) else 0
    peer = _peer(seen, seen.own_route + seen.control_route, keepalive)
    kind = PathKind.DIRECT if member.routed else PathKind.UNREACHABLE
    return peer, _path(member, kind, seen.fresh and member.routed, seen.age, seen.in_use)


def _to_hub(seen: _Seen, here: _Here) -> tuple[DesiredPeer | None, PeerPath]:
    """The hub's peer carries the whole mesh (IPv4 CIDR and control /64) besides its own."""
    routes = (*seen.own_route, str(here.network)) if seen.member.routed else ()
    routes += (*seen.control_route, here.control_net)
    peer = _peer(seen, routes, KEEPALIVE)
    return peer, _path(seen.member, PathKind.DIRECT, seen.fresh, seen.age, seen.in_use)


def _via_hub(seen: _Seen, here: _Here) -> tuple[DesiredPeer | None, PeerPath]:
    """A spoke seen from a spoke: probed for a direct path, routed direct once it works."""
    member = seen.member
    both_natted = seen.natted and here.i_am_natted
    if not member.routed:
        peer = (
            None
            if both_natted
            else _peer(seen, seen.control_route if seen.fresh else (), KEEPALIVE)
        )
        return peer, _path(member, PathKind.UNREACHABLE, False, seen.age, None)
    if both_natted:
        return None, _path(member, PathKind.VIA_HUB, here.hub_fresh, None, None)
    # Probe the direct path (keepalive makes WireGuard handshake); route it once it works.
    peer = _peer(seen, seen.own_route + seen.control_route if seen.fresh else (), KEEPALIVE)
    if seen.fresh:
        return peer, _path(member, PathKind.DIRECT, True, seen.age, seen.in_use)
    return peer, _path(member, PathKind.VIA_HUB, here.hub_fresh, seen.age, None)


def _path(
    member: Member, kind: PathKind, reachable: bool, age: int | None, endpoint: str | None
) -> PeerPath:
    return PeerPath(
        member=member, kind=kind, reachable=reachable, handshake_age=age, endpoint=endpoint
    )
