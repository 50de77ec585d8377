"""Advisory VM placement: which live node should take a VM (RFC-NOTES §8.5).

Rules, in order:

1. A VM-Totebox must name its node: its WORM archive data does not move over the network.
2. A named node is used if it is live and has the room (reserved or not: the operator chose it).
3. Otherwise the candidates are live nodes with room: available RAM at least the requested RAM
   plus a 512 MB safety margin, and vCPUs committed plus requested at most the node's CPU cores
   times the vCPU overcommit ratio (4 by default). Non-reserved nodes come first; reserved nodes
   only when no non-reserved node fits. Among them, KVM-capable nodes first when the request
   prefers KVM, then the most available RAM (ties broken by name, so the answer is deterministic).
4. Nothing fits: a refusal that says why.

Available RAM and committed vCPUs include VMs dispatched to a node that its heartbeats do not
list yet (the controller's node table counts them), so two quick creates cannot overcommit it.

The result is advice: the operator confirms it before anything is dispatched. There is no
migration, ever: a VM stays where it was created.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._vm import is_totebox

__all__ = [
    "DEFAULT_VCPU_OVERCOMMIT",
    "MIGRATION_REFUSAL",
    "SAFETY_MARGIN_MB",
    "Candidate",
    "Placed",
    "PlacementRequest",
    "Refused",
    "place",
]

SAFETY_MARGIN_MB = 512
# vCPUs a node may carry per CPU core: VMs rarely keep every vCPU busy, so some overcommit is
# normal; 4 is a conservative default (OpenStack's default for new deployments, too).
DEFAULT_VCPU_OVERCOMMIT = 4.0
MIGRATION_REFUSAL = (
    "live migration is excluded by design: a VM stays on the node it was created on "
    "(create a new VM on the other node instead)"
)


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A live node as placement sees it."""

    name: str
    ram_available_mb: int
    kvm: bool
    reserved: bool
    cpu_cores: int | None = None  # None: the node's vCPUs are not limited
    vcpus_committed: int = 0  # vCPUs of its VMs (all but failed ones), dispatched ones included

    def vcpu_capacity(self, overcommit: float) -> int | None:
        if self.cpu_cores is None:
            return None
        return math.floor(self.cpu_cores * overcommit + 1e-9)


@dataclass(frozen=True, kw_only=True)
class PlacementRequest:
    vm_type: str
    ram_mb: int
    vcpus: int = 1
    node: str | None = None  # the operator's explicit choice
    prefer_kvm: bool = False


@dataclass(frozen=True, kw_only=True)
class Placed:
    """Advice: put the VM on ``node``. ``reason`` is one sentence for the operator."""

    node: str
    reason: str
    reserved_fallback: bool = False


@dataclass(frozen=True, kw_only=True)
class Refused:
    reason: str


def _ram_fits(candidate: Candidate, ram_mb: int) -> bool:
    return candidate.ram_available_mb >= ram_mb + SAFETY_MARGIN_MB


def _vcpus_fit(candidate: Candidate, vcpus: int, overcommit: float) -> bool:
    capacity = candidate.vcpu_capacity(overcommit)
    return capacity is None or candidate.vcpus_committed + vcpus <= capacity


def _vcpu_shortage(candidate: Candidate, vcpus: int, overcommit: float) -> str:
    return (
        f"node {candidate.name!r} has {candidate.vcpus_committed} of "
        f"{candidate.vcpu_capacity(overcommit)} vCPUs committed ({candidate.cpu_cores} cores "
        f"x overcommit {overcommit:g}); {vcpus} more do not fit"
    )


def place(
    request: PlacementRequest,
    live: Sequence[Candidate],
    *,
    vcpu_overcommit: float = DEFAULT_VCPU_OVERCOMMIT,
) -> Placed | Refused:
    """Decide where a VM should go among the ``live`` nodes."""
    need = request.ram_mb + SAFETY_MARGIN_MB
    if request.node is None and is_totebox(request.vm_type):
        return Refused(
            reason="a VM-Totebox must name its node (--node): its WORM archive data "
            "does not move over the network"
        )
    if request.node is not None:
        named = next((c for c in live if c.name == request.node), None)
        if named is None:
            return Refused(reason=f"node {request.node!r} is not live in the fleet")
        if not _ram_fits(named, request.ram_mb):
            return Refused(
                reason=f"node {named.name!r} has {named.ram_available_mb} MB available; "
                f"{request.ram_mb} MB plus the {SAFETY_MARGIN_MB} MB margin needs {need} MB"
            )
        if not _vcpus_fit(named, request.vcpus, vcpu_overcommit):
            return Refused(reason=_vcpu_shortage(named, request.vcpus, vcpu_overcommit))
        return Placed(node=named.name, reason=f"node {named.name!r} was named and has the room")

    ram_fitting = [c for c in live if _ram_fits(c, request.ram_mb)]
    fitting = [c for c in ram_fitting if _vcpus_fit(c, request.vcpus, vcpu_overcommit)]
    open_nodes = [c for c in fitting if not c.reserved]
    pool = open_nodes or [c for c in fitting if c.reserved]
    if not pool:
        if not live:
            return Refused(reason="no node is live in the fleet")
        if ram_fitting:
            best = min(ram_fitting, key=lambda c: (c.vcpus_committed, c.name))
            return Refused(
                reason="no live node with the RAM has room for the vCPUs: "
                + _vcpu_shortage(best, request.vcpus, vcpu_overcommit)
            )
        best = max(live, key=lambda c: c.ram_available_mb)
        return Refused(
            reason=f"no live node has {need} MB available ({request.ram_mb} MB plus the "
            f"{SAFETY_MARGIN_MB} MB margin); the most is {best.ram_available_mb} MB on "
            f"{best.name!r}"
        )
    prefer_kvm = request.prefer_kvm
    chosen = min(pool, key=lambda c: (prefer_kvm and not c.kvm, -c.ram_available_mb, c.name))
    parts = [f"most available RAM ({chosen.ram_available_mb} MB)"]
    if prefer_kvm:
        parts.insert(0, "KVM available" if chosen.kvm else "no KVM node fits")
    fallback = not open_nodes
    if fallback:
        parts.append("reserved node used because no other node fits")
    return Placed(node=chosen.name, reason="; ".join(parts), reserved_fallback=fallback)
