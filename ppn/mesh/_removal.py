"""Removing a member: which member a name means, and whether this node may sign it (sans-IO).

A tombstone (RFC-NOTES §7.2) may be signed by the member itself or by the genesis node; any
other signer's tombstone is invalid everywhere, so this core refuses to make one instead of
letting the mesh drop it. The genesis node's own removal is refused too: without it nobody
could remove a member again. Removal is final, so the caller asks its operator first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._ids import mesh_id, short_id
from ._names import resolve
from ._records import Tombstone
from ._roster import Roster
from ._view import Member

__all__ = ["RemovalPlan", "RemovalRefused", "RefusalKind", "plan_removal", "sign_removal"]


class RefusalKind(Enum):
    UNKNOWN = "unknown"  # no live member on the signed roster is called that
    NOT_ALLOWED = "not-allowed"  # this node may not sign the member's tombstone
    GENESIS = "genesis"  # the genesis node is never removed


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


def plan_removal(roster: Roster, signer: IdentityKey, name: str) -> RemovalPlan:
    """Resolve ``name`` (NAME, NAME.ppn or a node id prefix) and check ``signer`` may remove it."""
    found = resolve(roster.view(), name)
    member = roster.view().by_node_id(found.node_id) if found is not None else None
    if member is None:
        raise RemovalRefused(
            f"no member called {name!r} is on this node's signed roster", kind=RefusalKind.UNKNOWN
        )
    if member.record.admission.is_genesis:
        raise RemovalRefused(
            f"{member.name} is the genesis node, which is never removed (no one could remove "
            "a member afterwards)",
            kind=RefusalKind.GENESIS,
        )
    is_self = member.identity == signer.public
    if not is_self and mesh_id(signer.public) != roster.mesh:
        raise RemovalRefused(
            f"only {member.name} itself or the genesis node may remove {member.name} "
            f"({short_id(member.identity)}); run 'ppn remove' there",
            kind=RefusalKind.NOT_ALLOWED,
        )
    return RemovalPlan(member=member, self_removal=is_self)


def sign_removal(roster: Roster, signer: IdentityKey, plan: RemovalPlan, *, now: int) -> Tombstone:
    """Sign the tombstone for a planned removal and merge it into ``roster``."""
    return roster.remove(signer, plan.member.identity, now=now)
