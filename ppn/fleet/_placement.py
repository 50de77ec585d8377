"""Advisory VM placement: which live node should take a VM (RFC-NOTES §8.5).

Rules, in order:

1. A VM-Totebox must name its node: its WORM archive data does not move over the network.
2. A named node is used if it is live and has the RAM (reserved or not: the operator chose it).
3. Otherwise the candidates are live nodes whose available RAM is at least the requested RAM plus
   a 512 MB safety margin. Non-reserved nodes come first; reserved nodes only when no
   non-reserved node fits. Among them, KVM-capable nodes first when the request prefers KVM, then
   the most available RAM (ties broken by name, so the answer is deterministic).
4. Nothing fits: a refusal that says why.

The result is advice: the operator confirms it before anything is dispatched. There is no
migration, ever: a VM stays where it was created.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._vm import is_totebox

__all__ = [
    "MIGRATION_REFUSAL",
    "SAFETY_MARGIN_MB",
    "Candidate",
    "Placed",
    "PlacementRequest",
    "Refused",
    "place",
]

SAFETY_MARGIN_MB = 512
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


@dataclass(frozen=True, kw_only=True)
class PlacementRequest:
    vm_type: str
    ram_mb: int
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


def _fits(candidate: Candidate, ram_mb: int) -> bool:
    return candidate.ram_available_mb >= ram_mb + SAFETY_MARGIN_MB


def place(request: PlacementRequest, live: Sequence[Candidate]) -> Placed | Refused:
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
        if not _fits(named, request.ram_mb):
            return Refused(
                reason=f"node {named.name!r} has {named.ram_available_mb} MB available; "
                f"{request.ram_mb} MB plus the {SAFETY_MARGIN_MB} MB margin needs {need} MB"
            )
        return Placed(node=named.name, reason=f"node {named.name!r} was named and has the RAM")

    fitting = [c for c in live if _fits(c, request.ram_mb)]
    open_nodes = [c for c in fitting if not c.reserved]
    pool = open_nodes or [c for c in fitting if c.reserved]
    if not pool:
        if not live:
            return Refused(reason="no node is live in the fleet")
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
