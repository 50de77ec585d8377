"""From the join ceremony's result to the signed roster: sponsoring and bootstrapping (sans-IO).

The ceremony (``genesis/``) writes an *unsigned* preliminary roster to the state directory: the
sponsor's members as the joiner was told them, and, on the sponsor, each member it admitted.
The PAKE and the compared SAS authenticate that list to its holder, so it is good enough to
bring the tunnel up; the mesh then replaces it with signed records (RFC-NOTES §7.9):

* :func:`sponsor_admissions` — on the sponsor, every preliminary member the ceremony recorded as
  sponsored by this node and not yet on the signed roster gets an admission signed by this
  node, at the address the ceremony gave it. Members recorded without a sponsor (state written
  before the ceremony recorded sponsors) fall back to the *baseline* rule: admitted unless
  listed when the agent first ran on this node;
* :func:`with_bootstrap_peers` — until a preliminary member appears on the signed roster, it is
  configured as a WireGuard peer from the preliminary record (its /32, an endpoint chosen as
  for signed members, keepalive 25 s), so a joiner can reach its sponsor and pull the signed
  roster. While this node itself is not on the signed roster yet (its sponsor has not signed
  it: a pull can bring the others' records first), the signed roster configures no peers at
  all, so every preliminary member that is not removed stays a bootstrap peer — taking address,
  key and endpoints from its signed record when there is one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._addressing import MeshNetwork
from ._ids import node_address6
from ._records import InvalidRecord, MemberRecord, validate_name
from ._roster import Roster
from ._topology import KEEPALIVE, DesiredConfig, DesiredPeer, Observation, choose_endpoint

__all__ = ["PreliminaryMember", "sponsor_admissions", "with_bootstrap_peers"]


@dataclass(frozen=True, kw_only=True)
class PreliminaryMember:
    """A member record as the ceremony stores it: unsigned, authenticated only by the ceremony."""

    name: str
    identity: bytes
    wg_key: bytes
    address: str
    endpoints: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    sponsor: bytes | None = None  # identity of the member that admitted it, when recorded


def sponsor_admissions(
    roster: Roster,
    preliminary: Iterable[PreliminaryMember],
    *,
    baseline: Iterable[bytes],
    sponsor: IdentityKey,
    now: int,
) -> list[MemberRecord]:
    """Sign and merge admissions for members this node sponsored in a ceremony (see module doc).

    Does nothing unless this node is itself a live member. Members whose preliminary record is
    unusable (bad name, address or endpoint) are skipped; the rest are returned.
    """
    if roster.view().member(sponsor.public) is None:
        return []
    skip = set(baseline)
    admitted: list[MemberRecord] = []
    for member in preliminary:
        if member.identity == sponsor.public or member.identity in roster:
            continue
        if member.sponsor is not None:
            # Recorded by the ceremony: ours to sign whenever we get to it, even when it was
            # invited before this node's first 'ppn up' (and so sits in the baseline).
            if member.sponsor != sponsor.public:
                continue
        elif member.identity in skip:
            continue
        try:
            record = roster.admit(
                sponsor,
                name=member.name,
                identity=member.identity,
                wg_key=member.wg_key,
                now=now,
                endpoints=member.endpoints,
                roles=member.roles,
                address=member.address,
            )
        except (LocalProtocolError, InvalidRecord):
            continue
        admitted.append(record)
    return admitted


def _host_prefix(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    return f"{parsed}/{parsed.max_prefixlen}"


def with_bootstrap_peers(
    config: DesiredConfig | None,
    *,
    roster: Roster,
    preliminary: Sequence[PreliminaryMember],
    self_identity: bytes,
    fallback_address: str,
    fallback_control_address: str,
    observations: Mapping[bytes, Observation] | None = None,
    now: int = 0,
    local_networks: Sequence[MeshNetwork] = (),
) -> DesiredConfig:
    """``config`` (from the signed roster; None while this node is not on it) plus a peer for
    every preliminary member the signed roster does not know yet."""
    base = config or DesiredConfig(
        address=fallback_address,
        control_address=fallback_control_address,
        peers=(),
        forwarding=False,
    )
    peers = list(base.peers)
    keys = {p.wg_key for p in peers}
    claimed = {ip for p in peers for ip in p.allowed_ips}
    own = base.address.split("/", 1)[0]
    # Not on the signed roster (yet): the topology configured nobody, so bootstrap from every
    # preliminary member; once removed, from nobody.
    # A copy of this node's state from before an identity rotation is no member either.
    removed = roster.view().is_removed(self_identity) or (
        roster.view().successor_of(self_identity) is not None
    )
    outsider = config is None and not removed
    for member in preliminary if not removed else ():
        signed = roster.get(member.identity)
        if outsider and isinstance(signed, MemberRecord):
            member = PreliminaryMember(
                name=signed.name,
                identity=signed.identity,
                wg_key=signed.wg_key,
                address=signed.address,
                endpoints=signed.endpoints or member.endpoints,
            )
        elif signed is not None:
            continue  # the signed roster decides (or the member was removed)
        if member.identity == self_identity or member.wg_key in keys:
            continue
        try:
            validate_name(member.name)
            route = _host_prefix(member.address)
        except (InvalidRecord, ValueError):
            continue
        allowed: tuple[str, ...] = () if route in claimed or member.address == own else (route,)
        control = f"{node_address6(roster.mesh, member.identity)}/128"
        if control not in claimed:
            allowed += (control,)
        peers.append(
            DesiredPeer(
                wg_key=member.wg_key,
                endpoint=choose_endpoint(
                    member.endpoints, (observations or {}).get(member.wg_key), now, local_networks
                ),
                allowed_ips=allowed,
                persistent_keepalive=KEEPALIVE,
            )
        )
        keys.add(member.wg_key)
        claimed.update(allowed)
    peers.sort(key=lambda p: p.wg_key)
    return DesiredConfig(
        address=base.address,
        control_address=base.control_address,
        peers=tuple(peers),
        forwarding=base.forwarding,
    )
