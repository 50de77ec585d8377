"""The operator's channel to the fleet controller: status, advisory placement, create, and the
VM lifecycle (list, stop, start, delete).

It runs over a local stream socket (a Unix socket, mode 0600, on the cloud node), so the right
to create VMs is the right to open that file (RFC-NOTES §8.6). One request frame and one reply
frame per connection, canonical msgpack, replies always ``{"ok": bool, ...}``. Everything in a
reply is JSON-compatible (ints, text, bools, lists, maps) so ``--json`` prints it unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._errors import RemoteProtocolError
from ._codec import expect_map, unpack_message
from ._placement import Candidate, PlacementRequest
from ._table import Dispatched, NodeTable
from ._vm import (
    MAX_RAM_MB,
    MAX_VCPUS,
    VM_NAME,
    VM_TYPE,
    VmAction,
    VmRecord,
    VmSpec,
    VmState,
    is_totebox,
    normalize_vm_type,
)

__all__ = [
    "ACTION_OPS",
    "MAX_CONTROL_FRAME",
    "ControlRequest",
    "candidates",
    "decode_control_request",
    "encode_control_request",
    "find_vm",
    "status_document",
    "vm_list_document",
]

MAX_CONTROL_FRAME = 1024 * 1024
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_OPS = ("status", "place", "create")
# The lifecycle operations on an existing VM, by op text.
ACTION_OPS = {"stop": VmAction.STOP, "start": VmAction.START, "delete": VmAction.DELETE}
# Shown for a VM the controller dispatched that no heartbeat has listed yet.
DISPATCHED = "dispatched"


@dataclass(frozen=True, kw_only=True)
class ControlRequest:
    """``status``; ``list``; ``place`` (advice only); ``create`` (dispatch to the confirmed
    ``node``); ``stop``/``start``/``delete`` of the VM ``name`` (on ``node`` if given;
    deleting a VM-Totebox needs ``confirm`` equal to its name)."""

    op: str
    vm_type: str = ""
    ram_mb: int = 0
    vcpus: int = 1
    name: str = ""  # empty: the controller names the VM
    node: str = ""  # empty: no node named
    prefer_kvm: bool = False
    confirm: str = ""  # delete: the VM's name typed by the operator

    def placement_request(self) -> PlacementRequest:
        return PlacementRequest(
            vm_type=self.vm_type,
            ram_mb=self.ram_mb,
            vcpus=self.vcpus,
            node=self.node or None,
            prefer_kvm=self.prefer_kvm,
        )


def encode_control_request(request: ControlRequest) -> dict[str, Any]:
    if request.op in ("status", "list"):
        return {"op": request.op}
    if request.op in ACTION_OPS:
        return {
            "op": request.op,
            "name": request.name,
            "node": request.node,
            "confirm": request.confirm,
        }
    return {
        "op": request.op,
        "type": request.vm_type,
        "ram_mb": request.ram_mb,
        "vcpus": request.vcpus,
        "name": request.name,
        "node": request.node,
        "prefer_kvm": request.prefer_kvm,
    }


def decode_control_request(payload: bytes) -> ControlRequest:
    """Parse a request frame. Raises RemoteProtocolError."""
    what = "control request"
    value = unpack_message(payload, what=what, max_size=MAX_CONTROL_FRAME)
    op = value.get("op") if isinstance(value, dict) else None
    if op in ("status", "list"):
        expect_map(value, what=what, required=("op",))
        return ControlRequest(op=str(op))
    if op in ACTION_OPS:
        a = expect_map(value, what=what, required=("op", "name", "node", "confirm"))
        name = a.text("name", high=63, pattern=VM_NAME)
        node = a.text("node", high=63)
        if node and not _NODE_NAME.match(node):
            raise RemoteProtocolError("control request.node is not well-formed")
        return ControlRequest(op=str(op), name=name, node=node, confirm=a.text("confirm", high=63))
    m = expect_map(
        value,
        what=what,
        required=("op", "type", "ram_mb", "vcpus", "name", "node", "prefer_kvm"),
    )
    op = m.text("op", high=16)
    if op not in _OPS:
        raise RemoteProtocolError(f"unknown control operation {op!r}")
    vm_type = normalize_vm_type(m.text("type", high=40))
    if not VM_TYPE.match(vm_type):
        raise RemoteProtocolError("control request.type is not well-formed")
    name = m.text("name", high=63)
    if name and not VM_NAME.match(name):
        raise RemoteProtocolError("control request.name is not well-formed")
    node = m.text("node", high=63)
    if node and not _NODE_NAME.match(node):
        raise RemoteProtocolError("control request.node is not well-formed")
    return ControlRequest(
        op=op,
        vm_type=vm_type,
        ram_mb=m.integer("ram_mb", 1, MAX_RAM_MB),
        vcpus=m.integer("vcpus", 1, MAX_VCPUS),
        name=name,
        node=node,
        prefer_kvm=m.boolean("prefer_kvm"),
    )


def candidates(table: NodeTable) -> list[Candidate]:
    """Live nodes as placement sees them: RAM and vCPUs net of VMs dispatched but not yet
    listed in a heartbeat; vCPUs committed by every VM but failed ones (a stopped VM keeps its
    share, so it can be started again)."""
    pool = []
    for r in table.live_nodes():
        dispatched = table.dispatched(r.member.node_id)
        reported = sum(vm.spec.vcpus for vm in r.heartbeat.vms if vm.state is not VmState.FAILED)
        pool.append(
            Candidate(
                name=r.name,
                ram_available_mb=max(
                    0, r.heartbeat.ram_available_mb - sum(d.spec.ram_mb for d in dispatched)
                ),
                kvm=r.heartbeat.kvm,
                reserved=r.heartbeat.reserved,
                cpu_cores=r.heartbeat.cpu_cores,
                vcpus_committed=reported + sum(d.spec.vcpus for d in dispatched),
            )
        )
    return pool


def _vm_entry(spec: VmSpec, state: str, detail: str, ids: VmRecord | Dispatched) -> dict[str, Any]:
    action_id = ids.action_id if isinstance(ids, VmRecord) else ids.request_id
    return {
        "name": spec.name,
        "type": spec.vm_type,
        "ram_mb": spec.ram_mb,
        "vcpus": spec.vcpus,
        "state": state,
        "detail": detail,
        "request_id": ids.request_id.hex(),
        "action_id": action_id.hex(),
        "totebox": is_totebox(spec.vm_type),
    }


def vm_list_document(table: NodeTable) -> dict[str, Any]:
    """Every VM on a live node, as its last heartbeat reports it, plus those dispatched that no
    heartbeat lists yet (state ``dispatched``); sorted by node, then name."""
    vms: list[dict[str, Any]] = []
    for r in table.live_nodes():
        dispatched = table.dispatched(r.member.node_id)
        # A create that reuses a failed VM's name replaces it on the vm-host.
        replaced = {d.spec.name for d in dispatched}
        for vm in r.heartbeat.vms:
            if vm.spec.name in replaced:
                continue
            vms.append({"node": r.name, **_vm_entry(vm.spec, vm.state.value, vm.detail, vm)})
        for d in dispatched:
            vms.append({"node": r.name, **_vm_entry(d.spec, DISPATCHED, "", d)})
    vms.sort(key=lambda v: (v["node"], v["name"]))
    return {"ok": True, "vms": vms}


def find_vm(table: NodeTable, name: str, node: str = "") -> list[dict[str, Any]]:
    """The entries of :func:`vm_list_document` named ``name`` (on ``node`` when given)."""
    return [
        v
        for v in vm_list_document(table)["vms"]
        if v["name"] == name and (not node or v["node"] == node)
    ]


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def status_document(table: NodeTable, now: float, *, controller: str) -> dict[str, Any]:
    """The live pool and recent evictions as a JSON-compatible map (ages in milliseconds)."""
    nodes = []
    for record in table.live_nodes():
        hb = record.heartbeat
        nodes.append(
            {
                "name": record.name,
                "node_id": record.member.node_id,
                "mesh_address": record.member.mesh_address,
                "hostname": hb.hostname,
                "heartbeat_age_ms": _ms(now - record.last_heartbeat_at),
                "ram_total_mb": hb.ram_total_mb,
                "ram_available_mb": hb.ram_available_mb,
                "cpu_cores": hb.cpu_cores,
                "load_milli": hb.load_milli,
                "kvm": hb.kvm,
                "reserved": hb.reserved,
                "boot_id": hb.boot_id.hex(),
                "seq": hb.seq,
                "vms": [_vm_entry(vm.spec, vm.state.value, vm.detail, vm) for vm in hb.vms],
            }
        )
    evicted = [
        {
            "name": e.name,
            "node_id": e.node_id,
            "evicted_ago_ms": _ms(now - e.at),
            "silent_for_ms": _ms(e.silent_for),
        }
        for e in table.evicted_nodes()
    ]
    return {
        "ok": True,
        "controller": controller,
        "eviction_timeout_ms": _ms(table.eviction_timeout),
        "nodes": nodes,
        "evicted": evicted,
    }
