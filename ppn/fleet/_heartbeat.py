"""Heartbeats: what a vm-host tells the fleet controller every 10 s, signed by its identity key.

Wire form (RFC-NOTES §8.3): one frame whose payload is the canonical msgpack map
``{"body": bin, "key": bin(32), "sig": bin(64)}``; ``body`` is itself the canonical encoding of
the heartbeat fields and ``sig`` is Ed25519 by ``key`` over ``HEARTBEAT_CONTEXT || body``.
Freshness never comes from the sender's clock: the receiver stamps arrival time itself. Replays
are refused by the (boot id, sequence number) pair, see :class:`ReplayGuard`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from .._errors import RemoteProtocolError
from .._keys import IdentityKey, verify_signature
from ._codec import expect_map, unpack_message
from ._vm import MAX_RAM_MB, VmRecord

__all__ = [
    "BOOT_ID_SIZE",
    "HEARTBEAT_CONTEXT",
    "MAX_HEARTBEAT_SIZE",
    "MAX_VMS",
    "Heartbeat",
    "HeartbeatAuthError",
    "ReplayGuard",
    "SignedHeartbeat",
    "decode_heartbeat",
    "decode_heartbeat_reply",
    "encode_heartbeat",
    "encode_heartbeat_reply",
]

HEARTBEAT_CONTEXT = b"ppn fleet heartbeat v1\x00"
MAX_HEARTBEAT_SIZE = 64 * 1024
BOOT_ID_SIZE = 16
MAX_VMS = 256
MAX_SEQ = 2**63 - 1
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?$")
_NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BODY_FIELDS = (
    "v",
    "node_id",
    "mesh_address",
    "hostname",
    "ram_total_mb",
    "ram_available_mb",
    "cpu_cores",
    "load_milli",
    "kvm",
    "reserved",
    "vms",
    "boot_id",
    "seq",
)


class HeartbeatAuthError(RemoteProtocolError):
    """A heartbeat whose signature does not verify, or whose signer is not a member.

    Deliberately detail-free: the sender learns nothing about which check failed.
    """

    def __init__(self) -> None:
        super().__init__("heartbeat authentication failed")


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """One vm-host's report. RAM in MiB, load as the 1-minute load average times 1000."""

    node_id: str
    mesh_address: str
    hostname: str
    ram_total_mb: int
    ram_available_mb: int
    cpu_cores: int
    load_milli: int
    kvm: bool
    reserved: bool
    vms: tuple[VmRecord, ...] = ()
    boot_id: bytes
    seq: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": 1,
            "node_id": self.node_id,
            "mesh_address": self.mesh_address,
            "hostname": self.hostname,
            "ram_total_mb": self.ram_total_mb,
            "ram_available_mb": self.ram_available_mb,
            "cpu_cores": self.cpu_cores,
            "load_milli": self.load_milli,
            "kvm": self.kvm,
            "reserved": self.reserved,
            "vms": [vm.to_wire() for vm in self.vms],
            "boot_id": self.boot_id,
            "seq": self.seq,
        }

    @classmethod
    def from_wire(cls, value: Any) -> Heartbeat:
        what = "heartbeat"
        m = expect_map(value, what=what, required=_BODY_FIELDS)
        if m.integer("v", 0, 255) != 1:
            raise RemoteProtocolError("heartbeat version is not 1")
        vms = m.items("vms", high=MAX_VMS)
        return cls(
            node_id=m.text("node_id", high=64, pattern=_NODE_ID),
            mesh_address=m.text("mesh_address", high=45),
            hostname=m.text("hostname", high=253, pattern=_HOSTNAME),
            ram_total_mb=m.integer("ram_total_mb", 0, MAX_RAM_MB),
            ram_available_mb=m.integer("ram_available_mb", 0, MAX_RAM_MB),
            cpu_cores=m.integer("cpu_cores", 1, 65535),
            load_milli=m.integer("load_milli", 0, 2**32 - 1),
            kvm=m.boolean("kvm"),
            reserved=m.boolean("reserved"),
            vms=tuple(VmRecord.from_wire(v, what=f"heartbeat.vms[{i}]") for i, v in enumerate(vms)),
            boot_id=m.blob("boot_id", size=BOOT_ID_SIZE),
            seq=m.integer("seq", 0, MAX_SEQ),
        )


@dataclass(frozen=True, kw_only=True)
class SignedHeartbeat:
    """A heartbeat whose signature verified under ``identity`` (membership not yet checked)."""

    heartbeat: Heartbeat
    identity: bytes


def encode_heartbeat(heartbeat: Heartbeat, key: IdentityKey) -> bytes:
    """The signed envelope (a frame payload; frame it with :func:`ppn.wire.encode_frame`)."""
    body = wire.pack_canonical(heartbeat.to_wire())
    signature = key.sign(HEARTBEAT_CONTEXT + body)
    return wire.pack_canonical({"body": body, "key": key.public, "sig": signature})


def decode_heartbeat(payload: bytes) -> SignedHeartbeat:
    """Parse and verify an envelope. Raises RemoteProtocolError (HeartbeatAuthError for crypto)."""
    outer = unpack_message(payload, what="heartbeat envelope", max_size=MAX_HEARTBEAT_SIZE)
    m = expect_map(outer, what="heartbeat envelope", required=("body", "key", "sig"))
    body = m["body"]
    key = m["key"]
    sig = m["sig"]
    if not isinstance(body, bytes) or not isinstance(key, bytes) or not isinstance(sig, bytes):
        raise RemoteProtocolError("heartbeat envelope fields must be bytes")
    # Verify before parsing the body: an unauthenticated body is never interpreted.
    if not verify_signature(key, HEARTBEAT_CONTEXT + body, sig):
        raise HeartbeatAuthError()
    inner = unpack_message(body, what="heartbeat body", max_size=MAX_HEARTBEAT_SIZE)
    return SignedHeartbeat(heartbeat=Heartbeat.from_wire(inner), identity=key)


def encode_heartbeat_reply(*, accepted: bool, reason: str = "") -> bytes:
    """The controller's one-frame answer. Informational only: the sender just logs it."""
    return wire.pack_canonical({"ok": accepted, "reason": reason[:200]})


def decode_heartbeat_reply(payload: bytes) -> tuple[bool, str]:
    what = "heartbeat reply"
    m = expect_map(
        unpack_message(payload, what=what, max_size=1024), what=what, required=("ok", "reason")
    )
    return m.boolean("ok"), m.text("reason", high=200)


@dataclass
class _Progress:
    boot_id: bytes
    seq: int
    retired: deque[bytes] = field(default_factory=deque)


class ReplayGuard:
    """Refuses a heartbeat that is not newer than the last one accepted from the same signer.

    Within one boot the sequence number must strictly increase. A boot id never seen before from
    that signer starts a new boot (its sequence restarts anywhere); the previous boot ids are
    retired and refused from then on, so a recording from before a reboot cannot be replayed.
    Only the last ``retired_limit`` boot ids per signer are remembered (RFC-NOTES §8.3.1).
    """

    def __init__(self, *, retired_limit: int = 1024) -> None:
        self._progress: dict[bytes, _Progress] = {}
        self._retired_limit = retired_limit

    # --- persistence (RFC-NOTES §8.3.1: the state survives a controller restart) ------------

    def to_value(self) -> dict[str, Any]:
        """The whole state as a canonical-msgpack-ready map (the adapter writes it to disk)."""
        return {
            "v": 1,
            "signers": [
                [key, p.boot_id, p.seq, list(p.retired)]
                for key, p in sorted(self._progress.items())
            ],
        }

    @classmethod
    def from_value(cls, value: Any, *, retired_limit: int = 1024) -> ReplayGuard:
        """Rebuild from :meth:`to_value`; raises RemoteProtocolError if it is malformed."""
        m = expect_map(value, what="replay state", required=("v", "signers"))
        if m.integer("v", 0, 255) != 1:
            raise RemoteProtocolError("replay state version is not 1")
        guard = cls(retired_limit=retired_limit)
        for entry in m.items("signers", high=1 << 20):
            if not (isinstance(entry, list) and len(entry) == 4):
                raise RemoteProtocolError("a replay state entry is [key, boot, seq, retired]")
            key, boot_id, seq, retired = entry
            if (
                not (isinstance(key, bytes) and len(key) == 32)
                or not (isinstance(boot_id, bytes) and len(boot_id) == BOOT_ID_SIZE)
                or not (type(seq) is int and 0 <= seq <= MAX_SEQ)
                or not isinstance(retired, list)
                or not all(isinstance(b, bytes) and len(b) == BOOT_ID_SIZE for b in retired)
            ):
                raise RemoteProtocolError("a replay state entry is malformed")
            guard._progress[key] = _Progress(
                boot_id=boot_id, seq=seq, retired=deque(retired[-retired_limit:])
            )
        return guard

    def check(self, identity: bytes, boot_id: bytes, seq: int) -> None:
        """Raise RemoteProtocolError if this heartbeat would be a replay; do not record it."""
        progress = self._progress.get(identity)
        if progress is None:
            return
        if boot_id == progress.boot_id:
            if seq <= progress.seq:
                raise RemoteProtocolError("stale heartbeat: sequence number did not increase")
        elif boot_id in progress.retired:
            raise RemoteProtocolError("stale heartbeat: from a boot that has since ended")

    def record(self, identity: bytes, boot_id: bytes, seq: int) -> None:
        """Remember an accepted heartbeat (call after :meth:`check` passed)."""
        progress = self._progress.get(identity)
        if progress is None:
            self._progress[identity] = _Progress(boot_id=boot_id, seq=seq)
            return
        if boot_id != progress.boot_id:
            progress.retired.append(progress.boot_id)
            while len(progress.retired) > self._retired_limit:
                progress.retired.popleft()
            progress.boot_id = boot_id
        progress.seq = seq
