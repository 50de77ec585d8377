"""The roster store: one winning record per identity, merged as a join-semilattice.

State is a map from identity key to that identity's highest-ranked checked record. Ranks are a
total order (RFC-NOTES §7.3): any tombstone outranks any member record; member records compare by
version, then self-signed over admitter-signed, then record hash; tombstones by record hash.
Merging keeps the higher rank per identity, so merge is commutative, associative and idempotent,
and any two members that saw the same records hold the same state — and, because the view is a
pure function of the state, the same members.

Sans-IO: no clocks (``now`` is an argument), no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._addressing import MeshNetwork, first_host, lowest_free, parse_cidr
from ._ids import mesh_id, short_id
from ._records import (
    InvalidRecord,
    MemberRecord,
    Record,
    Tombstone,
    build_record,
    check_record,
    sign_admission,
    sign_member,
    sign_tombstone,
)
from ._view import RosterView, compute_view

__all__ = ["MergeResult", "Rejection", "Roster"]

_DIGEST_LABEL = b"PPN-v1 roster digest\x00"


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

    @property
    def has_changes(self) -> bool:
        return bool(self.changed)


class Roster:
    """The set of roster records one node holds for one mesh."""

    def __init__(
        self, *, mesh: bytes, network: MeshNetwork | str, records: Iterable[Record] = ()
    ) -> None:
        self.mesh = mesh
        self.network = parse_cidr(network) if isinstance(network, str) else network
        self._records: dict[bytes, Record] = {}
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
        return Roster(mesh=self.mesh, network=self.network, records=self._records.values())

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

    def compare(self, summary: Iterable[tuple[bytes, bytes]]) -> tuple[list[Record], list[bytes]]:
        """Given a peer's summary: the records to send it (it lacks them or holds a different
        one) and the identities to ask it for (we lack them or hold a different one).

        A differing pair goes both ways; each side's merge keeps the higher rank, so the
        exchange converges whichever is higher.
        """
        theirs = dict(summary)
        send = [r for k, r in sorted(self._records.items()) if theirs.get(k) != r.digest]
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
        """Merge checked records (from :func:`decode_record` or the ``sign_*`` helpers)."""
        changed: dict[bytes, Record] = {}
        rejected: list[Rejection] = []
        for record in records:
            if not record.checked:
                raise LocalProtocolError("merge() takes only checked records; use ingest()")
            if record.mesh != self.mesh:
                rejected.append(
                    Rejection(detail="the record belongs to another mesh", identity=record.identity)
                )
                continue
            current = self._records.get(record.identity)
            if current is None or record.rank > current.rank:
                self._records[record.identity] = record
                changed[record.identity] = record
        if changed:
            self._digest = None
            self._view = None
        return MergeResult(changed=tuple(changed.values()), rejected=tuple(rejected))

    def merge_roster(self, other: Roster) -> MergeResult:
        return self.merge(other._records.values())

    def ingest(self, values: Iterable[Any]) -> MergeResult:
        """Decode, check and merge records as received from a peer (decoded msgpack values).

        Records identical to the one already held are not verified again. Malformed records and
        records whose signature does not verify are refused and reported, never raised.
        """
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
        result = self.merge(accepted)
        return MergeResult(changed=result.changed, rejected=tuple(rejected) + result.rejected)

    # --- authoring ---------------------------------------------------------------------------

    def allocate_address(self) -> str:
        """The lowest host address no member record on this roster claims."""
        taken = [r.address for r in self._records.values() if isinstance(r, MemberRecord)]
        return lowest_free(self.network, taken)

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
        if current is None:
            raise LocalProtocolError(f"{short_id(identity)} is not on the roster")
        tombstone = sign_tombstone(signer, admission=current.admission, removed_at=now)
        self.merge([tombstone])
        return tombstone
