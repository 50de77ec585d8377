"""Key rotation, sans-IO: the records ``ppn rotate`` signs and the handover that follows.

A new key is staged in the state directory before anything is signed with it, and this node
starts using it only once the mesh has the record that names it (RFC-NOTES §7.15): every
peer learns a member's keys through PPN control, which runs inside the tunnel, so a node that
switched first could no longer tell anyone. :class:`Handover` decides, attempt by attempt,
which key to deliver the record with; the adapter (:mod:`ppn.mesh._trio_agent`) does the
pushing, the file promotion and the device change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .._errors import LocalProtocolError
from .._keys import IdentityKey
from ._ids import mesh_id
from ._records import MemberRecord, Rotation, sign_admission, sign_member, sign_rotation
from ._roster import Roster

__all__ = [
    "HANDOVER_RETRY",
    "Handover",
    "KeyStatus",
    "RotationRefusal",
    "RotationRefused",
    "identity_rotation_pending",
    "sign_identity_rotation",
    "sign_wireguard_rotation",
    "wireguard_key_status",
]

# Seconds between two delivery attempts of a rotation record that no member acknowledged.
HANDOVER_RETRY = 3.0


class RotationRefusal(Enum):
    NOT_MEMBER = "not-member"  # this node has no live entry on its signed roster
    GENESIS = "genesis"  # the genesis node's identity names the mesh: it is not rotated
    PENDING = "pending"  # an earlier rotation of the same key is not handed over yet


class RotationRefused(LocalProtocolError):
    """A rotation cannot be signed here; ``kind`` says why, the message says it to a user."""

    def __init__(self, message: str, *, kind: RotationRefusal) -> None:
        super().__init__(message)
        self.kind = kind


def _own_live_record(roster: Roster, key: IdentityKey) -> MemberRecord:
    member = roster.view().member(key.public)
    if member is None:
        raise RotationRefused(
            "this node has no live entry on its signed roster (run 'ppn up' first, or it was "
            "removed)",
            kind=RotationRefusal.NOT_MEMBER,
        )
    return member.record


def sign_wireguard_rotation(roster: Roster, key: IdentityKey, new_wg_key: bytes) -> MemberRecord:
    """Sign and merge this node's next version naming ``new_wg_key`` (everything else kept)."""
    current = _own_live_record(roster, key)
    if current.wg_key == new_wg_key:
        raise LocalProtocolError("the new WireGuard key is the current one")
    return roster.update_self(key, wg_key=new_wg_key)


def sign_identity_rotation(
    roster: Roster, old: IdentityKey, new: IdentityKey, *, now: int
) -> tuple[Rotation, MemberRecord]:
    """Sign and merge the move of ``old`` to ``new`` (RFC-NOTES §7.15): the rotation record
    (signed by both) and the successor's first entry — admitted by the old identity under the
    same name and admission time, self-signed by the new one, with the same WireGuard key,
    address, endpoints and roles."""
    current = _own_live_record(roster, old)
    if mesh_id(old.public) == roster.mesh:
        raise RotationRefused(
            "this is the genesis node: its identity key names the mesh (the mesh id derives "
            "from it) and is not rotated",
            kind=RotationRefusal.GENESIS,
        )
    if new.public in roster:
        raise LocalProtocolError("the new identity key is already on the roster")
    admission = current.admission
    rotation = sign_rotation(
        old, new, admission=admission, rotated_at=max(now, admission.admitted_at)
    )
    successor = sign_member(
        new,
        admission=sign_admission(
            old,
            mesh=roster.mesh,
            identity=new.public,
            name=admission.name,
            admitted_at=admission.admitted_at,
        ),
        wg_key=current.wg_key,
        address=current.address,
        endpoints=current.endpoints,
        roles=current.roles,
        version=1,
    )
    roster.merge([rotation, successor])
    return rotation, successor


class KeyStatus(Enum):
    """What this node's signed record says about its WireGuard key files."""

    CURRENT = "current"  # the record names wireguard.key (a staged key, if any, is unused)
    PENDING = "pending"  # the record names the staged key: hand it over, then promote
    UNSIGNED = "unsigned"  # no own record (not admitted yet): wireguard.key, as the ceremony set


def wireguard_key_status(
    roster: Roster, identity: bytes, *, current: bytes, staged: bytes | None
) -> KeyStatus:
    """Which of this node's WireGuard keys its own latest record names (public keys given)."""
    record = roster.get(identity)
    if not isinstance(record, MemberRecord):
        return KeyStatus.UNSIGNED
    if staged is not None and record.wg_key == staged and staged != current:
        return KeyStatus.PENDING
    return KeyStatus.CURRENT


def identity_rotation_pending(
    roster: Roster, identity: bytes, *, staged: bytes | None
) -> Rotation | None:
    """This node's rotation record when it names the staged identity key (signed, not yet
    promoted: hand it over, then promote and restart as the successor); else None."""
    record = roster.get(identity)
    if isinstance(record, Rotation) and staged is not None and record.successor == staged:
        return record
    return None


@dataclass
class Handover:
    """Delivery of a rotation record before the switch to the key it names.

    The record is pushed to every live member while the device still uses the old key; one
    acknowledgement means the mesh has it (the others learn it by anti-entropy from whoever
    acknowledged), so the node promotes the new key and switches. When an attempt reaches no
    one, the next one is made with the *new* key: a node that crashed after its members took
    the record but before it promoted the key finds them only that way. Attempts alternate
    until one is acknowledged, so neither crash window locks the node out.
    """

    attempts: int = 0
    done: bool = False

    def use_new_key(self) -> bool:
        """Whether the next attempt runs with the new key on the device."""
        return self.attempts % 2 == 1

    def attempt_finished(self, *, delivered: bool) -> bool:
        """Record an attempt's outcome; True when the new key is to be promoted now."""
        self.attempts += 1
        if delivered:
            self.done = True
        return self.done


def is_genesis_identity(roster: Roster, identity: bytes) -> bool:
    return mesh_id(identity) == roster.mesh
