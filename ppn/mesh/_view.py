"""What a roster means: live members, their admission chains, and conflict resolution.

The view is a pure function of the set of records (and the mesh CIDR), so two members holding
the same records see the same members, the same winners of every conflict and the same problems
(RFC-NOTES §7.4).

Rules, in order:

1. *Chain*: a record counts only if its admitter's record is on the roster and itself counts,
   back to the genesis node (which admits itself). The admission time must not precede the
   admitter's own, and if the admitter was removed, must not follow its removal time.
2. *Priority* between two live members is ``(admitted_at, node_id)``: earlier admission wins,
   the lower node id breaks ties.
3. *WireGuard key*: members claiming the same WireGuard key — only the first by priority is
   configured; the others are reported and left out.
4. *Address*: of members claiming one address, the first by priority keeps it; every other is
   *unrouted* (no peer routes its address) until it re-addresses itself. Its suggested new
   address is the lowest free one, handed out to losers in priority order. Addresses outside the
   mesh CIDR are unrouted too.
5. *Name*: of members claiming one name, the first by priority keeps it; the others resolve
   only by node id.

Admin acts (RFC-NOTES §7.14) are judged on a timeline before rule 1's final pass: who is an
admin when, and which removals by admins count; a counted removal then ends its member like a
tombstone does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from ._addressing import MeshNetwork, is_host_address, lowest_free
from ._ids import short_id
from ._records import ActKind, AdminAct, MemberRecord, Record, Rotation, Tombstone

# A member's own record: live entry, removal, or its move to a new identity (§7.15).
_Entry = MemberRecord | Tombstone | Rotation

__all__ = ["Member", "Problem", "ProblemKind", "Removed", "RosterView", "compute_view"]


class ProblemKind(Enum):
    BROKEN_CHAIN = "broken-chain"
    WG_KEY_CONFLICT = "wg-key-conflict"
    ADDRESS_CONFLICT = "address-conflict"
    ADDRESS_OUTSIDE_MESH = "address-outside-mesh"
    NAME_CONFLICT = "name-conflict"
    INVALID_RECORD = "invalid-record"
    ACT_NOT_COUNTED = "act-not-counted"


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Something wrong with one member's record, as every member computes it alike."""

    kind: ProblemKind
    identity: bytes
    detail: str
    winner: bytes | None = None  # the identity that kept the contested key/address/name
    suggested_address: str | None = None  # for ADDRESS_CONFLICT: where the loser should move


@dataclass(frozen=True, kw_only=True)
class Member:
    """A live member whose admission chain reaches the genesis node."""

    record: MemberRecord
    routed: bool  # its mesh address is routed to it (no lost conflict, inside the CIDR)
    named: bool  # its name resolves to it (no lost name conflict)

    @property
    def identity(self) -> bytes:
        return self.record.identity

    @property
    def node_id(self) -> bytes:
        return self.record.node_id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def address(self) -> str:
        return self.record.address

    @property
    def wg_key(self) -> bytes:
        return self.record.wg_key

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.record.endpoints

    @property
    def roles(self) -> tuple[str, ...]:
        return self.record.roles

    @property
    def admitter(self) -> bytes:
        return self.record.admission.admitter

    @property
    def admitted_at(self) -> int:
        return self.record.admission.admitted_at

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def priority(self) -> tuple[int, bytes]:
        return (self.admitted_at, self.node_id)


@dataclass(frozen=True, kw_only=True)
class Removed:
    """A member removed for good: by a tombstone, or by a counted admin act (§7.14)."""

    identity: bytes
    name: str
    removed_at: int
    by: bytes  # the signer of the removal


@dataclass(frozen=True, kw_only=True)
class RosterView:
    """Members (ordered by priority), removed members, admins and problems of one state."""

    members: tuple[Member, ...]
    removed: tuple[Removed, ...]
    problems: tuple[Problem, ...]
    admins: frozenset[bytes] = frozenset()  # live members with admin rights, genesis included
    # The latest time of what counts: chained admissions, tombstones, counted admin acts. A
    # signer stamps its next act no earlier (RFC-NOTES §7.14, "Clocks").
    clock: int = 0
    # Identities that moved to a new key (§7.15), old -> successor; neither live nor removed.
    rotated: tuple[tuple[bytes, bytes], ...] = ()

    def successor_of(self, identity: bytes) -> bytes | None:
        """The identity ``identity`` rotated to, if it did (RFC-NOTES §7.15)."""
        return next((new for old, new in self.rotated if old == identity), None)

    def current_identity(self, identity: bytes) -> bytes:
        """``identity``, or the last successor of its rotations: who a node whose agent still
        runs under an old identity is now (same WireGuard key, same address)."""
        seen = {identity}
        while (successor := self.successor_of(identity)) is not None and successor not in seen:
            seen.add(successor)
            identity = successor
        return identity

    def is_admin(self, identity: bytes) -> bool:
        return identity in self.admins

    def is_removed(self, identity: bytes) -> bool:
        return any(r.identity == identity for r in self.removed)

    def member(self, identity: bytes) -> Member | None:
        for m in self.members:
            if m.identity == identity:
                return m
        return None

    def by_name(self, name: str) -> Member | None:
        for m in self.members:
            if m.named and m.name == name:
                return m
        return None

    def by_node_id(self, ident: bytes) -> Member | None:
        for m in self.members:
            if m.node_id == ident:
                return m
        return None

    def problems_of(self, identity: bytes) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.identity == identity)

    def relays(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if "relay" in m.roles and m.routed)


def _chain_status(
    records: Mapping[bytes, _Entry], removed_at: Mapping[bytes, int]
) -> dict[bytes, str | None]:
    """For every identity: None when its chain reaches genesis, else why not. Iterative, so
    a chain thousands of members long needs no recursion."""
    status: dict[bytes, str | None] = {}
    for start in records:
        path: list[bytes] = []
        on_path: set[bytes] = set()
        current = start
        result: str | None
        while True:
            if current in status:
                known = status[current]
                result = None if known is None else "its admitter's chain is broken"
                break
            record = records.get(current)
            if record is None:
                result = "its admitter is not on the roster"
                break
            if current in on_path:
                result = "its admission chain is a cycle"
                break
            on_path.add(current)
            path.append(current)
            admission = record.admission
            if admission.is_genesis:
                status[current] = None
                path.pop()
                result = None
                break
            parent = records.get(admission.admitter)
            if parent is not None:
                link_error = _link_error(record, parent, removed_at.get(admission.admitter))
                if link_error is not None:
                    status[current] = link_error
                    path.pop()
                    result = "its admitter's chain is broken"
                    break
            current = admission.admitter
        if path:
            status[path[-1]] = result
            inherited = None if result is None else "its admitter's chain is broken"
            for ident in reversed(path[:-1]):
                status[ident] = inherited
    return status


def _link_error(record: _Entry, parent: _Entry, removed_at: int | None) -> str | None:
    admitted_at = record.admission.admitted_at
    if admitted_at < parent.admission.admitted_at:
        return "it was admitted before its admitter was"
    if isinstance(parent, Rotation) and record.identity == parent.successor:
        # The successor continues its predecessor: same name, same place in priority.
        if record.name != parent.name or admitted_at != parent.admission.admitted_at:
            return "a successor keeps its predecessor's name and admission time"
        return None
    if removed_at is not None and admitted_at > removed_at:
        if isinstance(parent, Rotation):
            return "it was admitted by its admitter's old key after the rotation"
        return "it was admitted after its admitter was removed"
    return None


def compute_view(records: Iterable[Record], network: MeshNetwork) -> RosterView:
    """The view the roster rules give (RFC-NOTES §7.4): chains first, then one member per
    WireGuard key (rule 3), per address (rule 4) and per name (rule 5), first admitted wins.
    Admin acts are judged between a first pass of rule 1 (tombstones alone) and the final one
    (§7.14)."""
    problems: list[Problem] = []
    entries: dict[bytes, _Entry] = {}
    acts: list[AdminAct] = []
    for record in records:
        if isinstance(record, AdminAct):
            acts.append(record)
        else:
            entries[record.identity] = record
    tombstoned = {k: r.removed_at for k, r in entries.items() if isinstance(r, Tombstone)}
    # A rotation ends what the old key may do as a removal would, at rotated_at (§7.15).
    tombstoned.update((k, r.rotated_at) for k, r in entries.items() if isinstance(r, Rotation))
    first = _chain_status(entries, tombstoned)
    timeline = _admin_timeline(entries, first, acts, problems)
    # Rule 1 again only when counted acts removed someone: otherwise the first pass stands.
    chain = (
        _chain_status(entries, {**timeline.removed_at, **tombstoned})
        if timeline.removed_at
        else first
    )
    live, removed = _by_chain(entries, chain, timeline, problems)
    configured = _one_per_wg_key(live, problems)
    routed = _one_per_address(configured, live, network, problems)
    named = _one_per_name(configured, problems)
    members = tuple(
        Member(record=r, routed=r.identity in routed, named=r.identity in named) for r in configured
    )
    live_ids = {r.identity for r in configured}
    problems.sort(key=lambda p: (p.identity, p.kind.value))
    return RosterView(
        members=members,
        removed=tuple(removed),
        problems=tuple(problems),
        admins=frozenset(timeline.admins & live_ids),
        clock=max(
            [
                timeline.latest,
                *(r.admission.admitted_at for k, r in entries.items() if not first[k]),
            ]
        ),
        rotated=tuple(
            (k, r.successor) for k, r in sorted(entries.items()) if isinstance(r, Rotation)
        ),
    )


@dataclass(frozen=True, kw_only=True)
class _Timeline:
    admins: set[bytes]  # admins after the last act (intersected with the live members later)
    latest: int  # the time of the last tombstone or counted act (0: none)
    removed_at: dict[bytes, int]  # members removed by counted admin acts, and when
    removed_by: dict[bytes, bytes]


# At one time: tombstones, grants (an admin acts after its grant, and signers stamp acts with a
# Lamport clock, so a grant and the acts it allows may share a second), revocations, removals.
_EVENT_ORDER = {ActKind.GRANT_ADMIN: 1, ActKind.REVOKE_ADMIN: 2, ActKind.REMOVE: 3}


def _admin_timeline(
    entries: Mapping[bytes, _Entry],
    chain: Mapping[bytes, str | None],
    acts: list[AdminAct],
    problems: list[Problem],
) -> _Timeline:
    """Replay tombstones and admin acts in time order (RFC-NOTES §7.14): the genesis node is
    an admin from the start; an act counts when its signer is an admin at its time; a removal
    (tombstone or counted act) ends the member and its admin rights. Deterministic: events at
    one time are ordered by kind, then record hash."""
    chained = {k: r for k, r in entries.items() if chain.get(k) is None}
    events: list[tuple[int, int, bytes, Tombstone | Rotation | AdminAct]] = []
    for record in chained.values():
        if isinstance(record, Tombstone):
            events.append((record.removed_at, 0, record.digest, record))
        elif isinstance(record, Rotation):
            events.append((record.rotated_at, 0, record.digest, record))
    for act in acts:
        events.append((act.at, _EVENT_ORDER[act.act], act.digest, act))
    events.sort(key=lambda e: e[:3])
    admins = {k for k, r in chained.items() if r.admission.is_genesis}
    gone: set[bytes] = set()
    removed_at: dict[bytes, int] = {}
    removed_by: dict[bytes, bytes] = {}
    latest = 0
    for at, _, _, event in events:
        if isinstance(event, Tombstone):
            latest = at
            gone.add(event.identity)
            admins.discard(event.identity)
            continue
        if isinstance(event, Rotation):
            # The old key's rights end here; an admin's rights pass to its successor.
            latest = at
            gone.add(event.identity)
            if event.identity in admins:
                admins.discard(event.identity)
                admins.add(event.successor)
            continue
        subject = chained.get(event.subject)
        if event.signer not in admins:
            problems.append(_not_counted(event, "its signer was not an admin at that time"))
        elif subject is None or subject.admission.admitted_at > at:
            problems.append(_not_counted(event, "its subject was not a member at that time"))
        elif event.subject in gone:
            continue  # already removed: nothing left to act on
        elif event.act is ActKind.GRANT_ADMIN:
            latest = at
            admins.add(event.subject)
        elif event.act is ActKind.REVOKE_ADMIN:
            latest = at
            admins.discard(event.subject)
        else:
            latest = at
            gone.add(event.subject)
            admins.discard(event.subject)
            removed_at[event.subject] = at
            removed_by[event.subject] = event.signer
    return _Timeline(admins=admins, latest=latest, removed_at=removed_at, removed_by=removed_by)


def _not_counted(act: AdminAct, why: str) -> Problem:
    return Problem(
        kind=ProblemKind.ACT_NOT_COUNTED,
        identity=act.signer,
        detail=f"its {act.act.value} of {short_id(act.subject)} does not count: {why}",
    )


def _by_chain(
    entries: Mapping[bytes, _Entry],
    chain: Mapping[bytes, str | None],
    timeline: _Timeline,
    problems: list[Problem],
) -> tuple[list[MemberRecord], list[Removed]]:
    """Live members in admission order and removed members; records with a broken admission
    chain are neither (each is a problem)."""
    live: list[MemberRecord] = []
    removed: list[Removed] = []
    for identity in sorted(entries):
        record = entries[identity]
        reason = chain[identity]
        if reason is not None:
            problems.append(
                Problem(kind=ProblemKind.BROKEN_CHAIN, identity=identity, detail=reason)
            )
        elif isinstance(record, Rotation):
            continue  # moved to its successor: neither live nor removed
        elif isinstance(record, Tombstone):
            removed.append(
                Removed(
                    identity=identity,
                    name=record.name,
                    removed_at=record.removed_at,
                    by=record.signer,
                )
            )
        elif identity in timeline.removed_at:
            removed.append(
                Removed(
                    identity=identity,
                    name=record.name,
                    removed_at=timeline.removed_at[identity],
                    by=timeline.removed_by[identity],
                )
            )
        else:
            live.append(record)
    live.sort(key=lambda r: (r.admission.admitted_at, r.node_id))
    return live, removed


def _one_per_wg_key(live: list[MemberRecord], problems: list[Problem]) -> list[MemberRecord]:
    """Rule 3: one WireGuard key, one member; a later claimant is not configured at all."""
    wg_owner: dict[bytes, MemberRecord] = {}
    configured: list[MemberRecord] = []
    for record in live:
        owner = wg_owner.get(record.wg_key)
        if owner is None:
            wg_owner[record.wg_key] = record
            configured.append(record)
        else:
            problems.append(
                Problem(
                    kind=ProblemKind.WG_KEY_CONFLICT,
                    identity=record.identity,
                    detail=f"its WireGuard key belongs to {owner.name} ({short_id(owner.node_id)})",
                    winner=owner.identity,
                )
            )
    return configured


def _one_per_address(
    configured: list[MemberRecord],
    live: list[MemberRecord],
    network: MeshNetwork,
    problems: list[Problem],
) -> set[bytes]:
    """Rule 4: the identities routed at their address. A loser is told the lowest address free
    of every live member's (``live``, not only the configured ones)."""
    address_owner: dict[str, MemberRecord] = {}
    losers: list[tuple[MemberRecord, MemberRecord]] = []
    routed: set[bytes] = set()
    for record in configured:
        if not is_host_address(network, record.address):
            problems.append(
                Problem(
                    kind=ProblemKind.ADDRESS_OUTSIDE_MESH,
                    identity=record.identity,
                    detail=f"{record.address} is not a host address of {network}",
                )
            )
            continue
        owner = address_owner.get(record.address)
        if owner is None:
            address_owner[record.address] = record
            routed.add(record.identity)
        else:
            losers.append((record, owner))
    taken = {r.address for r in live}
    for record, owner in losers:
        try:
            suggestion: str | None = lowest_free(network, taken)
        except Exception:
            suggestion = None
        if suggestion is not None:
            taken.add(suggestion)
        problems.append(
            Problem(
                kind=ProblemKind.ADDRESS_CONFLICT,
                identity=record.identity,
                detail=(
                    f"{record.address} belongs to {owner.name} ({short_id(owner.node_id)}), "
                    f"admitted first"
                ),
                winner=owner.identity,
                suggested_address=suggestion,
            )
        )
    return routed


def _one_per_name(configured: list[MemberRecord], problems: list[Problem]) -> set[bytes]:
    """Rule 5: the identities that hold their name."""
    name_owner: dict[str, MemberRecord] = {}
    named: set[bytes] = set()
    for record in configured:
        owner = name_owner.get(record.name)
        if owner is None:
            name_owner[record.name] = record
            named.add(record.identity)
        else:
            problems.append(
                Problem(
                    kind=ProblemKind.NAME_CONFLICT,
                    identity=record.identity,
                    detail=f"the name {record.name!r} belongs to {short_id(owner.node_id)}",
                    winner=owner.identity,
                )
            )
    return named
