"""The signed mesh roster as the fleet's member directory (RFC-NOTES §8.1).

:class:`RosterDirectory` answers the :class:`~ppn.fleet._directory.MemberDirectory` lookups from
whatever roster view its source returns *now*, so a member admitted or removed on the mesh is
admitted to or dropped from the fleet without a restart. Only members whose mesh address is
routed to them (no lost address conflict) count. The fleet controller is the highest-priority
(earliest admitted) member holding a controller role, so a later member cannot claim the role
away from it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..mesh._view import Member as RosterMember
from ..mesh._view import RosterView
from ._directory import CONTROLLER_ROLES, Member

__all__ = ["RosterDirectory"]


def _as_member(m: RosterMember) -> Member:
    return Member(
        node_id=m.node_id.hex(),
        name=m.name,
        identity=m.identity,
        mesh_address=m.address,
        roles=frozenset(m.roles),
    )


class RosterDirectory:
    """A :class:`MemberDirectory` over a live roster: ``RosterDirectory(roster.view)``."""

    def __init__(self, view: Callable[[], RosterView]) -> None:
        self._view = view

    def _routed(self) -> list[RosterMember]:
        return [m for m in self._view().members if m.routed]

    def member_by_identity(self, identity: bytes) -> Member | None:
        found = next((m for m in self._routed() if m.identity == identity), None)
        return None if found is None else _as_member(found)

    def member_by_name(self, name: str) -> Member | None:
        found = next((m for m in self._routed() if m.named and m.name == name), None)
        return None if found is None else _as_member(found)

    def controller(self) -> Member | None:
        holders = [m for m in self._routed() if CONTROLLER_ROLES & set(m.roles)]
        if not holders:
            return None
        return _as_member(min(holders, key=lambda m: m.priority))

    def members(self) -> list[Member]:
        return [_as_member(m) for m in self._routed()]
