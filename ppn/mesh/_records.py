"""Roster records: admissions, member entries and tombstones, their encoding and signatures.

A record is judged on its own here (signatures, field formats, who may sign what); whether its
admission chain reaches the genesis node depends on the other records and is judged by
:mod:`ppn.mesh._view`. Keeping record validity local is what makes the roster merge a plain
join-semilattice (RFC-NOTES §7.2–7.4).

Signature inputs are ``label || pack_canonical(map without "sig")`` with a distinct label per
record type, so a signature made for one purpose never verifies for another.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .. import wire
from .._errors import LocalProtocolError, RemoteProtocolError
from .._keys import IdentityKey, verify_signature
from ._ids import ID_SIZE, mesh_id, node_id

__all__ = [
    "ACT_LABEL",
    "ROTATION_LABEL",
    "ADMISSION_LABEL",
    "act_slot",
    "MEMBER_LABEL",
    "TOMBSTONE_LABEL",
    "ACTS",
    "ActKind",
    "AdminAct",
    "Rotation",
    "Admission",
    "InvalidRecord",
    "MemberRecord",
    "Record",
    "Tombstone",
    "build_record",
    "check_record",
    "decode_record",
    "encode_record",
    "parse_endpoint",
    "record_from_bytes",
    "sign_act",
    "sign_admission",
    "sign_member",
    "sign_rotation",
    "sign_tombstone",
    "validate_name",
]

ADMISSION_LABEL = b"PPN-v1 roster admission\x00"
MEMBER_LABEL = b"PPN-v1 roster member\x00"
TOMBSTONE_LABEL = b"PPN-v1 roster tombstone\x00"
ACT_LABEL = b"PPN-v1 roster act\x00"

MAX_ENDPOINTS = 8
MAX_ROLES = 8
MAX_RECORD_SIZE = 4096
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_U64 = 2**64


class InvalidRecord(RemoteProtocolError):
    """A roster record that is malformed or whose signature does not verify.

    The message is one short sentence naming which rule failed; for a signature it says only
    that it did not verify (no detail).
    """


def validate_name(name: str) -> str:
    """A member name is one lower-case DNS label (1–63 of a-z, 0-9, '-', no '-' at either end)."""
    if not isinstance(name, str) or not _LABEL_RE.fullmatch(name):
        raise InvalidRecord("a member name is one lower-case DNS label")
    return name


def parse_endpoint(text: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into (host, port), rejecting non-canonical forms."""
    if not isinstance(text, str) or len(text) > 262:
        raise InvalidRecord("an endpoint is host:port")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or str(int(port_text)) != port_text:
        raise InvalidRecord("an endpoint is host:port with a decimal port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise InvalidRecord("an endpoint port is 1-65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidRecord("an IPv6 endpoint is [address]:port")
        try:
            v6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise InvalidRecord("an IPv6 endpoint is [address]:port") from exc
        if str(v6) != host[1:-1]:
            raise InvalidRecord("an IPv6 endpoint address must be in canonical form")
        return host[1:-1], port
    try:
        v4 = ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOST_RE.fullmatch(host) or host.replace(".", "").isdigit():
            raise InvalidRecord("an endpoint host is an address or a host name") from None
        return host, port
    if str(v4) != host:
        raise InvalidRecord("an endpoint address must be in canonical form")
    return host, port


def _check_address(text: str) -> None:
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError as exc:
        raise InvalidRecord("a mesh address is an IP address") from exc
    if str(parsed) != text:
        raise InvalidRecord("a mesh address must be in canonical form")


def _record_hash(encoded: bytes) -> bytes:
    return hashlib.sha512(b"PPN-v1 roster record\x00" + encoded).digest()[:32]


@dataclass(frozen=True, kw_only=True)
class Admission:
    """The admitter's statement that ``identity`` joined mesh ``mesh`` under ``name``.

    The genesis node admits itself (``admitter == identity`` and ``mesh == mesh_id(identity)``);
    every other admission names the member who sponsored it.
    """

    mesh: bytes
    identity: bytes
    name: str
    admitter: bytes
    admitted_at: int
    signature: bytes = field(repr=False)

    def signed_fields(self) -> dict[str, Any]:
        return {
            "admitted_at": self.admitted_at,
            "admitter": self.admitter,
            "identity": self.identity,
            "mesh": self.mesh,
            "name": self.name,
        }

    def to_value(self) -> dict[str, Any]:
        return {**self.signed_fields(), "sig": self.signature}

    @property
    def is_genesis(self) -> bool:
        return self.admitter == self.identity


@dataclass(frozen=True, kw_only=True)
class _RecordBase:
    admission: Admission
    signer: bytes
    signature: bytes = field(repr=False)
    encoded: bytes = field(init=False, repr=False, compare=False)
    digest: bytes = field(init=False, repr=False, compare=False)
    # Set by _check_record only: a Roster accepts nothing that was not checked.
    checked: bool = field(init=False, default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoded = wire.pack_canonical(self.to_value())
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(self, "digest", _record_hash(encoded))

    def to_value(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def identity(self) -> bytes:
        return self.admission.identity

    @property
    def node_id(self) -> bytes:
        return node_id(self.admission.identity)

    @property
    def name(self) -> str:
        return self.admission.name

    @property
    def mesh(self) -> bytes:
        return self.admission.mesh


@dataclass(frozen=True, kw_only=True)
class MemberRecord(_RecordBase):
    """One version of a live member's entry.

    Signed by the member itself (any version) or, for version 1 only, by its admitter: a sponsor
    publishes the joiner's first entry; after that only the member's own key changes it.
    """

    wg_key: bytes
    address: str
    endpoints: tuple[str, ...]
    roles: tuple[str, ...]
    version: int

    def signed_fields(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "admission": self.admission.to_value(),
            "endpoints": list(self.endpoints),
            "roles": list(self.roles),
            "signer": self.signer,
            "type": "member",
            "version": self.version,
            "wg_key": self.wg_key,
        }

    def to_value(self) -> dict[str, Any]:
        return {**self.signed_fields(), "sig": self.signature}

    @property
    def rank(self) -> tuple[int, int, int, bytes]:
        return (0, self.version, int(self.signer == self.identity), self.digest)


@dataclass(frozen=True, kw_only=True)
class Tombstone(_RecordBase):
    """The final record of a member: signed by the member itself or by the genesis node."""

    removed_at: int

    def signed_fields(self) -> dict[str, Any]:
        return {
            "admission": self.admission.to_value(),
            "removed_at": self.removed_at,
            "signer": self.signer,
            "type": "tombstone",
        }

    def to_value(self) -> dict[str, Any]:
        return {**self.signed_fields(), "sig": self.signature}

    @property
    def rank(self) -> tuple[int, int, int, bytes]:
        return (1, 0, 0, self.digest)


# --- admin acts (RFC-NOTES §7.14) ---------------------------------------------------------------


class ActKind(Enum):
    """What an admin act does to its subject."""

    GRANT_ADMIN = "grant-admin"
    REVOKE_ADMIN = "revoke-admin"
    REMOVE = "remove"


ACTS = {kind.value: kind for kind in ActKind}
_ACT_SLOT_LABEL = b"PPN-v1 roster act slot\x00"


@dataclass(frozen=True, kw_only=True)
class AdminAct:
    """An admin's signed act on a member: grant or revoke admin rights, or remove it.

    Whether the signer *was* an admin when it acted depends on the other records, so the view
    judges that (RFC-NOTES §7.14); here only the signature and the fields are checked, which
    keeps record validity local and the merge a join-semilattice. An act never replaces another
    record: it is stored under its own slot (keyed by all it says), so a signer without the
    right cannot overwrite anything by signing one, and a later act never erases an earlier.
    """

    mesh: bytes
    act: ActKind
    subject: bytes
    at: int
    signer: bytes
    signature: bytes = field(repr=False)
    encoded: bytes = field(init=False, repr=False, compare=False)
    digest: bytes = field(init=False, repr=False, compare=False)
    checked: bool = field(init=False, default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoded = wire.pack_canonical(self.to_value())
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(self, "digest", _record_hash(encoded))

    def signed_fields(self) -> dict[str, Any]:
        return {
            "act": self.act.value,
            "at": self.at,
            "mesh": self.mesh,
            "signer": self.signer,
            "subject": self.subject,
            "type": "act",
        }

    def to_value(self) -> dict[str, Any]:
        return {**self.signed_fields(), "sig": self.signature}

    @property
    def identity(self) -> bytes:
        """The roster's key for this record: the act's slot, not anyone's identity."""
        return act_slot(self.act, self.subject, self.signer, self.at)

    @property
    def rank(self) -> tuple[int, int, int, bytes]:
        # A slot holds one act (its fields are the key); the hash only makes the order total.
        return (2, self.at, 0, self.digest)


def act_slot(act: ActKind, subject: bytes, signer: bytes, at: int) -> bytes:
    """Where the roster keeps an act: its own slot, keyed by everything it says, so no act
    replaces another (a later grant does not erase the period of an earlier one)."""
    fields = act.value.encode() + subject + signer + at.to_bytes(8, "big")
    return hashlib.sha256(_ACT_SLOT_LABEL + fields).digest()


# --- identity rotation (RFC-NOTES §7.15) ------------------------------------------------------

ROTATION_LABEL = b"PPN-v1 roster rotation\x00"


@dataclass(frozen=True, kw_only=True)
class Rotation(_RecordBase):
    """A member's move to a new identity key: the old identity's final record, signed by the
    old key (``signature``) and the new one (``successor_signature``) over the same bytes.

    The successor is admitted by the old identity under the same name and admission time, so
    the chain through the old identity goes on; the view cuts the old identity's admissions
    off at ``rotated_at`` as a removal would. Ranked above every member record (an older
    version cannot bring the old identity back) and below every tombstone (a removal stays
    final: a key that was removed cannot rotate itself back in)."""

    successor: bytes
    rotated_at: int
    successor_signature: bytes = field(repr=False)

    def signed_fields(self) -> dict[str, Any]:
        return {
            "admission": self.admission.to_value(),
            "rotated_at": self.rotated_at,
            "signer": self.signer,
            "successor": self.successor,
            "type": "rotation",
        }

    def to_value(self) -> dict[str, Any]:
        return {
            **self.signed_fields(),
            "sig": self.signature,
            "successor_sig": self.successor_signature,
        }

    @property
    def rank(self) -> tuple[int, int, int, bytes]:
        return (1, -1, 0, self.digest)  # above (0, …) members, below (1, 0, …) tombstones


def sign_rotation(
    old: IdentityKey, new: IdentityKey, *, admission: Admission, rotated_at: int
) -> Rotation:
    """The rotation record of ``old`` (whose admission is ``admission``) to ``new``."""
    fields = {
        "admission": admission.to_value(),
        "rotated_at": rotated_at,
        "signer": old.public,
        "successor": new.public,
        "type": "rotation",
    }
    message = ROTATION_LABEL + wire.pack_canonical(fields)
    record = Rotation(
        admission=admission,
        successor=new.public,
        rotated_at=rotated_at,
        signer=old.public,
        signature=old.sign(message),
        successor_signature=new.sign(message),
    )
    _authored(_check_record, record)
    return record


def _check_rotation(record: Rotation) -> None:
    adm = record.admission
    if record.signer != adm.identity:
        raise InvalidRecord("a rotation is signed by the member itself")
    if mesh_id(adm.identity) == adm.mesh:
        raise InvalidRecord("the genesis node's identity names the mesh and is not rotated")
    if len(record.successor) != 32 or record.successor == adm.identity:
        raise InvalidRecord("a rotation names a new 32-byte identity key")
    if mesh_id(record.successor) == adm.mesh:
        raise InvalidRecord("the genesis identity is nobody's successor")
    if not adm.admitted_at <= record.rotated_at < _U64:
        raise InvalidRecord("a rotation time is no earlier than the admission")
    if len(record.encoded) > MAX_RECORD_SIZE:
        raise InvalidRecord(f"a record is at most {MAX_RECORD_SIZE} bytes")
    message = ROTATION_LABEL + wire.pack_canonical(record.signed_fields())
    if not verify_signature(record.signer, message, record.signature) or not verify_signature(
        record.successor, message, record.successor_signature
    ):
        raise InvalidRecord("a roster signature did not verify")


Record = MemberRecord | Tombstone | AdminAct | Rotation


# --- signing -----------------------------------------------------------------------------------


def sign_admission(
    admitter: IdentityKey, *, mesh: bytes, identity: bytes, name: str, admitted_at: int
) -> Admission:
    fields = {
        "admitted_at": admitted_at,
        "admitter": admitter.public,
        "identity": identity,
        "mesh": mesh,
        "name": name,
    }
    sig = admitter.sign(ADMISSION_LABEL + wire.pack_canonical(fields))
    admission = Admission(
        mesh=mesh,
        identity=identity,
        name=name,
        admitter=admitter.public,
        admitted_at=admitted_at,
        signature=sig,
    )
    _authored(_check_admission, admission)
    return admission


def sign_member(
    signer: IdentityKey,
    *,
    admission: Admission,
    wg_key: bytes,
    address: str,
    endpoints: tuple[str, ...] | list[str],
    roles: tuple[str, ...] | list[str] | set[str] | frozenset[str],
    version: int,
) -> MemberRecord:
    fields = {
        "address": address,
        "admission": admission.to_value(),
        "endpoints": list(endpoints),
        "roles": sorted(set(roles)),
        "signer": signer.public,
        "type": "member",
        "version": version,
        "wg_key": wg_key,
    }
    sig = signer.sign(MEMBER_LABEL + wire.pack_canonical(fields))
    record = MemberRecord(
        admission=admission,
        wg_key=wg_key,
        address=address,
        endpoints=tuple(endpoints),
        roles=tuple(sorted(set(roles))),
        version=version,
        signer=signer.public,
        signature=sig,
    )
    _authored(_check_record, record)
    return record


def sign_tombstone(signer: IdentityKey, *, admission: Admission, removed_at: int) -> Tombstone:
    fields = {
        "admission": admission.to_value(),
        "removed_at": removed_at,
        "signer": signer.public,
        "type": "tombstone",
    }
    sig = signer.sign(TOMBSTONE_LABEL + wire.pack_canonical(fields))
    record = Tombstone(
        admission=admission, removed_at=removed_at, signer=signer.public, signature=sig
    )
    _authored(_check_record, record)
    return record


def sign_act(
    signer: IdentityKey, *, mesh: bytes, act: ActKind, subject: bytes, at: int
) -> AdminAct:
    """Sign an admin act (RFC-NOTES §7.14); whether it counts is the view's business."""
    fields = {
        "act": act.value,
        "at": at,
        "mesh": mesh,
        "signer": signer.public,
        "subject": subject,
        "type": "act",
    }
    sig = signer.sign(ACT_LABEL + wire.pack_canonical(fields))
    record = AdminAct(
        mesh=mesh, act=act, subject=subject, at=at, signer=signer.public, signature=sig
    )
    _authored(_check_record, record)
    return record


def _authored(check: Callable[[Any], None], thing: Any) -> None:
    """Run a record check on something we are signing: a failure is the caller's mistake."""
    try:
        check(thing)
    except InvalidRecord as exc:
        raise LocalProtocolError(str(exc)) from None


# --- checking and decoding ---------------------------------------------------------------------


def _check_admission(adm: Admission) -> None:
    if len(adm.mesh) != ID_SIZE or len(adm.identity) != 32 or len(adm.admitter) != 32:
        raise InvalidRecord("an admission has a malformed key or mesh id")
    validate_name(adm.name)
    if not 0 <= adm.admitted_at < _U64:
        raise InvalidRecord("an admission time is a non-negative integer")
    if adm.is_genesis and mesh_id(adm.identity) != adm.mesh:
        raise InvalidRecord("only the genesis node admits itself")
    if not adm.is_genesis and mesh_id(adm.identity) == adm.mesh:
        raise InvalidRecord("the genesis node can only be admitted by itself")
    message = ADMISSION_LABEL + wire.pack_canonical(adm.signed_fields())
    if not verify_signature(adm.admitter, message, adm.signature):
        raise InvalidRecord("a roster signature did not verify")


def _check_act(record: AdminAct) -> None:
    if len(record.mesh) != ID_SIZE or len(record.subject) != 32 or len(record.signer) != 32:
        raise InvalidRecord("an admin act has a malformed key or mesh id")
    if not 0 <= record.at < _U64:
        raise InvalidRecord("an act time is a non-negative integer")
    genesis_subject = mesh_id(record.subject) == record.mesh
    if record.act is ActKind.GRANT_ADMIN and record.subject == record.signer:
        raise InvalidRecord("an admin cannot grant itself admin rights")
    if record.act is ActKind.REMOVE and record.subject == record.signer:
        raise InvalidRecord("a member removes itself with a tombstone, not an act")
    if record.act is not ActKind.REMOVE and genesis_subject:
        raise InvalidRecord("the genesis node is an admin by definition")
    if len(record.encoded) > MAX_RECORD_SIZE:
        raise InvalidRecord(f"a record is at most {MAX_RECORD_SIZE} bytes")
    message = ACT_LABEL + wire.pack_canonical(record.signed_fields())
    if not verify_signature(record.signer, message, record.signature):
        raise InvalidRecord("a roster signature did not verify")
    object.__setattr__(record, "checked", True)


def _check_record(record: Record) -> None:
    if isinstance(record, AdminAct):
        _check_act(record)
        return
    _check_admission(record.admission)
    adm = record.admission
    if len(record.signer) != 32:
        raise InvalidRecord("a record signer is a 32-byte key")
    if isinstance(record, Rotation):
        _check_rotation(record)
        object.__setattr__(record, "checked", True)
        return
    if isinstance(record, MemberRecord):
        if len(record.wg_key) != 32:
            raise InvalidRecord("a WireGuard key is 32 bytes")
        _check_address(record.address)
        if len(record.endpoints) > MAX_ENDPOINTS or len(set(record.endpoints)) != len(
            record.endpoints
        ):
            raise InvalidRecord(f"a member lists at most {MAX_ENDPOINTS} distinct endpoints")
        for endpoint in record.endpoints:
            parse_endpoint(endpoint)
        if len(record.roles) > MAX_ROLES or list(record.roles) != sorted(set(record.roles)):
            raise InvalidRecord(f"roles are at most {MAX_ROLES} distinct labels, sorted")
        for role in record.roles:
            if not _LABEL_RE.fullmatch(role):
                raise InvalidRecord("a role is one lower-case DNS label")
        if not 1 <= record.version < _U64:
            raise InvalidRecord("a member version is a positive integer")
        if record.signer == adm.identity:
            pass
        elif record.signer == adm.admitter:
            if record.version != 1:
                raise InvalidRecord("an admitter signs only version 1 of a member")
        else:
            raise InvalidRecord("a member record is signed by the member or its admitter")
        label = MEMBER_LABEL
    else:
        if not 0 <= record.removed_at < _U64:
            raise InvalidRecord("a removal time is a non-negative integer")
        if record.signer != adm.identity and mesh_id(record.signer) != adm.mesh:
            raise InvalidRecord("a tombstone is signed by the member or the genesis node")
        label = TOMBSTONE_LABEL
    if len(record.encoded) > MAX_RECORD_SIZE:
        raise InvalidRecord(f"a record is at most {MAX_RECORD_SIZE} bytes")
    if not verify_signature(
        record.signer, label + wire.pack_canonical(record.signed_fields()), record.signature
    ):
        raise InvalidRecord("a roster signature did not verify")
    object.__setattr__(record, "checked", True)


def encode_record(record: Record) -> bytes:
    """The canonical msgpack bytes of a record (what is stored and sent)."""
    return record.encoded


def _expect_map(value: Any, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise InvalidRecord("a roster record has missing or unknown fields")
    return value


def _expect(value: Any, kind: type, what: str) -> Any:
    if type(value) is not kind:
        raise InvalidRecord(f"{what} has the wrong type")
    return value


def _decode_admission(value: Any) -> Admission:
    m = _expect_map(value, {"admitted_at", "admitter", "identity", "mesh", "name", "sig"})
    return Admission(
        mesh=_expect(m["mesh"], bytes, "mesh"),
        identity=_expect(m["identity"], bytes, "identity"),
        name=_expect(m["name"], str, "name"),
        admitter=_expect(m["admitter"], bytes, "admitter"),
        admitted_at=_expect(m["admitted_at"], int, "admitted_at"),
        signature=_expect(m["sig"], bytes, "sig"),
    )


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 16:
        raise InvalidRecord(f"{what} is a short list")
    return tuple(_expect(v, str, what) for v in value)


def decode_record(value: Any) -> Record:
    """Build and fully check a record from its decoded msgpack value.

    Raises :class:`InvalidRecord` for anything malformed or any signature that does not verify.
    """
    record = build_record(value)
    check_record(record)
    return record


def build_record(value: Any) -> Record:
    """Build a record from its decoded msgpack value, checking shape and types only.

    The result is not yet trusted: pass it to :func:`check_record` (which verifies signatures)
    before use. Splitting the two lets a roster skip verification of a record it already holds.
    """
    if not isinstance(value, dict):
        raise InvalidRecord("a roster record is a map")
    kind = value.get("type")
    record: Record
    try:
        if kind == "member":
            m = _expect_map(
                value,
                {
                    "address",
                    "admission",
                    "endpoints",
                    "roles",
                    "signer",
                    "type",
                    "version",
                    "wg_key",
                    "sig",
                },
            )
            record = MemberRecord(
                admission=_decode_admission(m["admission"]),
                wg_key=_expect(m["wg_key"], bytes, "wg_key"),
                address=_expect(m["address"], str, "address"),
                endpoints=_str_list(m["endpoints"], "endpoints"),
                roles=_str_list(m["roles"], "roles"),
                version=_expect(m["version"], int, "version"),
                signer=_expect(m["signer"], bytes, "signer"),
                signature=_expect(m["sig"], bytes, "sig"),
            )
        elif kind == "tombstone":
            m = _expect_map(value, {"admission", "removed_at", "signer", "type", "sig"})
            record = Tombstone(
                admission=_decode_admission(m["admission"]),
                removed_at=_expect(m["removed_at"], int, "removed_at"),
                signer=_expect(m["signer"], bytes, "signer"),
                signature=_expect(m["sig"], bytes, "sig"),
            )
        elif kind == "act":
            m = _expect_map(value, {"act", "at", "mesh", "signer", "subject", "type", "sig"})
            act = ACTS.get(_expect(m["act"], str, "act"))
            if act is None:
                raise InvalidRecord("an act is grant-admin, revoke-admin or remove")
            if not 0 <= _expect(m["at"], int, "at") < _U64:
                # Checked before the record exists: its slot key packs the time in 8 bytes.
                raise InvalidRecord("an act time is a non-negative integer")
            record = AdminAct(
                mesh=_expect(m["mesh"], bytes, "mesh"),
                act=act,
                subject=_expect(m["subject"], bytes, "subject"),
                at=_expect(m["at"], int, "at"),
                signer=_expect(m["signer"], bytes, "signer"),
                signature=_expect(m["sig"], bytes, "sig"),
            )
        elif kind == "rotation":
            m = _expect_map(
                value,
                {"admission", "rotated_at", "signer", "successor", "type", "sig", "successor_sig"},
            )
            record = Rotation(
                admission=_decode_admission(m["admission"]),
                successor=_expect(m["successor"], bytes, "successor"),
                rotated_at=_expect(m["rotated_at"], int, "rotated_at"),
                signer=_expect(m["signer"], bytes, "signer"),
                signature=_expect(m["sig"], bytes, "sig"),
                successor_signature=_expect(m["successor_sig"], bytes, "successor_sig"),
            )
        else:
            raise InvalidRecord("a roster record is a member, a tombstone, an act or a rotation")
    except wire.EncodingError as exc:
        raise InvalidRecord("a roster record has no canonical encoding") from exc
    return record


def check_record(record: Record) -> None:
    """Verify a record's fields and signatures; raises :class:`InvalidRecord` if any fails."""
    if not record.checked:
        _check_record(record)


def record_from_bytes(data: bytes) -> Record:
    """Decode one record from its canonical bytes (as stored in a state file)."""
    try:
        value = wire.unpack_canonical(data, max_size=MAX_RECORD_SIZE)
    except wire.EncodingError as exc:
        raise InvalidRecord("a roster record is not canonical msgpack") from exc
    return decode_record(value)
