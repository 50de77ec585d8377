"""The operator's channel to the fleet controller: status, advisory placement, create.

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
from ._table import NodeTable
from ._vm import MAX_RAM_MB, MAX_VCPUS, VM_NAME, VM_TYPE, normalize_vm_type

__all__ = [
    "MAX_CONTROL_FRAME",
    "ControlRequest",
    "candidates",
    "decode_control_request",
    "encode_control_request",
    "status_document",
]

MAX_CONTROL_FRAME = 1024 * 1024
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_OPS = ("status", "place", "create")


@dataclass(frozen=True, kw_only=True)
class ControlRequest:
    """``status``; ``place`` (advice only); ``create`` (dispatch to the confirmed ``node``)."""

    op: str
    vm_type: str = ""
    ram_mb: int = 0
    vcpus: int = 1
    name: str = ""  # empty: the controller names the VM
    node: str = ""  # empty: no node named
    prefer_kvm: bool = False

    def placement_request(self) -> PlacementRequest:
        return PlacementRequest(
            vm_type=self.vm_type,
            ram_mb=self.ram_mb,
            node=self.node or None,
            prefer_kvm=self.prefer_kvm,
        )


def encode_control_request(request: ControlRequest) -> dict[str, Any]:
    if request.op == "status":
        return {"op": "status"}
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
    if isinstance(value, dict) and value.get("op") == "status":
        expect_map(value, what=what, required=("op",))
        return ControlRequest(op="status")
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
    return [
        Candidate(
            name=r.name,
            ram_available_mb=r.heartbeat.ram_available_mb,
            kvm=r.heartbeat.kvm,
            reserved=r.heartbeat.reserved,
        )
        for r in table.live_nodes()
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
                "vms": [
                    {
                        "name": vm.spec.name,
                        "type": vm.spec.vm_type,
                        "ram_mb": vm.spec.ram_mb,
                        "vcpus": vm.spec.vcpus,
                        "state": vm.state.value,
                        "detail": vm.detail,
                        "request_id": vm.request_id.hex(),
                    }
                    for vm in hb.vms
                ],
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
