"""Admin rights: who may grant or revoke them, for whom, and who holds them (sans-IO).

The genesis node is an admin by definition; it and every admin it (or another admin) named may
grant admin rights to a live member, revoke them, and remove members (RFC-NOTES §7.14). The
rights live on the roster as signed admin acts that the view replays in time order, so this
core only refuses what would count nowhere (the signer is not an admin, the subject is the
genesis node or unknown) or change nothing (already an admin, not an admin).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._ids import mesh_id, short_id
from ._names import resolve
from ._records import ActKind, AdminAct
from ._roster import Roster
from ._view import Member

__all__ = [
    "AdminPlan",
    "AdminRefusal",
    "AdminRefused",
    "admins",
    "plan_admin_act",
    "sign_admin_act",
]


class AdminRefusal(Enum):
    UNKNOWN = "unknown"  # no live member is called that (or, to revoke, it is no admin)
    NOT_ALLOWED = "not-allowed"  # this node is no admin, or the subject is the genesis node
    UNCHANGED = "unchanged"  # the subject already is an admin (grant)


class AdminRefused(LocalProtocolError):
    """The act cannot be signed here; ``kind`` says why, the message says it to a user."""

    def __init__(self, message: str, *, kind: AdminRefusal) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, kw_only=True)
class AdminPlan:
    """The act a command would sign, for the operator's confirmation."""

    act: ActKind
    member: Member


def admins(roster: Roster) -> list[Member]:
    """The live members holding admin rights, genesis first, then by priority."""
    view = roster.view()
    return sorted(
        (m for m in view.members if view.is_admin(m.identity)),
        key=lambda m: (not m.record.admission.is_genesis, m.priority),
    )


def plan_admin_act(roster: Roster, signer: IdentityKey, name: str, act: ActKind) -> AdminPlan:
    """Resolve ``name`` and check that ``signer`` may grant (or revoke) its admin rights."""
    if act is ActKind.REMOVE:
        raise LocalProtocolError("removals are planned by ppn.mesh._removal")
    view = roster.view()
    found = resolve(view, name)
    member = view.by_node_id(found.node_id) if found is not None else None
    if member is None:
        raise AdminRefused(
            f"no member called {name!r} is on this node's signed roster", kind=AdminRefusal.UNKNOWN
        )
    if mesh_id(member.identity) == roster.mesh:
        raise AdminRefused(
            f"{member.name} is the genesis node, an admin by definition: its rights cannot be "
            "granted or revoked",
            kind=AdminRefusal.NOT_ALLOWED,
        )
    if not view.is_admin(signer.public):
        raise AdminRefused(
            f"this node ({short_id(signer.public)}) is no admin; only the genesis node or an "
            "admin may grant or revoke admin rights",
            kind=AdminRefusal.NOT_ALLOWED,
        )
    holds = view.is_admin(member.identity)
    if act is ActKind.GRANT_ADMIN and holds:
        raise AdminRefused(f"{member.name} already is an admin", kind=AdminRefusal.UNCHANGED)
    if act is ActKind.REVOKE_ADMIN and not holds:
        raise AdminRefused(f"{member.name} is no admin", kind=AdminRefusal.UNKNOWN)
    return AdminPlan(act=act, member=member)


def sign_admin_act(roster: Roster, signer: IdentityKey, plan: AdminPlan, *, now: int) -> AdminAct:
    """Sign the planned act and merge it into ``roster``."""
    return roster.act(signer, plan.act, plan.member.identity, now=now)
