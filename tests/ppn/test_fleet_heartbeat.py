"""Heartbeat envelope: signature, wrong key, replay and boot-id handling (RFC-NOTES §8.3)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ppn import RemoteProtocolError, wire
from ppn.fleet import (
    HeartbeatAuthError,
    ReplayGuard,
    VmRecord,
    VmSpec,
    VmState,
    decode_heartbeat,
    encode_heartbeat,
)
from ppn.fleet._heartbeat import HEARTBEAT_CONTEXT, decode_heartbeat_reply, encode_heartbeat_reply

from ._fleet_support import make_heartbeat, make_key


def test_round_trip_with_vms() -> None:
    vm = VmRecord(
        request_id=bytes(range(16)),
        spec=VmSpec(vm_type="generic", name="web-1", ram_mb=512, vcpus=2),
        state=VmState.RUNNING,
        detail="pid 42",
    )
    hb = make_heartbeat(2, seq=7, vms=(vm,))
    signed = decode_heartbeat(encode_heartbeat(hb, make_key(2)))
    assert signed.heartbeat == hb
    assert signed.identity == make_key(2).public


def test_signature_is_over_context_and_body() -> None:
    payload = encode_heartbeat(make_heartbeat(2), make_key(2))
    env = wire.unpack_canonical(payload)
    key = make_key(2)
    assert env["sig"] == key.sign(HEARTBEAT_CONTEXT + env["body"])
    assert env["body"] == wire.pack_canonical(make_heartbeat(2).to_wire())


def test_tampered_body_is_refused_without_detail() -> None:
    env = wire.unpack_canonical(encode_heartbeat(make_heartbeat(2), make_key(2)))
    forged_body = wire.pack_canonical(make_heartbeat(2, ram_available_mb=999_999).to_wire())
    forged = wire.pack_canonical({**env, "body": forged_body})
    with pytest.raises(HeartbeatAuthError) as info:
        decode_heartbeat(forged)
    assert str(info.value) == "heartbeat authentication failed"


def test_signature_by_another_key_is_refused() -> None:
    env = wire.unpack_canonical(encode_heartbeat(make_heartbeat(2), make_key(3)))
    # Claim key 2 while the signature is key 3's.
    with pytest.raises(HeartbeatAuthError):
        decode_heartbeat(wire.pack_canonical({**env, "key": make_key(2).public}))


def test_non_canonical_envelope_is_refused() -> None:
    payload = encode_heartbeat(make_heartbeat(2), make_key(2))
    import msgpack

    env = wire.unpack_canonical(payload)
    reordered = msgpack.packb({"sig": env["sig"], "key": env["key"], "body": env["body"]})
    with pytest.raises(RemoteProtocolError):
        decode_heartbeat(reordered)


def test_replay_guard_sequence_and_boots() -> None:
    guard = ReplayGuard()
    key = b"k" * 32
    boot1, boot2 = b"\x01" * 16, b"\x02" * 16

    def accept(boot: bytes, seq: int) -> None:
        guard.check(key, boot, seq)
        guard.record(key, boot, seq)

    accept(boot1, 100)
    with pytest.raises(RemoteProtocolError, match="sequence"):
        guard.check(key, boot1, 100)  # exact replay
    with pytest.raises(RemoteProtocolError, match="sequence"):
        guard.check(key, boot1, 99)  # older
    accept(boot1, 101)
    accept(boot2, 1)  # new boot id resets the sequence
    accept(boot2, 2)
    with pytest.raises(RemoteProtocolError, match="boot"):
        guard.check(key, boot1, 10_000)  # a recording from the ended boot
    guard.check(b"other" + bytes(27), boot1, 1)  # per signer


def test_replay_guard_forgets_only_beyond_its_limit() -> None:
    guard = ReplayGuard(retired_limit=2)
    key = b"k" * 32
    for boot in range(1, 5):
        guard.check(key, bytes([boot]) * 16, 1)
        guard.record(key, bytes([boot]) * 16, 1)
    with pytest.raises(RemoteProtocolError):
        guard.check(key, bytes([3]) * 16, 5)
    guard.check(key, bytes([1]) * 16, 5)  # retired beyond the limit: no longer remembered


def test_reply_round_trip() -> None:
    assert decode_heartbeat_reply(encode_heartbeat_reply(accepted=True)) == (True, "")
    assert decode_heartbeat_reply(encode_heartbeat_reply(accepted=False, reason="x" * 500)) == (
        False,
        "x" * 200,
    )


@pytest.mark.parametrize(
    "field,value",
    [("seq", -1), ("cpu_cores", 0), ("boot_id", b"\x00" * 15), ("hostname", "bad host")],
)
def test_body_out_of_range_is_refused(field: str, value: object) -> None:
    hb = make_heartbeat(2)
    body = wire.pack_canonical({**hb.to_wire(), field: value})
    key = make_key(2)
    payload = wire.pack_canonical(
        {"body": body, "key": key.public, "sig": key.sign(HEARTBEAT_CONTEXT + body)}
    )
    with pytest.raises(RemoteProtocolError):
        decode_heartbeat(payload)


def test_unknown_field_is_refused() -> None:
    hb = replace(make_heartbeat(2))
    body = wire.pack_canonical({**hb.to_wire(), "extra": 1})
    key = make_key(2)
    payload = wire.pack_canonical(
        {"body": body, "key": key.public, "sig": key.sign(HEARTBEAT_CONTEXT + body)}
    )
    with pytest.raises(RemoteProtocolError, match="unknown"):
        decode_heartbeat(payload)
