"""The mesh's files in the node's state directory (RFC-NOTES §7.10).

The join ceremony owns ``identity.key``, ``wireguard.key``, ``node.json`` and ``mesh.json``
(``genesis``, which depends only on the shared base); this module reads them and owns:

    roster.bin    canonical msgpack {"version": 1, "generation": n, "mesh": bin16, "cidr": str,
                  "records": [record bytes, ...], "baseline": [identity, ...]}
    agent.json    what the running agent reports (pid, interface, control port, counters)
    hosts         the hosts-file fragment for the mesh's names
    outbox.bin    canonical msgpack {"version": 1, "records": [record bytes, ...]}: records
                  signed by a command (``ppn remove``) for the running agent to merge and push;
                  the agent claims the file by renaming it and deletes the claimed copy only
                  after the merged roster is saved, so a record is never lost (a damaged
                  outbox is set aside as ``outbox.bin.damaged-*``, never deleted)

Every file is written atomically (temporary file in the same directory, fsync, rename, fsync of
the directory), so a crash at any point leaves the old or the new file, never a mix; the
generation grows by one with every write of ``roster.bin``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genesis import StateError, load_mesh, load_node

from .. import wire
from .._io_files import atomic_write
from ._bootstrap import PreliminaryMember
from ._ids import mesh_id
from ._records import (
    InvalidRecord,
    MemberRecord,
    Record,
    Rotation,
    Tombstone,
    record_from_bytes,
)
from ._roster import Roster

__all__ = [
    "OUTBOX_FILE",
    "OutboxClaim",
    "ROSTER_FILE",
    "MeshFiles",
    "RosterFile",
    "SignedClaims",
    "AgentAlreadyRunning",
    "StateDirError",
    "atomic_write",
    "load_mesh_files",
    "load_roster",
    "load_signed_claims",
    "queue_records",
    "read_agent_info",
    "running_agent_pid",
    "save_roster",
    "claim_queued_records",
    "take_queued_records",
    "write_agent_info",
]

ROSTER_FILE = "roster.bin"
AGENT_FILE = "agent.json"
HOSTS_FILE = "hosts"
OUTBOX_FILE = "outbox.bin"
_VERSION = 1
_MAX_STATE = 64 * 1024 * 1024


class StateDirError(Exception):
    """The state directory is missing what the mesh needs, or holds something unreadable.

    ``missing`` is True when the node simply has not joined a mesh yet.
    """

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class AgentAlreadyRunning(StateDirError):
    """Another ``ppn up`` is running on this state directory."""


def running_agent_pid(directory: Path) -> int | None:
    """The PID of a live ``ppn up`` recorded in ``agent.json`` (not this process), or None."""
    info = read_agent_info(directory)
    pid = info.get("pid") if info else None
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A recycled PID belongs to some other program: only a ppn process counts.
    return pid if b"ppn" in cmdline and b"up" in cmdline else None


@dataclass(frozen=True, kw_only=True)
class MeshFiles:
    """What the ceremony left in the state directory, in the mesh's terms."""

    directory: Path
    name: str
    identity: Any  # ppn.IdentityKey
    wg: Any  # ppn.WireGuardKeyPair
    endpoints: tuple[str, ...]
    mesh: bytes
    cidr: str
    address: str
    interface: str
    preliminary: tuple[PreliminaryMember, ...]
    mesh_json_mtime: float

    @property
    def is_genesis(self) -> bool:
        return bool(mesh_id(self.identity.public) == self.mesh)

    def own_preliminary(self) -> PreliminaryMember | None:
        return next((m for m in self.preliminary if m.identity == self.identity.public), None)


def load_mesh_files(directory: Path) -> MeshFiles:
    """Read node and mesh membership through the ceremony's public API.

    The layers are base (``ppn`` itself) <- ``genesis`` <- ``ppn.mesh``: the mesh builds on the
    ceremony's result, the ceremony only on the shared base, so this import is made at the top
    of the file (it was hidden inside this function, where it looked like a cycle between
    ``ppn`` and ``genesis``); tests/test_architecture.py holds the rooms acyclic.
    """
    try:
        node = load_node(directory)
        mesh = load_mesh(directory)
    except StateError as exc:
        raise StateDirError(str(exc)) from exc
    if node is None or mesh is None:
        raise StateDirError(
            f"{directory} is not a mesh member; run 'ppn genesis' or 'ppn join' first",
            missing=True,
        )
    preliminary = tuple(
        PreliminaryMember(
            name=m.name,
            identity=m.identity,
            wg_key=m.wg,
            address=m.address,
            endpoints=tuple(m.endpoints),
            roles=tuple(m.roles),
            sponsor=mesh.sponsor
            if m.identity == node.identity.public
            else mesh.sponsor_of(m.identity),
        )
        for m in mesh.roster
    )
    return MeshFiles(
        directory=directory,
        name=node.name,
        identity=node.identity,
        wg=node.wg,
        endpoints=tuple(node.endpoints),
        mesh=mesh.mesh_id,
        cidr=mesh.cidr,
        address=mesh.address,
        interface=mesh.interface,
        preliminary=preliminary,
        mesh_json_mtime=(directory / "mesh.json").stat().st_mtime,
    )


@dataclass
class RosterFile:
    roster: Roster
    generation: int
    baseline: frozenset[bytes]


def load_roster(directory: Path, *, mesh: bytes, cidr: str) -> RosterFile | None:
    """The saved roster, or None when there is none yet. Every record is verified again."""
    path = directory / ROSTER_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateDirError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        value = wire.unpack_canonical(data, max_size=_MAX_STATE)
        if not isinstance(value, dict) or value.get("version") != _VERSION:
            raise StateDirError(f"{path} has an unknown format")
        if value["mesh"] != mesh:
            raise StateDirError(f"{path} belongs to another mesh than mesh.json")
        records = [record_from_bytes(b) for b in value["records"]]
        baseline = frozenset(value["baseline"])
        generation = int(value["generation"])
        roster = Roster(mesh=mesh, network=value["cidr"] if value["cidr"] else cidr)
        roster.merge(records)
    except (wire.WireError, InvalidRecord, KeyError, TypeError, ValueError) as exc:
        raise StateDirError(f"{path} is damaged: {exc}") from exc
    return RosterFile(roster=roster, generation=generation, baseline=baseline)


def save_roster(
    directory: Path, roster: Roster, *, generation: int, baseline: Iterable[bytes]
) -> None:
    value = {
        "version": _VERSION,
        "generation": generation,
        "mesh": roster.mesh,
        "cidr": str(roster.network),
        "records": [r.encoded for r in roster.records()],
        "baseline": sorted(set(baseline)),
    }
    atomic_write(directory / ROSTER_FILE, wire.pack_canonical(value))


def write_agent_info(directory: Path, info: dict[str, Any]) -> None:
    atomic_write(
        directory / AGENT_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    )


def read_agent_info(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((directory / AGENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_hosts(directory: Path, fragment: str) -> None:
    path = directory / HOSTS_FILE
    try:
        if path.read_text() == fragment:
            return
    except OSError:
        pass
    atomic_write(path, fragment.encode(), mode=0o644)


@dataclass(frozen=True, kw_only=True)
class SignedClaims:
    """What the signed roster already hands out, so a sponsor's ceremony avoids it (§7.5)."""

    addresses: frozenset[str]  # every member record's address (routed or not)
    names: frozenset[str]
    identities: frozenset[bytes]  # removed identities too: they can never be admitted again
    wg_keys: frozenset[bytes]
    removed: frozenset[bytes]  # removed identities (tombstone or counted admin act, §7.14)


def load_signed_claims(directory: Path, *, mesh: bytes, cidr: str) -> SignedClaims | None:
    """The claims of the roster the agent saved, or None when there is none (agent never ran)."""
    saved = load_roster(directory, mesh=mesh, cidr=cidr)
    if saved is None:
        return None
    # Removed by a tombstone or by a counted admin act (§7.14): such a member record stays
    # stored, but holds neither its name nor its address any more.
    removed = frozenset(r.identity for r in saved.roster.view().removed)
    entries = [
        r for r in saved.roster.records() if isinstance(r, MemberRecord | Tombstone | Rotation)
    ]
    members = [r for r in entries if isinstance(r, MemberRecord) and r.identity not in removed]
    return SignedClaims(
        addresses=frozenset(r.address for r in members),
        names=frozenset(r.name for r in members),
        identities=frozenset(r.identity for r in entries),
        wg_keys=frozenset(r.wg_key for r in entries if isinstance(r, MemberRecord)),
        removed=removed,
    )


def _read_outbox(path: Path) -> list[Record]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateDirError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        value = wire.unpack_canonical(data, max_size=_MAX_STATE)
        if not isinstance(value, dict) or value.get("version") != _VERSION:
            raise StateDirError(f"{path} has an unknown format")
        return [record_from_bytes(b) for b in value["records"]]
    except (wire.WireError, InvalidRecord, KeyError, TypeError) as exc:
        raise StateDirError(f"{path} is damaged: {exc}") from exc


def queue_records(directory: Path, records: Iterable[Record]) -> None:
    """Add signed records to the outbox for the agent to merge and push (RFC-NOTES §7.10)."""
    path = directory / OUTBOX_FILE
    queued = {r.digest: r for r in _read_outbox(path)}
    queued.update((r.digest, r) for r in records)
    value = {"version": _VERSION, "records": [r.encoded for r in queued.values()]}
    atomic_write(path, wire.pack_canonical(value))


@dataclass(frozen=True, kw_only=True)
class OutboxClaim:
    """Records claimed from the outbox. The claimed files stay on disk until :meth:`release`:
    call it once what was merged is saved, and an agent that dies in between finds the
    records again when it next claims."""

    records: tuple[Record, ...]
    damaged: tuple[str, ...]  # one sentence per damaged file, naming where it was set aside
    files: tuple[Path, ...]

    def release(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


_CLAIM_GLOB = f".{OUTBOX_FILE}.*.taking"


def claim_queued_records(directory: Path) -> OutboxClaim:
    """Claim the outbox (rename first, so a concurrent :func:`queue_records` either lands in the
    claimed file or starts a new one), together with any claim an earlier agent left behind,
    and return their records, every signature verified. A damaged file is renamed to
    ``outbox.bin.damaged-<time>-<n>`` (kept for the operator) and reported in ``damaged``."""
    import secrets
    import time

    files = sorted(directory.glob(_CLAIM_GLOB))  # left by an agent that died before release
    mine = directory / f".{OUTBOX_FILE}.{os.getpid()}-{secrets.token_hex(4)}.taking"
    try:
        os.replace(directory / OUTBOX_FILE, mine)
        files.append(mine)
    except FileNotFoundError:
        pass
    records: dict[bytes, Record] = {}
    damaged: list[str] = []
    kept: list[Path] = []
    for index, path in enumerate(files):
        try:
            records.update((r.digest, r) for r in _read_outbox(path))
            kept.append(path)
        except StateDirError as exc:
            aside = directory / f"{OUTBOX_FILE}.damaged-{int(time.time())}-{index}"
            os.replace(path, aside)
            damaged.append(f"{exc}; set aside as {aside.name}")
    return OutboxClaim(records=tuple(records.values()), damaged=tuple(damaged), files=tuple(kept))


def take_queued_records(directory: Path) -> list[Record]:
    """Claim and release at once (for a caller with no roster to save first); raises
    :class:`StateDirError` if a claimed file was damaged (it is set aside, not deleted)."""
    claim = claim_queued_records(directory)
    claim.release()
    if claim.damaged:
        raise StateDirError(claim.damaged[0])
    return list(claim.records)
