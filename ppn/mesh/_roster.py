"""The roster store: one winning record per identity, merged as a join-semilattice.

State is a map from identity key to that identity's highest-ranked checked record. Ranks are a
total order (RFC-NOTES §7.3): any tombstone outranks any member record; member records compare by
version, then self-signed over admitter-signed, then record hash; tombstones by record hash.
Merging keeps the higher rank per identity, so merge is commutative, associative and idempotent,
and any two members that saw the same records hold the same state — and, because the view is a
pure function of the state, the same members.

A record is *stored* only once its admitter is (the genesis node's self-admission needs none),
so the stored identities always chain back to genesis (RFC-NOTES §7.3). A record whose admitter
has not arrived waits in a bounded quarantine (:data:`MAX_QUARANTINE` records, the oldest
dropped first) and is stored as soon as its admitter is; it is never saved, summarised or
passed on. Whether a record is stored depends only on which identities are held, which only
grows, so the stored set is still independent of delivery order (up to the quarantine's bound,
which anti-entropy repairs: the peer that holds a record sends it again once its admitter is
held here).

Sans-IO: no clocks (``now`` is an argument), no I/O.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._addressing import MeshNetwork, first_host, lowest_free, parse_cidr
from ._ids import mesh_id, short_id
from ._records import (
    ActKind,
    AdminAct,
    InvalidRecord,
    MemberRecord,
    Record,
    Tombstone,
    build_record,
    check_record,
    sign_act,
    sign_admission,
    sign_member,
    sign_tombstone,
)
from ._view import ProblemKind, RosterView, compute_view

__all__ = ["MAX_QUARANTINE", "CheckedBatch", "MergeResult", "Rejection", "Roster"]

_DIGEST_LABEL = b"PPN-v1 roster digest\x00"
# Records waiting for their admitter: at most this many (≤ 4 KiB each, so ≤ 4 MiB).
MAX_QUARANTINE = 1024
# How far ahead of the signer's clock an admin act's time follows the roster's (§7.14).
MAX_CLOCK_LEAD = 3600


def _anchor(record: Record) -> bytes | None:
    """The identity that must be held before ``record`` is stored (RFC-NOTES §7.3): its
    admitter, or for an admin act its signer; None for the genesis node's own records."""
    if isinstance(record, AdminAct):
        return record.signer
    return None if record.admission.is_genesis else record.admission.admitter


def _in_window(key: bytes, window: tuple[bytes, bytes]) -> bool:
    first, last = window
    return first <= key <= last if first <= last else key >= first or key <= last


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """A record that was refused, and why (one sentence; no detail for signature failures)."""

    detail: str
    identity: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class MergeResult:
    """What a merge changed: records that became their identity's winner, and refusals."""

    changed: tuple[Record, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    held_back: int = 0  # checked records of this merge left waiting for their admitter

    @property
    def has_changes(self) -> bool:
        return bool(self.changed)


@dataclass(frozen=True, kw_only=True)
class CheckedBatch:
    """Received records after :meth:`Roster.check`: the verified ones to merge, and refusals.

    Checking is the expensive half of :meth:`Roster.ingest` (two Ed25519 verifications per
    record) and reads the roster without changing it, so an adapter may run it on a worker
    thread and merge the batch on its event loop (:meth:`Roster.accept`)."""

    records: tuple[Record, ...] = ()
    rejected: tuple[Rejection, ...] = ()


class Roster:
    """The set of roster records one node holds for one mesh."""

    def __init__(
        self, *, mesh: bytes, network: MeshNetwork | str, records: Iterable[Record] = ()
    ) -> None:
        self.mesh = mesh
        self.network = parse_cidr(network) if isinstance(network, str) else network
        self._records: dict[bytes, Record] = {}
        # identity -> best record waiting for its admitter; insertion order = age.
        self._quarantine: dict[bytes, Record] = {}
        self._digest: bytes | None = None
        self._view: RosterView | None = None
        result = self.merge(records)
        if result.rejected:
            raise LocalProtocolError(f"initial roster record refused: {result.rejected[0].detail}")

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def found(
        cls,
        genesis: IdentityKey,
        *,
        name: str,
        wg_key: bytes,
        now: int,
        endpoints: Sequence[str] = (),
        roles: Iterable[str] = ("genesis",),
        network: MeshNetwork | str = "10.8.0.0/24",
    ) -> Roster:
        """A new mesh whose only member is the genesis node, at the CIDR's first host address."""
        net = parse_cidr(network) if isinstance(network, str) else network
        mesh = mesh_id(genesis.public)
        admission = sign_admission(
            genesis, mesh=mesh, identity=genesis.public, name=name, admitted_at=now
        )
        record = sign_member(
            genesis,
            admission=admission,
            wg_key=wg_key,
            address=first_host(net),
            endpoints=tuple(endpoints),
            roles=tuple(roles),
            version=1,
        )
        return cls(mesh=mesh, network=net, records=[record])

    def copy(self) -> Roster:
        roster = Roster(mesh=self.mesh, network=self.network, records=self._records.values())
        roster._quarantine = dict(self._quarantine)
        return roster

    # --- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, identity: object) -> bool:
        return identity in self._records

    def get(self, identity: bytes) -> Record | None:
        return self._records.get(identity)

    def records(self) -> list[Record]:
        """Every winning record, ordered by identity key."""
        return [self._records[k] for k in sorted(self._records)]

    @property
    def quarantined(self) -> int:
        """How many records wait for their admitter (never saved, summarised or passed on)."""
        return len(self._quarantine)

    def state(self) -> dict[bytes, bytes]:
        """identity → record hash: equal for two rosters exactly when they hold the same records."""
        return {k: r.digest for k, r in self._records.items()}

    def digest(self) -> bytes:
        """32 bytes summarising the whole state (RFC-NOTES §7.6)."""
        if self._digest is None:
            h = hashlib.sha512(_DIGEST_LABEL)
            for identity in sorted(self._records):
                h.update(identity)
                h.update(self._records[identity].digest)
            self._digest = h.digest()[:32]
        return self._digest

    def summary(self) -> list[tuple[bytes, bytes]]:
        """(identity, record hash) pairs, ordered by identity: what anti-entropy compares."""
        return [(k, self._records[k].digest) for k in sorted(self._records)]

    def summary_window(self, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """At most ``limit`` summary pairs: the whole summary when it is shorter, otherwise
        the ``limit`` identities from the first at or after ``start``, in cyclic order (a
        contiguous run, so the peer knows which range it covers; RFC-NOTES §7.6)."""
        items = self.summary()
        if len(items) < limit:
            return items
        i = bisect.bisect_left(items, (start, b""))
        return (items[i:] + items[:i])[:limit]

    def compare(
        self,
        summary: Iterable[tuple[bytes, bytes]],
        *,
        window: tuple[bytes, bytes] | None = None,
    ) -> tuple[list[Record], list[bytes]]:
        """Given a peer's summary: the records to send it (it lacks them or holds a different
        one) and the identities to ask it for (we lack them or hold a different one).

        A differing pair goes both ways; each side's merge keeps the higher rank, so the
        exchange converges whichever is higher. ``window`` (first, last): the summary covers
        only the identities in that cyclic range, so only those are sent.
        """
        theirs = dict(summary)
        send = [
            r
            for k, r in sorted(self._records.items())
            if theirs.get(k) != r.digest and (window is None or _in_window(k, window))
        ]
        want = sorted(
            k
            for k, d in theirs.items()
            if (mine := self._records.get(k)) is None or mine.digest != d
        )
        return send, want

    def view(self) -> RosterView:
        if self._view is None:
            self._view = compute_view(self._records.values(), self.network)
        return self._view

    # --- merging -----------------------------------------------------------------------------

    def merge(self, records: Iterable[Record]) -> MergeResult:
        """Merge checked records (from :func:`decode_record` or the ``sign_*`` helpers).

        A record is stored only when its admitter is held (or it is the genesis node's own);
        the others of the batch wait in the quarantine, with those already there, until their
        admitter is stored, in this batch or a later one."""
        changed: dict[bytes, Record] = {}
        rejected: list[Rejection] = []
        waiting: list[Record] = []
        for record in records:
            if not record.checked:
                raise LocalProtocolError("merge() takes only checked records; use ingest()")
            if record.mesh != self.mesh:
                rejected.append(
                    Rejection(detail="the record belongs to another mesh", identity=record.identity)
                )
                continue
            anchor = _anchor(record)
            if anchor is None or anchor in self._records:
                self._store(record, changed)
            else:
                waiting.append(record)
        held_back = 0
        if waiting or (changed and self._quarantine):
            held_back = self._settle(waiting, changed)
        if changed:
            self._digest = None
            self._view = None
        return MergeResult(
            changed=tuple(changed.values()), rejected=tuple(rejected), held_back=held_back
        )

    def _store(self, record: Record, changed: dict[bytes, Record]) -> bool:
        """Keep ``record`` if it outranks what is held; True when its identity is new here."""
        current = self._records.get(record.identity)
        if current is None or record.rank > current.rank:
            self._records[record.identity] = record
            changed[record.identity] = record
        return current is None

    def _settle(self, waiting: list[Record], changed: dict[bytes, Record]) -> int:
        """Store every waiting record (quarantined or new) whose admitter is now held, in
        admission order through the chains (linear: each record is looked at once); the rest
        go (back) to the quarantine. Returns how many of ``waiting`` stay there."""
        by_admitter: dict[bytes, list[Record]] = {}
        for record in (*self._quarantine.values(), *waiting):
            anchor = _anchor(record)
            assert anchor is not None  # records needing no anchor are stored at once
            by_admitter.setdefault(anchor, []).append(record)
        ready = [identity for identity in by_admitter if identity in self._records]
        while ready:
            for record in by_admitter.pop(ready.pop(), ()):
                if self._store(record, changed) and record.identity in by_admitter:
                    ready.append(record.identity)
        quarantine: dict[bytes, Record] = {}
        for records in by_admitter.values():
            for record in records:
                held = self._records.get(record.identity)
                if held is not None and record.rank <= held.rank:
                    continue  # it could not change the state even once its admitter came
                queued = quarantine.get(record.identity)
                if queued is None or record.rank > queued.rank:
                    quarantine[record.identity] = record
        # by_admitter kept the old entries first, so the oldest are dropped first.
        for identity in list(quarantine)[: max(0, len(quarantine) - MAX_QUARANTINE)]:
            del quarantine[identity]
        self._quarantine = quarantine
        return sum(1 for r in waiting if quarantine.get(r.identity) is r)

    def merge_roster(self, other: Roster) -> MergeResult:
        return self.merge([*other._records.values(), *other._quarantine.values()])

    def ingest(self, values: Iterable[Any]) -> MergeResult:
        """Decode, check and merge records as received from a peer (decoded msgpack values).

        Records identical to the one already held are not verified again. Malformed records and
        records whose signature does not verify are refused and reported, never raised.
        """
        return self.accept(self.check(values))

    def check(self, values: Iterable[Any]) -> CheckedBatch:
        """Decode and verify received records without changing the roster (the slow half of
        :meth:`ingest`; safe on a worker thread while the owner merges: a skipped record is
        one the held state already outranks, and held ranks only grow)."""
        accepted: list[Record] = []
        rejected: list[Rejection] = []
        for value in values:
            try:
                record = build_record(value)
            except InvalidRecord as exc:
                rejected.append(Rejection(detail=str(exc)))
                continue
            current = self._records.get(record.identity)
            if current is not None and current.digest == record.digest:
                continue
            if current is not None and record.rank < current.rank and record.mesh == self.mesh:
                # Lower-ranked: it cannot change the state, so skip the signature work too.
                continue
            try:
                check_record(record)
            except InvalidRecord as exc:
                rejected.append(Rejection(detail=str(exc), identity=record.identity))
                continue
            accepted.append(record)
        return CheckedBatch(records=tuple(accepted), rejected=tuple(rejected))

    def accept(self, batch: CheckedBatch) -> MergeResult:
        """Merge what :meth:`check` verified (on the roster's owner, e.g. the event loop)."""
        result = self.merge(batch.records)
        return MergeResult(
            changed=result.changed,
            rejected=batch.rejected + result.rejected,
            held_back=result.held_back,
        )

    # --- authoring ---------------------------------------------------------------------------

    def chained_members(self) -> list[MemberRecord]:
        """Member records whose admission chain counts (RFC-NOTES §7.4 rule 1), including those
        that lost a WireGuard key or address conflict: what holds an address."""
        broken = {p.identity for p in self.view().problems if p.kind is ProblemKind.BROKEN_CHAIN}
        return [
            r
            for r in self._records.values()
            if isinstance(r, MemberRecord) and r.identity not in broken
        ]

    def allocate_address(self) -> str:
        """The lowest host address no chained member record on this roster claims (a record
        whose chain is broken claims nothing, RFC-NOTES §7.5)."""
        return lowest_free(self.network, [r.address for r in self.chained_members()])

    def admit(
        self,
        sponsor: IdentityKey,
        *,
        name: str,
        identity: bytes,
        wg_key: bytes,
        now: int,
        endpoints: Sequence[str] = (),
        roles: Iterable[str] = (),
        address: str | None = None,
    ) -> MemberRecord:
        """Admit a new member: sign its admission and version-1 entry as its sponsor, at the
        lowest free address unless one is given, and merge it."""
        view = self.view()
        if view.member(sponsor.public) is None:
            raise LocalProtocolError("only a live member whose chain reaches genesis can admit")
        if identity in self._records:
            raise LocalProtocolError(f"{short_id(identity)} is already on the roster")
        admission = sign_admission(
            sponsor, mesh=self.mesh, identity=identity, name=name, admitted_at=now
        )
        record = sign_member(
            sponsor,
            admission=admission,
            wg_key=wg_key,
            address=address if address is not None else self.allocate_address(),
            endpoints=tuple(endpoints),
            roles=tuple(roles),
            version=1,
        )
        self.merge([record])
        return record

    def update_self(
        self,
        key: IdentityKey,
        *,
        endpoints: Sequence[str] | None = None,
        roles: Iterable[str] | None = None,
        address: str | None = None,
        wg_key: bytes | None = None,
    ) -> MemberRecord:
        """Sign and merge the next version of this node's own entry with the given changes."""
        current = self._records.get(key.public)
        if not isinstance(current, MemberRecord):
            raise LocalProtocolError("this node has no live entry on the roster")
        record = sign_member(
            key,
            admission=current.admission,
            wg_key=current.wg_key if wg_key is None else wg_key,
            address=current.address if address is None else address,
            endpoints=current.endpoints if endpoints is None else tuple(endpoints),
            roles=current.roles if roles is None else tuple(roles),
            version=current.version + 1,
        )
        self.merge([record])
        return record

    def readdress_if_needed(self, key: IdentityKey) -> MemberRecord | None:
        """If this node lost an address conflict, move to the suggested address (rule 4)."""
        for problem in self.view().problems_of(key.public):
            if problem.suggested_address is not None:
                return self.update_self(key, address=problem.suggested_address)
        return None

    def remove(self, signer: IdentityKey, identity: bytes, *, now: int) -> Tombstone:
        """Sign and merge a tombstone (by the member itself or the genesis node)."""
        current = self._records.get(identity)
        if current is None or isinstance(current, AdminAct):
            raise LocalProtocolError(f"{short_id(identity)} is not on the roster")
        tombstone = sign_tombstone(signer, admission=current.admission, removed_at=now)
        self.merge([tombstone])
        return tombstone

    # --- admin acts (RFC-NOTES §7.14) ---------------------------------------------------------

    def act(self, signer: IdentityKey, act: ActKind, subject: bytes, *, now: int) -> AdminAct:
        """Sign and merge an admin act; whether it counts is the view's judgement.

        The act is stamped no earlier than the latest time of what counts on this roster (a
        Lamport clock, RFC-NOTES §7.14): an admin whose clock lags the one that granted its
        rights still acts after the grant. Times more than :data:`MAX_CLOCK_LEAD` ahead of
        ``now`` are followed only that far, so a record stamped far in the future cannot drag
        every later act with it."""
        at = max(now, min(self.view().clock, now + MAX_CLOCK_LEAD))
        record = sign_act(signer, mesh=self.mesh, act=act, subject=subject, at=at)
        self.merge([record])
        return record
