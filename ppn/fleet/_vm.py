"""What a VM is to the fleet: the spec an operator asks for and the record a vm-host reports.

The fleet never launches a VM itself: a node's provisioner command does (QEMU on the platform).
These types only carry what placement, dispatch and status need (RFC-NOTES §8.2).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from .._errors import LocalProtocolError, RemoteProtocolError
from ._codec import expect_map

__all__ = [
    "MAX_RAM_MB",
    "MAX_VCPUS",
    "REQUEST_ID_SIZE",
    "VmRecord",
    "VmSpec",
    "VmState",
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
    PROVISIONING = "provisioning"  # the provisioner command is running
    RUNNING = "running"  # the provisioner exited 0
    FAILED = "failed"  # the provisioner exited non-zero, timed out or could not start


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
    """A VM a vm-host launched (or tried to), as reported in its heartbeats."""

    request_id: bytes
    spec: VmSpec
    state: VmState
    detail: str = ""  # the provisioner's last line of output, or why it failed

    def to_wire(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "vm": self.spec.to_wire(),
            "state": self.state.value,
            "detail": self.detail[:MAX_DETAIL],
        }

    @classmethod
    def from_wire(cls, value: Any, *, what: str = "vm record") -> VmRecord:
        m = expect_map(value, what=what, required=("request_id", "vm", "state", "detail"))
        state_text = m.text("state", high=16)
        try:
            state = VmState(state_text)
        except ValueError as exc:
            raise RemoteProtocolError(f"{what}.state {state_text!r} is unknown") from exc
        return cls(
            request_id=m.blob("request_id", size=REQUEST_ID_SIZE),
            spec=VmSpec.from_wire(m["vm"], what=f"{what}.vm"),
            state=state,
            detail=m.text("detail", high=MAX_DETAIL),
        )
