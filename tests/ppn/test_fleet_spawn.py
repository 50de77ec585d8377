"""Spawn dispatch cores wired in memory (RFC-NOTES §8.7), the member directory and the control
request codec."""

from __future__ import annotations

import pytest

from ppn import LocalProtocolError, RemoteProtocolError, wire
from ppn.fleet import (
    DirectoryError,
    SpawnAnswer,
    SpawnAuthError,
    SpawnClient,
    SpawnDecision,
    SpawnRequested,
    SpawnServer,
    StaticDirectory,
    VmSpec,
    derive_node_id,
)
from ppn.fleet._operator import ControlRequest, decode_control_request, encode_control_request
from ppn.fleet._spawn import SpawnState

from ._fleet_support import fleet_directory, make_key, make_member

SPEC = VmSpec(vm_type="generic", name="web-1", ram_mb=1024, vcpus=2)
NODE_A = make_member(2, "a").node_id


def pair(*, client_key: int = 1, client_node: str = NODE_A) -> tuple[SpawnServer, SpawnClient]:
    server = SpawnServer(node_id=NODE_A, directory=fleet_directory(), nonce=b"N" * 16)
    client = SpawnClient(
        key=make_key(client_key), node_id=client_node, request_id=b"R" * 16, spec=SPEC
    )
    return server, client


def test_accepted_round_trip() -> None:
    server, client = pair()
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    event = server.next_event()
    assert event == SpawnRequested(request_id=b"R" * 16, spec=SPEC)
    server.send(SpawnDecision(request_id=b"R" * 16, accepted=True))
    client.receive_data(server.data_to_send())
    assert client.next_event() == SpawnAnswer(request_id=b"R" * 16, accepted=True, reason="")
    assert server.state is SpawnState.DONE and client.state is SpawnState.DONE


def test_refused_round_trip() -> None:
    server, client = pair()
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    assert server.next_event() is not None
    server.send(SpawnDecision(request_id=b"R" * 16, accepted=False, reason="no provisioner"))
    client.receive_data(server.data_to_send())
    answer = client.next_event()
    assert isinstance(answer, SpawnAnswer) and not answer.accepted
    assert answer.reason == "no provisioner"


def test_request_from_a_non_controller_member_is_refused() -> None:
    server, client = pair(client_key=2)  # node a itself, not the controller
    client.receive_data(server.data_to_send())
    with pytest.raises(SpawnAuthError):
        server.receive_data(client.data_to_send())
    assert server.state is SpawnState.ERROR
    assert server.next_event() is None


def test_recorded_request_cannot_be_replayed_on_a_new_connection() -> None:
    server, client = pair()
    client.receive_data(server.data_to_send())
    recorded = client.data_to_send()
    server.receive_data(recorded)
    fresh = SpawnServer(node_id=NODE_A, directory=fleet_directory(), nonce=b"M" * 16)
    fresh.data_to_send()
    with pytest.raises(SpawnAuthError):
        fresh.receive_data(recorded)


def test_request_for_another_node_is_refused() -> None:
    server, _ = pair()
    other = SpawnClient(key=make_key(1), node_id="someone-else", request_id=b"R" * 16, spec=SPEC)
    with pytest.raises(RemoteProtocolError, match="reached node"):
        other.receive_data(server.data_to_send())
    assert other.state is SpawnState.ERROR


def test_byte_at_a_time_delivery() -> None:
    server, client = pair()
    for b in server.data_to_send():
        client.receive_data(bytes([b]))
    for b in client.data_to_send():
        server.receive_data(bytes([b]))
    assert isinstance(server.next_event(), SpawnRequested)


def test_eof_before_the_answer_is_a_remote_error() -> None:
    server, client = pair()
    client.receive_data(server.data_to_send())
    with pytest.raises(RemoteProtocolError, match="closed"):
        client.receive_data(b"")


def test_misuse_is_a_local_error() -> None:
    server, _ = pair()
    with pytest.raises(LocalProtocolError):
        server.send(SpawnDecision(request_id=b"R" * 16, accepted=True))
    assert server.state is SpawnState.ERROR
    with pytest.raises(LocalProtocolError):
        SpawnServer(node_id=NODE_A, directory=fleet_directory(), nonce=b"short")


# --- directory ---------------------------------------------------------------------------------


def test_static_directory_round_trip_and_lookups() -> None:
    directory = fleet_directory()
    again = StaticDirectory.from_document(directory.to_document())
    assert again.members() == directory.members()
    controller = again.controller()
    assert controller is not None and controller.name == "cloud"
    assert again.member_by_identity(make_key(3).public) == make_member(3, "b")
    assert again.member_by_name("c") == make_member(4, "c")
    assert again.member_by_identity(make_key(9).public) is None


def test_node_id_defaults_to_the_roster_derivation() -> None:
    doc = {
        "members": [{"name": "a", "identity": make_key(2).public_b64, "mesh_address": "10.8.0.2"}]
    }
    member = StaticDirectory.from_document(doc).member_by_name("a")
    assert member is not None and member.node_id == derive_node_id(make_key(2).public)
    assert len(member.node_id) == 32


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {
            "members": [
                {"name": "A B", "identity": make_key(2).public_b64, "mesh_address": "10.8.0.2"}
            ]
        },
        {"members": [{"name": "a", "identity": "nope", "mesh_address": "10.8.0.2"}]},
        {"members": [{"name": "a", "identity": make_key(2).public_b64, "mesh_address": "x"}]},
        {
            "members": [
                {"name": "a", "identity": make_key(2).public_b64, "mesh_address": "10.8.0.2"},
                {"name": "b", "identity": make_key(3).public_b64, "mesh_address": "10.8.0.2"},
            ]
        },
        {
            "members": [
                {
                    "name": "a",
                    "identity": make_key(2).public_b64,
                    "mesh_address": "10.8.0.2",
                    "roles": ["cloud"],
                },
                {
                    "name": "b",
                    "identity": make_key(3).public_b64,
                    "mesh_address": "10.8.0.3",
                    "roles": ["cloud"],
                },
            ]
        },
    ],
)
def test_bad_directories_are_refused(doc: object) -> None:
    with pytest.raises(DirectoryError):
        StaticDirectory.from_document(doc)


# --- control requests ----------------------------------------------------------------------------


def test_control_request_round_trip() -> None:
    request = ControlRequest(op="place", vm_type="totebox", ram_mb=512, node="a", prefer_kvm=True)
    payload = wire.pack_canonical(encode_control_request(request))
    assert decode_control_request(payload) == request
    status = wire.pack_canonical(encode_control_request(ControlRequest(op="status")))
    assert decode_control_request(status).op == "status"


@pytest.mark.parametrize(
    "change",
    [{"op": "migrate"}, {"ram_mb": 0}, {"type": "Bad Type"}, {"node": "-x"}, {"name": "a_b"}],
)
def test_bad_control_requests_are_refused(change: dict[str, object]) -> None:
    message = {
        **encode_control_request(ControlRequest(op="create", vm_type="generic", ram_mb=1)),
        **change,
    }
    with pytest.raises(RemoteProtocolError):
        decode_control_request(wire.pack_canonical(message))
