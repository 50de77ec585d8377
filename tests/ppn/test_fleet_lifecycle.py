"""VM lifecycle cores (issue 18): stop/start/delete over the spawn protocol (RFC-NOTES §8.7), the
vm-host's record file (§8.7.1), VMs dispatched but not yet reported and vCPUs in placement
(§8.5), and the operator channel's new requests (§8.6). In memory; the real processes are in
test_fleet_vm_lifecycle_loopback.py and test_fleet_vm_hostile.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ppn import LocalProtocolError, RemoteProtocolError, wire
from ppn.fleet import (
    Candidate,
    NodeTable,
    Placed,
    PlacementRequest,
    Refused,
    SpawnAnswer,
    SpawnAuthError,
    SpawnClient,
    SpawnDecision,
    SpawnRequested,
    SpawnServer,
    VmAction,
    VmActionRequested,
    VmRecord,
    VmSpec,
    VmState,
    encode_heartbeat,
    place,
)
from ppn.fleet._operator import (
    ControlRequest,
    candidates,
    decode_control_request,
    encode_control_request,
    find_vm,
    vm_list_document,
)
from ppn.fleet._spawn import SPAWN_CONTEXT
from ppn.fleet._vm import HostVm, decode_vm_file, encode_vm_file

from ._fleet_support import fleet_directory, make_heartbeat, make_key, make_member

NODE_A = make_member(2, "a").node_id
SPEC = VmSpec(vm_type="generic", name="web-1", ram_mb=1024, vcpus=2)


def exchange(client: SpawnClient) -> tuple[SpawnServer, object]:
    server = SpawnServer(node_id=NODE_A, directory=fleet_directory(), nonce=b"N" * 16)
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return server, server.next_event()


# --- the spawn protocol's new kinds ---------------------------------------------------------------


@pytest.mark.parametrize("action", [VmAction.STOP, VmAction.START, VmAction.DELETE])
def test_action_round_trip(action: VmAction) -> None:
    client = SpawnClient(
        key=make_key(1), node_id=NODE_A, request_id=b"R" * 16, action=action, name="web-1"
    )
    server, event = exchange(client)
    assert event == VmActionRequested(request_id=b"R" * 16, action=action, name="web-1")
    server.send(SpawnDecision(request_id=b"R" * 16, accepted=False, reason="is stopped"))
    client.receive_data(server.data_to_send())
    assert client.next_event() == SpawnAnswer(
        request_id=b"R" * 16, accepted=False, reason="is stopped"
    )


def test_the_kind_is_signed_so_a_stop_cannot_become_a_delete() -> None:
    client = SpawnClient(
        key=make_key(1), node_id=NODE_A, request_id=b"R" * 16, action=VmAction.STOP, name="web-1"
    )
    server = SpawnServer(node_id=NODE_A, directory=fleet_directory(), nonce=b"N" * 16)
    client.receive_data(server.data_to_send())
    decoder = wire.FrameDecoder(max_size=4096)
    decoder.feed(client.data_to_send())
    frame = decoder.next_frame()
    assert frame is not None
    envelope = wire.unpack_canonical(frame)
    body = wire.unpack_canonical(envelope["body"])
    assert body["t"] == "stop" and envelope["sig"] == make_key(1).sign(
        SPAWN_CONTEXT + envelope["body"]
    )
    forged = wire.pack_canonical({**envelope, "body": wire.pack_canonical({**body, "t": "delete"})})
    with pytest.raises(SpawnAuthError):
        server.receive_data(wire.encode_frame(forged, max_size=4096))


def test_an_action_signed_by_a_member_that_is_not_the_controller_is_refused() -> None:
    client = SpawnClient(
        key=make_key(3), node_id=NODE_A, request_id=b"R" * 16, action=VmAction.DELETE, name="x"
    )
    with pytest.raises(SpawnAuthError):
        exchange(client)


def _signed(body: dict[str, object]) -> bytes:
    raw = wire.pack_canonical(body)
    envelope = {
        "body": raw,
        "key": make_key(1).public,
        "sig": make_key(1).sign(SPAWN_CONTEXT + raw),
    }
    return wire.encode_frame(wire.pack_canonical(envelope), max_size=4096)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"t": "reboot"}, "spawn, stop, start or delete"),
        ({"vm": SPEC.to_wire()}, "name"),  # a stop carries a name, not a spec
        ({"name": "Web_1"}, "name"),
        ({"v": 2}, "version-1"),
    ],
)
def test_malformed_signed_bodies_are_refused(changes: dict[str, object], message: str) -> None:
    server = SpawnServer(node_id=NODE_A, directory=fleet_directory(), nonce=b"N" * 16)
    body: dict[str, object] = {
        "v": 1, "t": "stop", "node_id": NODE_A, "nonce": b"N" * 16, "request_id": b"R" * 16,
        "name": "web-1",
    }  # fmt: skip
    body.update(changes)
    if "vm" in changes:
        del body["name"]
    with pytest.raises(RemoteProtocolError, match=message):
        server.receive_data(_signed(body))
    assert server.next_event() is None


def test_client_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        SpawnClient(key=make_key(1), node_id=NODE_A, request_id=b"R" * 16, action=VmAction.STOP)
    with pytest.raises(LocalProtocolError):
        SpawnClient(key=make_key(1), node_id=NODE_A, request_id=b"R" * 16)  # create, no spec
    with pytest.raises(LocalProtocolError):
        SpawnClient(
            key=make_key(1), node_id=NODE_A, request_id=b"R" * 16, spec=SPEC,
            action=VmAction.DELETE,
        )  # fmt: skip


def test_create_still_round_trips() -> None:
    _, event = exchange(
        SpawnClient(key=make_key(1), node_id=NODE_A, request_id=b"R" * 16, spec=SPEC)
    )
    assert event == SpawnRequested(request_id=b"R" * 16, spec=SPEC)


# --- the record file ------------------------------------------------------------------------------


def _vm(name: str, state: VmState, settled: VmState, n: int = 1) -> HostVm:
    record = VmRecord(
        request_id=bytes([n]) * 16,
        spec=replace(SPEC, name=name),
        state=state,
        detail="pid 1",
        action_id=bytes([n + 100]) * 16,
    )
    return HostVm(record=record, settled=settled)


def test_record_file_round_trip_and_interrupted_actions_settle() -> None:
    vms = [
        _vm("web-1", VmState.RUNNING, VmState.RUNNING, 1),
        _vm("web-2", VmState.STOPPING, VmState.RUNNING, 2),
        _vm("web-3", VmState.PROVISIONING, VmState.FAILED, 3),
        _vm("web-4", VmState.STOPPED, VmState.STOPPED, 4),
    ]
    back = decode_vm_file(encode_vm_file(vms))
    assert back[0] == vms[0] and back[3] == vms[3]
    assert [(v.record.spec.name, v.record.state) for v in back] == [
        ("web-1", VmState.RUNNING),
        ("web-2", VmState.RUNNING),
        ("web-3", VmState.FAILED),
        ("web-4", VmState.STOPPED),
    ]
    assert "restarted while it was stopping" in back[1].record.detail
    assert back[1].record.action_id == bytes([102]) * 16


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00garbage", "VM record file"),
        (wire.pack_canonical({"v": 2, "vms": []}), "version"),
        (wire.pack_canonical({"v": 1}), "vms"),
        (
            wire.pack_canonical(
                {
                    "v": 1,
                    "vms": [
                        {
                            **_vm("a", VmState.RUNNING, VmState.RUNNING).record.to_wire(),
                            "settled": "stopping",
                        }
                    ],
                }
            ),
            "settled",
        ),
    ],
)
def test_a_damaged_record_file_is_an_error(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_vm_file(data)


def test_a_record_file_with_a_name_twice_is_damaged() -> None:
    twice = encode_vm_file(
        [_vm("a", VmState.RUNNING, VmState.RUNNING, 1), _vm("a", VmState.FAILED, VmState.FAILED, 2)]
    )
    with pytest.raises(RemoteProtocolError, match="repeats"):
        decode_vm_file(twice)


# --- dispatched VMs in the node table and placement ----------------------------------------------


def _table_with_a(**changes: Any) -> NodeTable:
    table = NodeTable(fleet_directory())
    table.receive_heartbeat(encode_heartbeat(make_heartbeat(2, seq=1, **changes), make_key(2)), 0.0)
    return table


def _beat(table: NodeTable, seq: int, now: float, vms: tuple[VmRecord, ...] = ()) -> None:
    table.receive_heartbeat(encode_heartbeat(make_heartbeat(2, seq=seq, vms=vms), make_key(2)), now)


def test_dispatched_vms_count_until_a_heartbeat_lists_them() -> None:
    table = _table_with_a()  # 4096 MB available, 4 cores
    (a,) = candidates(table)
    assert (a.ram_available_mb, a.vcpus_committed, a.cpu_cores) == (4096, 0, 4)
    table.note_dispatch(NODE_A, b"1" * 16, SPEC)
    (a,) = candidates(table)
    assert (a.ram_available_mb, a.vcpus_committed) == (4096 - 1024, 2)
    # 2600 MB (+ 512 margin) fit the heartbeat's 4096 MB, not what the dispatched VM leaves.
    big = PlacementRequest(vm_type="generic", ram_mb=2600)
    assert isinstance(place(big, [replace(a, ram_available_mb=4096)]), Placed)
    assert isinstance(place(big, [a]), Refused)
    assert [v["state"] for v in vm_list_document(table)["vms"]] == ["dispatched"]
    listed = VmRecord(request_id=b"1" * 16, spec=SPEC, state=VmState.PROVISIONING)
    _beat(table, 2, 1.0, (listed,))
    assert table.dispatched(NODE_A) == []
    (a,) = candidates(table)
    assert a.vcpus_committed == 2  # now from the heartbeat
    assert [v["state"] for v in vm_list_document(table)["vms"]] == ["provisioning"]


def test_a_dispatched_vm_is_forgotten_after_two_heartbeats_without_it() -> None:
    table = _table_with_a()
    table.note_dispatch(NODE_A, b"1" * 16, SPEC)
    _beat(table, 2, 1.0)  # may have been built before the vm-host accepted
    assert len(table.dispatched(NODE_A)) == 1
    _beat(table, 3, 2.0)
    assert table.dispatched(NODE_A) == []


def test_eviction_forgets_dispatched_vms() -> None:
    table = _table_with_a()
    table.note_dispatch(NODE_A, b"1" * 16, SPEC)
    table.handle_timer(31.0)
    assert table.dispatched(NODE_A) == []
    table.note_dispatch(NODE_A, b"2" * 16, SPEC)  # not live: nothing to count
    assert table.dispatched(NODE_A) == []


def test_failed_vms_commit_no_vcpus_stopped_ones_do() -> None:
    vms = (
        VmRecord(request_id=b"1" * 16, spec=replace(SPEC, name="f"), state=VmState.FAILED),
        VmRecord(request_id=b"2" * 16, spec=replace(SPEC, name="s"), state=VmState.STOPPED),
    )
    (a,) = candidates(_table_with_a(vms=vms))
    assert a.vcpus_committed == 2


@pytest.mark.parametrize(
    "committed, vcpus, ratio, fits",
    [
        (0, 4, 1.0, True),
        (0, 5, 1.0, False),
        (14, 2, 4.0, True),  # 4 cores x 4 = 16
        (15, 2, 4.0, False),
        (0, 6, 1.5, True),
        (1, 6, 1.5, False),
    ],
)
def test_vcpus_fit_under_the_overcommit_ratio(
    committed: int, vcpus: int, ratio: float, fits: bool
) -> None:
    node = Candidate(
        name="a", ram_available_mb=8192, kvm=False, reserved=False, cpu_cores=4,
        vcpus_committed=committed,
    )  # fmt: skip
    for named in (None, "a"):
        decision = place(
            PlacementRequest(vm_type="generic", ram_mb=512, vcpus=vcpus, node=named),
            [node],
            vcpu_overcommit=ratio,
        )
        assert isinstance(decision, Placed) == fits, decision
        if not fits:
            assert isinstance(decision, Refused) and "vCPUs" in decision.reason


def test_vcpus_steer_placement_to_the_node_with_room() -> None:
    full = Candidate(name="big", ram_available_mb=60000, kvm=False, reserved=False, cpu_cores=2,
                     vcpus_committed=8)  # fmt: skip
    room = Candidate(name="small", ram_available_mb=4000, kvm=False, reserved=False, cpu_cores=2)
    decision = place(PlacementRequest(vm_type="generic", ram_mb=512, vcpus=2), [full, room])
    assert isinstance(decision, Placed) and decision.node == "small"


# --- the operator channel -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        ControlRequest(op="list"),
        ControlRequest(op="stop", name="web-1"),
        ControlRequest(op="start", name="web-1", node="a"),
        ControlRequest(op="delete", name="acme", node="b", confirm="acme"),
    ],
)
def test_operator_requests_round_trip(request_: ControlRequest) -> None:
    payload = wire.pack_canonical(encode_control_request(request_))
    assert decode_control_request(payload) == request_


@pytest.mark.parametrize(
    "message",
    [
        {"op": "stop", "name": "web-1", "node": ""},  # confirm missing
        {"op": "delete", "name": "Web 1", "node": "", "confirm": ""},
        {"op": "start", "name": "web-1", "node": "B!", "confirm": ""},
        {"op": "list", "extra": 1},
    ],
)
def test_malformed_operator_requests_are_refused(message: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_control_request(wire.pack_canonical(message))


def test_find_vm_by_name_and_node() -> None:
    vm = VmRecord(request_id=b"1" * 16, spec=SPEC, state=VmState.RUNNING)
    table = _table_with_a(vms=(vm,))
    table.receive_heartbeat(encode_heartbeat(make_heartbeat(3, seq=1, vms=(vm,)), make_key(3)), 0.5)
    assert sorted(v["node"] for v in find_vm(table, "web-1")) == ["a", "b"]
    assert [v["node"] for v in find_vm(table, "web-1", "b")] == ["b"]
    assert find_vm(table, "nope") == []


def test_a_heartbeat_with_the_most_vms_a_host_keeps_fits_its_frame() -> None:
    from ppn.fleet._heartbeat import MAX_HEARTBEAT_SIZE
    from ppn.fleet._trio_host import MAX_HOST_VMS

    vms = tuple(
        VmRecord(
            request_id=bytes([i]) * 16,
            spec=VmSpec(vm_type="t" * 32, name=f"{i:03d}" + "n" * 60, ram_mb=2**24, vcpus=1024),
            state=VmState.PROVISIONING,
            detail="d" * 200,
            action_id=bytes([i + 1]) * 16,
        )
        for i in range(MAX_HOST_VMS)
    )
    payload = encode_heartbeat(make_heartbeat(2, vms=vms, hostname="h" * 253), make_key(2))
    assert len(payload) < MAX_HEARTBEAT_SIZE
