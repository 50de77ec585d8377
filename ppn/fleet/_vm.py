"""What a VM is to the fleet: the spec an operator asks for and the record a vm-host reports.

The fleet never launches a VM itself: a node's provisioner command does (QEMU on the platform).
These types only carry what placement, dispatch and status need (RFC-NOTES §8.2).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import wire
from .._errors import LocalProtocolError, RemoteProtocolError
from ._codec import Fields, expect_map

__all__ = [
    "MAX_RAM_MB",
    "MAX_VCPUS",
    "REQUEST_ID_SIZE",
    "SETTLED_STATES",
    "HostVm",
    "VmAction",
    "VmRecord",
    "VmSpec",
    "VmState",
    "decode_vm_file",
    "encode_vm_file",
    "is_totebox",
    "normalize_vm_type",
]

VM_TYPE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
VM_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_RAM_MB = 16 * 1024 * 1024  # 16 TiB: a bound for the decoder, not a policy
MAX_VCPUS = 1024
MAX_DETAIL = 200
REQUEST_ID_SIZE = 16


def normalize_vm_type(text: str) -> str:
    """``VM-Totebox`` and ``totebox`` name the same type: lower case, without the ``vm-`` prefix."""
    lowered = text.strip().lower()
    return lowered.removeprefix("vm-") or lowered


def is_totebox(vm_type: str) -> bool:
    """VM-Toteboxes hold WORM archive data, which does not move: they must name their node."""
    return normalize_vm_type(vm_type) == "totebox"


class VmState(enum.Enum):
    PROVISIONING = "provisioning"  # the provisioner command is running (create)
    RUNNING = "running"  # created or started: the provisioner exited 0
    FAILED = "failed"  # the create failed: non-zero exit, timeout, or could not start
    STOPPING = "stopping"  # the provisioner is stopping it
    STOPPED = "stopped"  # stopped: its resources stay reserved on the node
    STARTING = "starting"  # the provisioner is starting it again
    DELETING = "deleting"  # the provisioner is deleting it; on success the record goes


# Where a VM rests between actions; the others say a provisioner run is under way.
SETTLED_STATES = frozenset({VmState.RUNNING, VmState.FAILED, VmState.STOPPED})


class VmAction(enum.Enum):
    """What the controller asks a vm-host to do to a VM (RFC-NOTES §8.7), and the provisioner's
    ``PPN_VM_ACTION``. A ``create`` travels as a ``spawn`` request; the others name the VM."""

    CREATE = "create"
    STOP = "stop"
    START = "start"
    DELETE = "delete"

    @property
    def busy_state(self) -> VmState:
        """The state the VM is in while the provisioner runs this action."""
        return _BUSY[self]

    @property
    def allowed_from(self) -> frozenset[VmState]:
        """The settled states this action may start from."""
        return _ALLOWED_FROM[self]


_BUSY = {
    VmAction.CREATE: VmState.PROVISIONING,
    VmAction.STOP: VmState.STOPPING,
    VmAction.START: VmState.STARTING,
    VmAction.DELETE: VmState.DELETING,
}
_ALLOWED_FROM = {
    VmAction.CREATE: frozenset[VmState](),
    VmAction.STOP: frozenset({VmState.RUNNING}),
    VmAction.START: frozenset({VmState.STOPPED}),
    # A failed create may have left something behind: delete is how it is cleaned up.
    VmAction.DELETE: frozenset({VmState.RUNNING, VmState.STOPPED, VmState.FAILED}),
}


@dataclass(frozen=True, kw_only=True)
class VmSpec:
    """A VM request: its type, name, memory and virtual CPUs."""

    vm_type: str
    name: str
    ram_mb: int
    vcpus: int = 1

    def __post_init__(self) -> None:
        if not VM_TYPE.match(self.vm_type):
            raise LocalProtocolError("a VM type is 1-32 lower-case letters, digits and '-'")
        if not VM_NAME.match(self.name):
            raise LocalProtocolError("a VM name is 1-63 lower-case letters, digits and '-'")
        if not 1 <= self.ram_mb <= MAX_RAM_MB:
            raise LocalProtocolError(f"RAM must be between 1 and {MAX_RAM_MB} MB")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise LocalProtocolError(f"vCPUs must be between 1 and {MAX_VCPUS}")

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.vm_type, "name": self.name, "ram_mb": self.ram_mb, "vcpus": self.vcpus}

    @classmethod
    def from_wire(cls, value: Any, *, what: str = "vm") -> VmSpec:
        m = expect_map(value, what=what, required=("type", "name", "ram_mb", "vcpus"))
        return cls(
            vm_type=m.text("type", high=32, pattern=VM_TYPE),
            name=m.text("name", high=63, pattern=VM_NAME),
            ram_mb=m.integer("ram_mb", 1, MAX_RAM_MB),
            vcpus=m.integer("vcpus", 1, MAX_VCPUS),
        )


@dataclass(frozen=True, kw_only=True)
class VmRecord:
    """A VM a vm-host launched (or tried to), as reported in its heartbeats.

    ``request_id`` is the create's (the VM's identity on its host); ``action_id`` the id of the
    latest request that acted on it (the create's until a stop, start or delete is accepted), so
    an operator waiting on an action can tell its outcome from an older report.
    """

    request_id: bytes
    spec: VmSpec
    state: VmState
    detail: str = ""  # the provisioner's last line of output, or why it failed
    action_id: bytes = b""  # empty: the create's request id

    def __post_init__(self) -> None:
        if not self.action_id:
            object.__setattr__(self, "action_id", self.request_id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "vm": self.spec.to_wire(),
            "state": self.state.value,
            "detail": self.detail[:MAX_DETAIL],
            "action_id": self.action_id,
        }

    @classmethod
    def from_wire(cls, value: Any, *, what: str = "vm record") -> VmRecord:
        m = expect_map(
            value, what=what, required=("request_id", "vm", "state", "detail", "action_id")
        )
        return cls(
            request_id=m.blob("request_id", size=REQUEST_ID_SIZE),
            spec=VmSpec.from_wire(m["vm"], what=f"{what}.vm"),
            state=read_state(m, "state", what=what),
            detail=m.text("detail", high=MAX_DETAIL),
            action_id=m.blob("action_id", size=REQUEST_ID_SIZE),
        )


def read_state(m: Fields, key: str, *, what: str) -> VmState:
    """A VM state field, or RemoteProtocolError naming it."""
    state_text = m.text(key, high=16)
    try:
        return VmState(state_text)
    except ValueError as exc:
        raise RemoteProtocolError(f"{what}.{key} {state_text!r} is unknown") from exc


# --- the vm-host's record file (RFC-NOTES §8.7.1) ------------------------------------------------

VM_FILE_VERSION = 1
MAX_VM_FILE = 4 * 1024 * 1024  # 256 records of well under 1 KiB each, with room to spare


@dataclass(frozen=True, kw_only=True)
class HostVm:
    """One VM as its vm-host keeps it: the reported record and the settled state it returns to
    when the action under way fails or is cut short by a restart."""

    record: VmRecord
    settled: VmState

    def __post_init__(self) -> None:
        if self.settled not in SETTLED_STATES:
            raise LocalProtocolError("a VM's settled state is running, stopped or failed")


def encode_vm_file(vms: Sequence[HostVm]) -> bytes:
    """The canonical file form: ``{"v": 1, "vms": [{record fields…, "settled": state}…]}``."""
    return wire.pack_canonical(
        {
            "v": VM_FILE_VERSION,
            "vms": [{**vm.record.to_wire(), "settled": vm.settled.value} for vm in vms],
        }
    )


def decode_vm_file(data: bytes) -> list[HostVm]:
    """Parse a record file, then settle what a restart interrupted: a VM whose provisioner was
    running when the vm-host stopped goes back to its settled state with a detail saying so.
    Raises RemoteProtocolError for anything damaged (the caller refuses to start)."""
    what = "VM record file"
    try:
        value = wire.unpack_canonical(data, max_size=MAX_VM_FILE)
    except wire.WireError as exc:
        raise RemoteProtocolError(f"{what}: {exc}") from exc
    m = expect_map(value, what=what, required=("v", "vms"))
    if m.integer("v", 0, 255) != VM_FILE_VERSION:
        raise RemoteProtocolError(f"{what} has version {m['v']}, this ppn reads {VM_FILE_VERSION}")
    entries = m["vms"]
    if not isinstance(entries, list):
        raise RemoteProtocolError(f"{what}.vms must be a list")
    out: list[HostVm] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{what}.vms[{i}]"
        e = expect_map(
            entry,
            what=where,
            required=("request_id", "vm", "state", "detail", "action_id", "settled"),
        )
        settled = read_state(e, "settled", what=where)
        if settled not in SETTLED_STATES:
            raise RemoteProtocolError(f"{where}.settled must be running, stopped or failed")
        record = VmRecord.from_wire(
            {k: entry[k] for k in ("request_id", "vm", "state", "detail", "action_id")},
            what=where,
        )
        if record.spec.name in names:
            raise RemoteProtocolError(f"{where} repeats the VM name {record.spec.name!r}")
        names.add(record.spec.name)
        if record.state not in SETTLED_STATES:
            record = replace(
                record,
                state=settled,
                detail=f"the vm-host restarted while it was {record.state.value}; "
                f"the outcome is unknown",
            )
        out.append(HostVm(record=record, settled=settled))
    return out
