"""Kernel backend messages (generic netlink), tested without a kernel module.

The dump below is two ``WG_CMD_GET_DEVICE`` messages laid out as ``uapi/wireguard.h`` and the
kernel's dump code define them: device attributes in the first message only, peer B's allowed
IPs split across both messages (the second carries just its public key and the rest). This
machine has no WireGuard module, so the bytes were synthesized once with pyroute2's ``wgmsg``
encoder to that layout (not captured from a live kernel); they pin the decoder and merger.
"""

from __future__ import annotations

import base64
import ipaddress

from pyroute2.netlink.generic.wireguard import (
    WG_CMD_SET_DEVICE,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    wgmsg,
)

from ppn.wg import (
    AddPeer,
    Endpoint,
    PeerConfig,
    RemovePeer,
    SetInterface,
    UpdatePeer,
    _netlink,
    build_set_messages,
    merge_dump,
    public_key_of,
)
from ppn.wg._netlink import MESSAGE_BUDGET

PRIV = bytes(range(1, 33))
A = bytes([0xA1]) * 32
B = bytes([0xB2]) * 32
C = bytes([0xC3]) * 32

DUMP_1 = bytes.fromhex(
    "2c02000015000200010000009210000000010000080001000700000008000200776730002400030001020304"
    "05060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202400040007a37cbc142093c8b755dc1b"
    "10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c060006006cca00000800070000000000b0010880bc000180"
    "24000100a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1240002005a5a5a5a"
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a140004000200ca6cc000020100000000"
    "0000000006000500190000001400060000f153650000000080b2e60e000000000c0007000010000000000000"
    "0c0008000020000000000000200009801c0001800600010002000000080002000a0800020500030020000000"
    "08000a0001000000f000028024000100b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"
    "b2b2b2b224000200000000000000000000000000000000000000000000000000000000000000000020000400"
    "0a00ca6d00000000fd0000000000000000000000000000020000000006000500000000001400060000000000"
    "0000000000000000000000000c00070000000000000000000c0008000000000000000000480009801c000180"
    "0600010002000000080002000a080100050003001800000028000280060001000a00000014000200fd080001"
    "000000000000000000000000050003004000000008000a0001000000"
)
DUMP_2 = bytes.fromhex(
    "f80000001500020001000000921000000001000008000100070000000800020077673000d400088048000180"
    "24000100b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2200009801c000180"
    "0600010002000000080002000a08020005000300180000008800028024000100c3c3c3c3c3c3c3c3c3c3c3c3"
    "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3240002000000000000000000000000000000000000000000"
    "000000000000000000000000060005000000000014000600000000000000000000000000000000000c000700"
    "00000000000000000c000800000000000000000008000a0001000000"
)


def decode(data: bytes) -> wgmsg:
    msg = wgmsg(data)
    msg.decode()
    return msg


def n(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_merge_recorded_dump() -> None:
    state = merge_dump([decode(DUMP_1), decode(DUMP_2)], "wg0")
    assert state.public_key == public_key_of(PRIV)
    assert (state.listen_port, state.fwmark) == (51820, 0)
    assert list(state.peers) == [A, B, C]
    a, b, c = state.peers[A], state.peers[B], state.peers[C]
    assert a.endpoint == Endpoint(host="192.0.2.1", port=51820)
    assert a.last_handshake == 1700000000.25 and (a.rx_bytes, a.tx_bytes) == (4096, 8192)
    assert a.persistent_keepalive == 25 and a.preshared_fingerprint is not None
    assert b.endpoint == Endpoint(host="fd00::2", port=51821)
    # B's allowed IPs straddle the two messages and are merged by public key
    assert b.allowed_ips == (n("10.8.1.0/24"), n("fd08:1::/64"), n("10.8.2.0/24"))
    assert b.last_handshake is None and b.preshared_fingerprint is None
    assert c.endpoint is None and c.allowed_ips == ()
    assert PRIV.hex() not in repr(state) and repr(PRIV) not in repr(state)


def _peers(msg: wgmsg) -> list[dict[str, object]]:
    return [dict((k, v) for k, v, *_ in p["attrs"]) for p in msg.get_attr("WGDEVICE_A_PEERS") or []]


def test_build_set_messages_round_trip_through_the_wire_format() -> None:
    ops = [
        SetInterface(private_key=PRIV, listen_port=51820),
        RemovePeer(public_key=C),
        AddPeer(
            peer=PeerConfig(
                public_key=A,
                endpoint=Endpoint.parse("[fd00::1]:51820"),
                allowed_ips=(n("10.8.0.2/32"), n("fd08::2/128")),
                persistent_keepalive=25,
            )
        ),
        UpdatePeer(public_key=B, endpoint=Endpoint.parse("192.0.2.9:9"), preshared_key=bytes(32)),
    ]
    (msg,) = build_set_messages("wg0", ops)
    msg.encode()
    back = decode(msg.data)
    assert back["cmd"] == WG_CMD_SET_DEVICE
    assert back.get_attr("WGDEVICE_A_IFNAME") == "wg0"
    assert base64.b64decode(back.get_attr("WGDEVICE_A_PRIVATE_KEY")) == PRIV
    assert back.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    remove, add, update = _peers(back)
    assert base64.b64decode(remove["WGPEER_A_PUBLIC_KEY"]) == C  # type: ignore[arg-type]
    assert remove["WGPEER_A_FLAGS"] == WGPEER_F_REMOVE_ME
    assert add["WGPEER_A_FLAGS"] == WGPEER_F_REPLACE_ALLOWEDIPS
    assert add["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"] == 25
    assert [x["addr"] for x in add["WGPEER_A_ALLOWEDIPS"]] == ["10.8.0.2/32", "fd08::2/128"]  # type: ignore[attr-defined]
    assert add["WGPEER_A_ENDPOINT"]["addr"] == "fd00::1"  # type: ignore[index]
    # update-only, no allowed-IP replacement when the list did not change
    assert update["WGPEER_A_FLAGS"] == WGPEER_F_UPDATE_ONLY
    assert "WGPEER_A_ALLOWEDIPS" not in update
    assert update["WGPEER_A_ENDPOINT"]["port"] == 9  # type: ignore[index]


def test_many_peers_are_batched_under_the_budget() -> None:
    ops = [
        AddPeer(
            peer=PeerConfig(
                public_key=i.to_bytes(32, "big"), allowed_ips=(n(f"10.{i // 256}.{i % 256}.0/24"),)
            )
        )
        for i in range(1, 2001)
    ]
    messages = build_set_messages("wg0", ops)
    assert len(messages) > 1
    seen: list[bytes] = []
    for msg in messages:
        msg.encode()
        assert len(msg.data) <= MESSAGE_BUDGET
        seen.extend(base64.b64decode(p["WGPEER_A_PUBLIC_KEY"]) for p in _peers(decode(msg.data)))  # type: ignore[arg-type]
    assert seen == [op.peer.public_key for op in ops]  # every peer once, in order


def test_a_huge_allowed_ip_list_is_continued_without_replacing() -> None:
    nets = tuple(n(f"10.{i // 256}.{i % 256}.0/24") for i in range(3000))
    (first, *rest) = build_set_messages(
        "wg0", [AddPeer(peer=PeerConfig(public_key=A, allowed_ips=nets))]
    )
    assert rest
    chunks = []
    for msg in (first, *rest):
        msg.encode()
        assert len(msg.data) <= MESSAGE_BUDGET
        chunks.extend(_peers(decode(msg.data)))
    assert chunks[0]["WGPEER_A_FLAGS"] == WGPEER_F_REPLACE_ALLOWEDIPS
    assert all(c["WGPEER_A_FLAGS"] == WGPEER_F_UPDATE_ONLY for c in chunks[1:])
    got = [x["addr"] for c in chunks for x in c["WGPEER_A_ALLOWEDIPS"]]  # type: ignore[attr-defined]
    assert got == [str(x) for x in nets]


def test_nothing_to_do_is_no_message() -> None:
    assert build_set_messages("wg0", []) == []


def test_the_core_s_copy_of_the_kernel_constants_matches_pyroute2() -> None:
    # The sans-IO layout carries its own copy so that it need not import pyroute2.
    from pyroute2.netlink.generic import wireguard

    for name in (
        "WG_CMD_SET_DEVICE",
        "WG_GENL_VERSION",
        "WGPEER_F_REMOVE_ME",
        "WGPEER_F_REPLACE_ALLOWEDIPS",
        "WGPEER_F_UPDATE_ONLY",
    ):
        assert getattr(_netlink, name) == getattr(wireguard, name), name
