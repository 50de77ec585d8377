"""What a vm-host reads from its machine: memory, CPUs, load, KVM, boot id; its provisioner;
and the file its VM records survive restarts in.

Linux only (``/proc``). Every reader takes the path it reads so tests can point it at a fixture.
The provisioner is the node's own command that really launches, stops, starts and deletes VMs
(QEMU on the platform); the fleet only runs it and records how it ended (RFC-NOTES §8.7).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from .._errors import RemoteProtocolError
from .._io_files import atomic_write
from ._vm import HostVm, VmAction, VmSpec, decode_vm_file, encode_vm_file, is_totebox

__all__ = [
    "VM_FILE",
    "HostFacts",
    "ProvisionerResult",
    "SequenceClock",
    "VmFileError",
    "load_vm_file",
    "read_boot_id",
    "read_host_facts",
    "run_provisioner",
    "save_vm_file",
]

VM_FILE = "fleet-vms.bin"  # the vm-host's VM records in a mesh state directory


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    hostname: str
    ram_total_mb: int
    ram_available_mb: int
    cpu_cores: int
    load_milli: int
    kvm: bool


def _meminfo_mb(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == key:
            fields = rest.split()
            value = int(fields[0])
            unit = fields[1].lower() if len(fields) > 1 else "b"
            return value // 1024 if unit == "kb" else value // (1024 * 1024)
    raise ValueError(f"/proc/meminfo has no {key}")


def read_host_facts(
    *,
    meminfo: str = "/proc/meminfo",
    loadavg: str = "/proc/loadavg",
    kvm_device: str = "/dev/kvm",
) -> HostFacts:
    """This machine's memory (MiB), CPU count, 1-minute load (x1000) and KVM availability."""
    with open(meminfo, encoding="ascii") as f:
        mem = f.read()
    total = _meminfo_mb(mem, "MemTotal")
    try:
        available = _meminfo_mb(mem, "MemAvailable")
    except ValueError:  # kernels before 3.14
        available = _meminfo_mb(mem, "MemFree")
    with open(loadavg, encoding="ascii") as f:
        load = float(f.read().split()[0])
    # The heartbeat carries a DNS-style label; anything else in the host name becomes '-'.
    hostname = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]).strip("-")
    return HostFacts(
        hostname=hostname[:63] or "localhost",
        ram_total_mb=total,
        ram_available_mb=available,
        cpu_cores=os.cpu_count() or 1,
        load_milli=max(0, round(load * 1000)),
        kvm=os.path.exists(kvm_device) and os.access(kvm_device, os.R_OK | os.W_OK),
    )


def read_boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> bytes:
    """The kernel's per-boot random id as 16 bytes; a fresh random one if the file is missing."""
    try:
        with open(path, encoding="ascii") as f:
            return uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return os.urandom(16)


class SequenceClock:
    """Heartbeat sequence numbers: milliseconds since boot, strictly increasing.

    Deriving them from CLOCK_BOOTTIME (not a counter from 0) means a restarted vm-host process on
    the same boot continues above its predecessor's numbers, so the controller's replay guard
    does not refuse it.
    """

    def __init__(self) -> None:
        self._last = -1

    def next(self) -> int:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
        self._last = max(self._last + 1, now)
        return self._last


@dataclass(frozen=True, kw_only=True)
class ProvisionerResult:
    ok: bool
    detail: str


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


async def run_provisioner(
    argv: Sequence[str],
    spec: VmSpec,
    request_id: bytes,
    *,
    action: VmAction = VmAction.CREATE,
    timeout: float = 600.0,
    extra_env: Mapping[str, str] | None = None,
) -> ProvisionerResult:
    """Run ``argv`` for one action on one VM: the spec, the VM's request id and the action as
    JSON on stdin, and as ``PPN_VM_*`` environment variables (``PPN_VM_ACTION``: create, stop,
    start, delete; ``PPN_VM_KEEP_DATA=1`` for a VM-Totebox, whose data is never deleted).

    Exit status 0 means the action succeeded; the last line of stdout (or stderr on failure)
    becomes the record's detail.
    """
    keep_data = is_totebox(spec.vm_type)
    spec_document = {
        **spec.to_wire(),
        "request_id": request_id.hex(),
        "action": action.value,
        "keep_data": keep_data,
    }
    env = dict(os.environ)
    env.update(extra_env or {})
    env.pop("PPN_VM_KEEP_DATA", None)
    env.update(
        {
            "PPN_VM_ACTION": action.value,
            "PPN_VM_TYPE": spec.vm_type,
            "PPN_VM_NAME": spec.name,
            "PPN_VM_RAM_MB": str(spec.ram_mb),
            "PPN_VM_VCPUS": str(spec.vcpus),
            "PPN_VM_REQUEST_ID": request_id.hex(),
        }
    )
    if keep_data:
        env["PPN_VM_KEEP_DATA"] = "1"
    try:
        with trio.fail_after(timeout):
            completed = await trio.run_process(
                list(argv),
                stdin=json.dumps(spec_document).encode() + b"\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
    except trio.TooSlowError:
        return ProvisionerResult(ok=False, detail=f"provisioner timed out after {timeout:g} s")
    except OSError as exc:
        return ProvisionerResult(ok=False, detail=f"provisioner could not start: {exc.strerror}")
    if completed.returncode == 0:
        return ProvisionerResult(ok=True, detail=_last_line(completed.stdout))
    detail = _last_line(completed.stderr) or _last_line(completed.stdout)
    return ProvisionerResult(
        ok=False, detail=f"provisioner exited {completed.returncode}: {detail}"[:200]
    )


class VmFileError(Exception):
    """The VM record file cannot be read or is damaged: the vm-host must not start without it."""


def load_vm_file(path: Path) -> list[HostVm]:
    """The saved VM records (RFC-NOTES §8.7.1); none when the file does not exist yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise VmFileError(f"cannot read the VM records {path}: {exc.strerror}") from exc
    try:
        return decode_vm_file(data)
    except RemoteProtocolError as exc:
        raise VmFileError(
            f"the VM records {path} are damaged ({exc}); move the file away only if this "
            "node runs no VMs"
        ) from exc


def save_vm_file(path: Path, vms: Sequence[HostVm]) -> None:
    """Replace the VM record file atomically; on OSError the old file is left as it was."""
    atomic_write(path, encode_vm_file(vms))
