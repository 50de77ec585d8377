"""Removing a member: which member a name means, and whether this node may sign it (sans-IO).

A tombstone (RFC-NOTES §7.2) may be signed by the member itself or by the genesis node; an
admin the genesis node (or another admin) delegated to removes with a signed admin act instead
(§7.14), which counts only while its signer is an admin. Any other signer's removal would count
nowhere, so this core refuses to make one instead of letting the mesh drop it. The genesis
node is removed only by a delegated admin (the mesh then still has one); without any, its
removal is refused, since nobody could remove a member again. Removal is final, so the caller
asks its operator first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._ids import mesh_id, short_id
from ._names import resolve
from ._records import ActKind, AdminAct, Tombstone
from ._roster import Roster
from ._view import Member

__all__ = ["RemovalPlan", "RemovalRefused", "RefusalKind", "plan_removal", "sign_removal"]


class RefusalKind(Enum):
    UNKNOWN = "unknown"  # no live member on the signed roster is called that
    NOT_ALLOWED = "not-allowed"  # this node may not sign the member's tombstone
    GENESIS = "genesis"  # the genesis node is removed only by a delegated admin


class RemovalRefused(LocalProtocolError):
    """The removal cannot be signed here; ``kind`` says why, the message says it to a user."""

    def __init__(self, message: str, *, kind: RefusalKind) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, kw_only=True)
class RemovalPlan:
    """The member a removal would remove, for the operator's confirmation."""

    member: Member
    self_removal: bool
    by_admin_act: bool  # signed as an admin act (§7.14), not as a tombstone


def plan_removal(roster: Roster, signer: IdentityKey, name: str) -> RemovalPlan:
    """Resolve ``name`` (NAME, NAME.ppn or a node id prefix) and check ``signer`` may remove it."""
    view = roster.view()
    found = resolve(view, name)
    member = view.by_node_id(found.node_id) if found is not None else None
    if member is None:
        raise RemovalRefused(
            f"no member called {name!r} is on this node's signed roster", kind=RefusalKind.UNKNOWN
        )
    if view.member(signer.public) is None:
        # A removed genesis node's key still signs valid tombstones (RFC-NOTES §7.12); this
        # command at least does not make one.
        raise RemovalRefused(
            f"this node ({short_id(signer.public)}) is not a live member of the mesh, so it "
            "removes no one",
            kind=RefusalKind.NOT_ALLOWED,
        )
    is_self = member.identity == signer.public
    is_genesis = mesh_id(signer.public) == roster.mesh
    delegated = view.is_admin(signer.public) and not is_genesis
    if member.record.admission.is_genesis and not delegated:
        raise RemovalRefused(
            f"{member.name} is the genesis node, which only a delegated admin may remove "
            "(grant one with 'ppn admin grant NAME' first)",
            kind=RefusalKind.GENESIS,
        )
    if not (is_self or is_genesis or delegated):
        raise RemovalRefused(
            f"only {member.name} itself, the genesis node or an admin may remove {member.name} "
            f"({short_id(member.identity)}); run 'ppn remove' there",
            kind=RefusalKind.NOT_ALLOWED,
        )
    return RemovalPlan(
        member=member, self_removal=is_self, by_admin_act=not (is_self or is_genesis)
    )


def sign_removal(
    roster: Roster, signer: IdentityKey, plan: RemovalPlan, *, now: int
) -> Tombstone | AdminAct:
    """Sign the removal of a planned member and merge it into ``roster``: a tombstone from the
    member itself or the genesis node, an admin act (§7.14) from a delegated admin."""
    if plan.by_admin_act:
        return roster.act(signer, ActKind.REMOVE, plan.member.identity, now=now)
    return roster.remove(signer, plan.member.identity, now=now)
