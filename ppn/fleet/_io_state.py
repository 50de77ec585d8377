"""Fleet membership from a mesh node's state directory (``ppn up --state DIR``).

The identity key is the node's own (``identity.key``, written by the join ceremony); the member
directory is the live signed roster in ``roster.bin``, which the node agent rewrites atomically
whenever the roster changes. :class:`StateDirRoster` re-reads it when the file changes, so the
fleet follows admissions and removals without a restart (RFC-NOTES §8.1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .._keys import IdentityKey
from ..mesh._io_state import StateDirError, load_mesh_files, load_roster
from ..mesh._roster import Roster
from ..mesh._view import RosterView
from ._roster import RosterDirectory

__all__ = ["FleetMembership", "StateDirError", "StateDirRoster", "load_fleet_membership"]

log = logging.getLogger("ppn.fleet.state")


class StateDirRoster:
    """The roster view of a state directory, reloaded when ``roster.bin`` changes."""

    def __init__(self, directory: Path, *, mesh: bytes, cidr: str) -> None:
        self.directory = directory
        self.mesh = mesh
        self.cidr = cidr
        self._stamp: tuple[int, int, int] | None = None
        self._view: RosterView = Roster(mesh=mesh, network=cidr).view()
        self.view()  # fail early if the saved roster is unreadable

    def view(self) -> RosterView:
        path = self.directory / "roster.bin"
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp != self._stamp:
            try:
                saved = load_roster(self.directory, mesh=self.mesh, cidr=self.cidr)
            except StateDirError as exc:
                if self._stamp is None:
                    raise
                # Keep serving the last good roster; the agent rewrites the file atomically,
                # so this is damage, not a half-written file.
                log.warning("keeping the previous roster: %s", exc)
                return self._view
            self._stamp = stamp
            if saved is not None:
                self._view = saved.roster.view()
        return self._view


@dataclass(frozen=True, kw_only=True)
class FleetMembership:
    name: str
    identity: IdentityKey
    directory: RosterDirectory


def load_fleet_membership(state: Path) -> FleetMembership:
    """This node's identity and the roster-backed directory. Raises StateDirError."""
    files = load_mesh_files(state)
    roster = StateDirRoster(state, mesh=files.mesh, cidr=files.cidr)
    if roster.view().member(files.identity.public) is None:
        raise StateDirError(
            f"the roster in {state} does not list this node yet; start 'ppn up --state {state}'"
        )
    return FleetMembership(
        name=files.name, identity=files.identity, directory=RosterDirectory(roster.view)
    )
