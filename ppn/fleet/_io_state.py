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

from .. import wire
from .._errors import RemoteProtocolError
from .._io_files import atomic_write
from .._keys import IdentityKey
from ..mesh._io_state import StateDirError, load_mesh_files, load_roster
from ..mesh._roster import Roster
from ..mesh._view import RosterView
from ._heartbeat import ReplayGuard
from ._roster import RosterDirectory

__all__ = [
    "REPLAY_FILE",
    "FleetMembership",
    "StateDirError",
    "StateDirRoster",
    "load_fleet_membership",
    "load_replay_state",
    "save_replay_state",
]

REPLAY_FILE = "fleet-replay.bin"  # the controller's replay state in a mesh state directory

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


def load_replay_state(path: Path) -> ReplayGuard:
    """The controller's saved replay state (RFC-NOTES §8.3.1); empty when there is none yet.
    A damaged file is an error, not a fresh start: a fresh start is the replay window."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ReplayGuard()
    except OSError as exc:
        raise StateDirError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return ReplayGuard.from_value(wire.unpack_canonical(data, max_size=1 << 30))
    except (wire.WireError, RemoteProtocolError) as exc:
        raise StateDirError(f"{path} is damaged ({exc}); move it away to start afresh") from exc


def save_replay_state(path: Path, guard: ReplayGuard) -> None:
    """Replace the saved replay state atomically (temporary file, fsync, rename)."""
    atomic_write(path, wire.pack_canonical(guard.to_value()))
