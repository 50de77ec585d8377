"""Hostile peers against the VM lifecycle requests (issue 18), with real processes on loopback: a
``ppn fleet serve`` and a ``ppn vmhost serve``; the test plays the network attacker on the
vm-host's spawn port (TCP 9220's listener, behind the same guard as spawn).

A recorded, genuine stop replayed on a new connection; a delete with a bad signature; a delete
signed by a member that is not the controller; a delete signed by the controller for another
node: each is refused before anything runs, and the VM is untouched."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ppn import IdentityKey, wire
from ppn._keys import decode_key
from ppn.fleet._spawn import SPAWN_CONTEXT

from ._fleet_procs import Fleet, fleet_factory

__all__ = ["fleet_factory"]

FleetFactory = Callable[[Sequence[str]], Fleet]


def _frames(sock: socket.socket) -> tuple[list[Any], bool]:
    """Every frame the peer sends until it closes (or 20 s pass): (frames, closed)."""
    decoder = wire.FrameDecoder(max_size=4096)
    frames: list[Any] = []
    sock.settimeout(20)
    while True:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return frames, False
        if not data:
            return frames, True
        decoder.feed(data)
        while (frame := decoder.next_frame()) is not None:
            frames.append(wire.unpack_canonical(frame))


class Attacker:
    """Speaks the spawn protocol to the vm-host of ``fleet``'s node ``node``."""

    def __init__(self, fleet: Fleet, node: str) -> None:
        self.address = (fleet.address(node), fleet.spawn_port)

    def challenge(self) -> tuple[socket.socket, dict[str, Any]]:
        sock = socket.create_connection(self.address, timeout=20)
        decoder = wire.FrameDecoder(max_size=4096)
        while (frame := decoder.next_frame()) is None:
            data = sock.recv(4096)
            assert data, "the vm-host closed before its challenge"
            decoder.feed(data)
        challenge = wire.unpack_canonical(frame)
        assert challenge["t"] == "challenge"
        return sock, challenge

    def send(self, sock: socket.socket, frame: bytes) -> tuple[list[Any], bool]:
        with sock:
            sock.sendall(frame)
            return _frames(sock)


def _request(
    key: IdentityKey, challenge: dict[str, Any], t: str, name: str, **changes: Any
) -> bytes:
    body = {
        "v": 1, "t": t, "node_id": challenge["node_id"], "nonce": challenge["nonce"],
        "request_id": secrets.token_bytes(16), "name": name,
    }  # fmt: skip
    body.update(changes)
    raw = wire.pack_canonical(body)
    envelope = {"body": raw, "key": key.public, "sig": key.sign(SPAWN_CONTEXT + raw)}
    return wire.encode_frame(wire.pack_canonical(envelope), max_size=4096)


def _envelope(frame: bytes) -> dict[str, Any]:
    decoder = wire.FrameDecoder(max_size=4096)
    decoder.feed(frame)
    payload = decoder.next_frame()
    assert payload is not None
    return dict(wire.unpack_canonical(payload))


def _key(fleet: Fleet, name: str) -> IdentityKey:
    return IdentityKey.from_seed(decode_key(fleet.files.keys[name].read_text()))


def test_replayed_unsigned_and_forged_lifecycle_requests_are_refused(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(["a", "b"])
    fleet.controller().start()
    fleet.vmhost("a", "--interval", "1", "--vm-state", str(fleet.tmp / "a.vms")).start()
    fleet.wait_live(["a"])
    created = fleet.ppn(
        "vm", "create", "generic", "--ram", "256", "--name", "web-1", "--node", "a", "--yes",
        "--wait", "30",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    attacker = Attacker(fleet, "a")
    cloud, member_a = _key(fleet, "cloud"), _key(fleet, "a")

    # A genuine stop, signed by the controller's key for this connection: accepted. Recorded.
    sock, challenge = attacker.challenge()
    recorded = _request(cloud, challenge, "stop", "web-1")
    answers, _ = attacker.send(sock, recorded)
    assert [a["t"] for a in answers] == ["accepted"], answers
    fleet.wait_for(lambda v: v[0]["state"] == "stopped")
    started = fleet.ppn("vm", "start", "web-1", "--wait", "30")
    assert started.returncode == 0, started.stderr

    refused: dict[str, tuple[list[Any], bool]] = {}
    # 1. The recorded stop, replayed on a new connection (its nonce is the old one).
    sock, _ = attacker.challenge()
    refused["replayed stop"] = attacker.send(sock, recorded)
    # 2. An unsigned delete: the signature is not the controller's.
    sock, challenge = attacker.challenge()
    frame = _request(cloud, challenge, "delete", "web-1")
    envelope = _envelope(frame)
    envelope["sig"] = bytes(64)
    refused["unsigned delete"] = attacker.send(
        sock, wire.encode_frame(wire.pack_canonical(envelope), max_size=4096)
    )
    # 3. A delete signed by a member that is not the controller.
    sock, challenge = attacker.challenge()
    refused["member's delete"] = attacker.send(
        sock, _request(member_a, challenge, "delete", "web-1")
    )
    # 4. The controller's delete for another node (signed, but not for this vm-host).
    sock, challenge = attacker.challenge()
    other = dict(challenge, node_id="0" * 32)
    refused["other node's delete"] = attacker.send(sock, _request(cloud, other, "delete", "web-1"))
    # 5. A recorded stop's body under a fresh envelope claiming this connection's nonce: the
    #    signature no longer matches.
    sock, challenge = attacker.challenge()
    old = _envelope(recorded)
    body = wire.unpack_canonical(old["body"])
    body["nonce"] = challenge["nonce"]
    old["body"] = wire.pack_canonical(body)
    refused["re-nonced stop"] = attacker.send(
        sock, wire.encode_frame(wire.pack_canonical(old), max_size=4096)
    )

    for what, (answers, closed) in refused.items():
        assert answers == [] and closed, (what, answers, closed)
    vms = fleet.vm_list()
    assert [(v["name"], v["state"]) for v in vms] == [("web-1", "running")]
    actions = [c["action"] for c in fleet.hook_calls()]
    assert actions == ["create", "stop", "start"], actions
    log = (fleet.tmp / "a.log").read_text()
    assert log.count("spawn request authentication failed") == len(refused), log
