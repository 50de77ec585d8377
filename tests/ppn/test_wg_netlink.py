"""Kernel backend messages (generic netlink), tested without a kernel module.

The dump below is two ``WG_CMD_GET_DEVICE`` messages laid out as ``uapi/wireguard.h`` and the
kernel's dump code define them: device attributes in the first message only, peer B's allowed
IPs split across both messages (the second carries just its public key and the rest). This
machine has no WireGuard module, so the bytes were synthesized once with pyroute2's ``wgmsg``
encoder to that layout (not captured from a live kernel); they pin the decoder and merger.
The messages ``ppn.wg._netlink`` builds itself are read back with pyroute2's decoder, an
independent reading of the same layout (the backend no longer imports pyroute2; the kernel
suite, tests/kernel, checks both directions against the real module).
"""

from __future__ import annotations

import base64
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
from ppn.wg._netlink import (
    MESSAGE_BUDGET,
    NLMSG_ERROR,
    error_code,
    family_id,
    get_device_request,
    get_family_request,
    link_kind,
    split_messages,
)
from tests._wg_spies import decoded_keys, indexed_messages

FAMILY = 0x21  # any generic-netlink message type: the kernel assigns wireguard's at load

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
    state = merge_dump([DUMP_1, DUMP_2], "wg0")
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
    (msg,) = build_set_messages("wg0", ops, family=FAMILY, seq=7)
    back = decode(msg)
    assert back["header"]["type"] == FAMILY and back["header"]["sequence_number"] == 7
    assert back["header"]["flags"] == 5  # NLM_F_REQUEST | NLM_F_ACK
    assert back["header"]["length"] == len(msg)
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
    messages = build_set_messages("wg0", ops, family=FAMILY, seq=1)
    assert len(messages) > 1
    seen: list[bytes] = []
    for number, msg in enumerate(messages, start=1):
        assert len(msg) <= MESSAGE_BUDGET
        back = decode(msg)
        assert back["header"]["sequence_number"] == number  # one acknowledgement each
        assert back.get_attr("WGDEVICE_A_IFNAME") == "wg0"
        seen.extend(base64.b64decode(p["WGPEER_A_PUBLIC_KEY"]) for p in _peers(back))  # type: ignore[arg-type]
    assert seen == [op.peer.public_key for op in ops]  # every peer once, in order


def test_a_huge_allowed_ip_list_is_continued_without_replacing() -> None:
    nets = tuple(n(f"10.{i // 256}.{i % 256}.0/24") for i in range(3000))
    (first, *rest) = build_set_messages(
        "wg0", [AddPeer(peer=PeerConfig(public_key=A, allowed_ips=nets))], family=FAMILY
    )
    assert rest
    chunks = []
    for msg in (first, *rest):
        assert len(msg) <= MESSAGE_BUDGET
        chunks.extend(_peers(decode(msg)))
    assert chunks[0]["WGPEER_A_FLAGS"] == WGPEER_F_REPLACE_ALLOWEDIPS
    assert all(c["WGPEER_A_FLAGS"] == WGPEER_F_UPDATE_ONLY for c in chunks[1:])
    got = [x["addr"] for c in chunks for x in c["WGPEER_A_ALLOWEDIPS"]]  # type: ignore[attr-defined]
    assert got == [str(x) for x in nets]


def test_nothing_to_do_is_no_message() -> None:
    assert build_set_messages("wg0", [], family=FAMILY) == []


def test_the_core_s_copy_of_the_kernel_constants_matches_pyroute2() -> None:
    # The sans-IO layout carries its own copy so that it need not import pyroute2.
    from pyroute2.netlink.generic import wireguard

    for name in (
        "WG_CMD_SET_DEVICE",
        "WG_GENL_VERSION",
        "WGPEER_F_REMOVE_ME",
        "WGPEER_F_REPLACE_ALLOWEDIPS",
        "WGPEER_F_UPDATE_ONLY",
        "WG_CMD_GET_DEVICE",
        "WG_GENL_NAME",
    ):
        assert getattr(_netlink, name) == getattr(wireguard, name), name
    # Attribute numbers: pyroute2 lists them in order (an attribute's number is its place).
    device = wireguard.wgmsg
    peer = device.wgdevice_peer
    tables = (device.nla_map, peer.nla_map, peer.wgpeer_allowedip.nla_map)
    numbered = {name: number for table in tables for number, (name, *_) in enumerate(table)}
    ours = [
        n for n in dir(_netlink) if n.startswith(("WGDEVICE_A_", "WGPEER_A_", "WGALLOWEDIP_A_"))
    ]
    assert len(ours) >= 19
    for name in ours:
        assert getattr(_netlink, name) == numbered[name], name


def test_what_we_build_is_read_back_by_our_own_dump_decoder() -> None:
    """A set message's peers, relabelled as a dump (cmd GET, same attribute layout), decode to
    the configuration written: the encoder and decoder agree on every field."""
    psk = bytes(range(32))
    ops = [
        SetInterface(private_key=PRIV, listen_port=51820, fwmark=7),
        AddPeer(
            peer=PeerConfig(
                public_key=A,
                preshared_key=psk,
                endpoint=Endpoint.parse("[fd00::1]:51820"),
                allowed_ips=(n("10.8.0.2/32"), n("fd08::/64")),
                persistent_keepalive=25,
            )
        ),
        AddPeer(peer=PeerConfig(public_key=B, endpoint=Endpoint.parse("192.0.2.9:9"))),
    ]
    (msg,) = build_set_messages("wg0", ops, family=FAMILY)
    state = merge_dump([msg], "wg0")
    assert state.public_key == public_key_of(PRIV)
    assert (state.listen_port, state.fwmark) == (51820, 7)
    a, b = state.peers[A], state.peers[B]
    assert a.allowed_ips == (n("10.8.0.2/32"), n("fd08::/64"))
    assert a.endpoint == Endpoint(host="fd00::1", port=51820) and a.persistent_keepalive == 25
    assert a.preshared_fingerprint is not None and b.preshared_fingerprint is None
    assert b.endpoint == Endpoint(host="192.0.2.9", port=9) and b.allowed_ips == ()


def test_a_second_read_returns_the_same_prefix_and_endpoint_objects() -> None:
    memo = _netlink.DumpMemo()
    first = merge_dump([DUMP_1, DUMP_2], "wg0", memo=memo)
    again = merge_dump([DUMP_1, DUMP_2], "wg0", memo=memo)
    assert again == first
    assert all(
        x is y for x, y in zip(first.peers[B].allowed_ips, again.peers[B].allowed_ips, strict=True)
    )
    assert first.peers[A].endpoint is again.peers[A].endpoint


def test_malformed_dumps_raise_the_protocol_error_only() -> None:
    import pytest

    from ppn.wg import UAPIProtocolError

    bad = [
        DUMP_1[:-3],  # the last attribute overruns
        DUMP_1[:20] + bytes.fromhex("ffff0800") + DUMP_1[24:],  # the first attribute too long
        DUMP_1.replace(bytes([0xA1]) * 32, bytes([0xA1]) * 31 + b"\0", 1)[:56]
        + bytes.fromhex("0800030001020304"),  # a device public key of 4 bytes
    ]
    for data in bad:
        fixed = len(data).to_bytes(4, "little") + data[4:]
        with pytest.raises(UAPIProtocolError):
            merge_dump(list(m for _, _, m in split_messages(fixed)) or [fixed], "wg0")


def test_framing_family_lookup_dump_request_errors_and_link_kind() -> None:
    from pyroute2.netlink import nlmsg
    from pyroute2.netlink.generic import ctrlmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    ask = ctrlmsg(get_family_request(seq=3))
    ask.decode()
    assert ask.get_attr("CTRL_ATTR_FAMILY_NAME") == "wireguard"
    assert ask["header"]["type"] == 0x10 and ask["cmd"] == 3
    answer = ctrlmsg()
    answer["cmd"] = 1
    answer["version"] = 2
    answer["attrs"] = [["CTRL_ATTR_FAMILY_NAME", "wireguard"], ["CTRL_ATTR_FAMILY_ID", 0x22]]
    answer["header"]["type"] = 0x10
    answer["header"]["sequence_number"] = 3
    answer.encode()
    assert family_id(bytes(answer.data)) == 0x22

    dump = decode(get_device_request(FAMILY, "wg0", seq=4))
    assert dump["cmd"] == 0 and dump.get_attr("WGDEVICE_A_IFNAME") == "wg0"
    assert dump["header"]["flags"] == 0x301  # NLM_F_REQUEST | NLM_F_DUMP

    err = nlmsg()
    err["header"]["type"] = NLMSG_ERROR
    err["header"]["sequence_number"] = 9
    err.encode()
    # an NLMSG_ERROR payload: -errno, then the request's header; two in one buffer
    refusal = bytes(err.data[:16]) + (-98).to_bytes(4, "little", signed=True) + bytes(16)
    refusal = (len(refusal)).to_bytes(4, "little") + refusal[4:]
    ack = refusal[:16] + bytes(20)
    parts = list(split_messages(refusal + ack))
    assert [(kind, seq) for kind, seq, _ in parts] == [(NLMSG_ERROR, 9), (NLMSG_ERROR, 9)]
    assert [error_code(m) for _, _, m in parts] == [98, 0]

    link = ifinfmsg()
    link["attrs"] = [
        ["IFLA_IFNAME", "wg0"],
        ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "wireguard"]]}],
    ]
    link["header"]["type"] = 16
    link.encode()
    assert link_kind(bytes(link.data)) == "wireguard"
    plain = ifinfmsg()
    plain["attrs"] = [["IFLA_IFNAME", "lo"]]
    plain["header"]["type"] = 16
    plain.encode()
    assert link_kind(bytes(plain.data)) == "unknown"


_networks = st.one_of(
    st.builds(
        lambda v, n: ipaddress.IPv4Network((v, n), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda v, n: ipaddress.IPv6Network((v, n), strict=False),
        st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**20), st.just(0xFFFF << 32)),
        st.integers(0, 128),
    ),
)
_endpoints = st.one_of(
    st.none(),
    st.builds(lambda v, p: Endpoint(host=str(ipaddress.IPv4Address(v)), port=p),
              st.integers(0, 2**32 - 1), st.integers(1, 65535)),
    st.builds(lambda v, p: Endpoint(host=str(ipaddress.IPv6Address(v)), port=p),
              st.integers(0, 2**128 - 1), st.integers(1, 65535)),
)  # fmt: skip
_peer_configs = st.builds(
    lambda key, nets, ep, ka, psk: PeerConfig(
        public_key=bytes([key]) * 32,
        allowed_ips=tuple(dict.fromkeys(nets)),
        endpoint=ep,
        persistent_keepalive=ka,
        preshared_key=psk,
    ),
    st.integers(1, 4),
    st.lists(_networks, max_size=4),
    _endpoints,
    st.sampled_from([0, 25]),
    st.sampled_from([None, bytes(32), bytes([7]) * 32]),
)


@settings(max_examples=300, deadline=None)
@given(device=st.lists(_peer_configs, max_size=4), desired=st.lists(_peer_configs, max_size=4))
def test_the_quick_check_never_changes_a_plan(
    device: list[PeerConfig], desired: list[PeerConfig]
) -> None:
    """What the device holds is written as a dump would carry it; planning the desired state
    against the lazy, quick-checked peers gives the plan of a full decode, and every prefix
    and endpoint reads back as written (the text of a prefix is ``str(network)``)."""
    from ppn.wg import DesiredStateError, InterfaceConfig, plan

    held = {p.public_key: p for p in device}
    msgs = build_set_messages("wg0", [AddPeer(peer=p) for p in held.values()], family=FAMILY)
    lazy = merge_dump(msgs, "wg0", lazy=True)
    eager = merge_dump(msgs, "wg0")
    for key, p in held.items():
        assert eager.peers[key].allowed_ips == p.allowed_ips
        assert eager.peers[key].endpoint == p.endpoint
        assert lazy.peers.unchanged(p)  # type: ignore[attr-defined]
    want = InterfaceConfig(peers=tuple({p.public_key: p for p in desired}.values()))

    def outcome(state: object) -> object:
        try:
            return plan(want, state, now=0.0)  # type: ignore[arg-type]
        except DesiredStateError as exc:  # a prefix in two desired peers: refused either way
            return str(exc)

    assert outcome(lazy) == outcome(eager)


def test_the_kernel_path_loads_no_pyroute2() -> None:
    """``ppn wg sync``/``show`` on a kernel interface: backend selection, the kernel backend and
    the interface listing import no pyroute2 (seconds under emulation, ~140 ms natively)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ppn.wg import _cli, _io_device, _io_kernel, select_backend\n"
        "from ppn.wg._io_device import interface_kind, list_kernel_interfaces\n"
        "interface_kind('lo'); list_kernel_interfaces()\n"
        "assert 'pyroute2' not in sys.modules, sorted(m for m in sys.modules if 'pyroute' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _kernel_layout_dump(
    peers: list[PeerConfig],
    *,
    handshake: int = 0,
    trailing: dict[bytes, str] | None = None,
    carry: bool = False,
) -> list[bytes]:
    """A dump as the module writes one (netlink.c get_peer): key, preshared key, handshake,
    keepalive, tx, rx, protocol version, then endpoint and allowed IPs; three peers a
    message, the last peer's allowed IPs past its second continued in the next message under
    its key alone: a message of its own, or with ``carry`` (as the module does when a message
    fills up) at the start of the next group's message."""
    import struct

    n_ = _netlink
    messages = []
    carried: list[bytes] = []
    for start in range(0, len(peers), 3):
        nests, carried = carried, []
        group = peers[start : start + 3]
        for p in group:
            attrs = n_._KEY_ATTR.pack(36, 1, p.public_key)
            attrs += n_._KEY_ATTR.pack(36, 2, p.preshared_key or bytes(32))
            attrs += n_._attr(6, struct.pack("=qq", handshake, 250_000_000 if handshake else 0))
            attrs += n_._attr(5, struct.pack("=H", p.persistent_keepalive))
            attrs += n_._attr(8, struct.pack("=Q", 4096)) + n_._attr(7, struct.pack("=Q", 8192))
            attrs += n_._attr(10, struct.pack("=I", 1))
            if p.endpoint is not None:
                attrs += n_._endpoint_attr(p.endpoint)
            texts = p.prefix_texts()[: 2 if p is group[-1] else None]
            attrs += n_._nest(9, [n_._allowed_from_text(t) for t in texts])
            if trailing and p.public_key in trailing:  # a second allowed-IPs nest after it
                attrs += n_._nest(9, [n_._allowed_from_text(trailing[p.public_key])])
            nests.append(n_._nest(0, [attrs]))
        body = n_._ifname("wg0") + n_._nest(8, nests)
        messages.append(n_._genl_message(FAMILY, 2, 1, 0, body))
        last = group[-1]
        if len(last.prefix_texts()) > 2:  # the rest, as a continuation
            rest = n_._nest(9, [n_._allowed_from_text(t) for t in last.prefix_texts()[2:]])
            more = n_._nest(0, [n_._KEY_ATTR.pack(36, 1, last.public_key) + rest])
            if carry and start + 3 < len(peers):
                carried = [more]
            else:
                body = n_._ifname("wg0") + n_._nest(8, [more])
                messages.append(n_._genl_message(FAMILY, 2, 1, 0, body))
    return messages


@settings(max_examples=200, deadline=None)
@given(device=st.lists(_peer_configs, max_size=6, unique_by=lambda p: p.public_key))
def test_the_module_s_peer_layout_is_read_in_one_unpack_and_agrees(
    device: list[PeerConfig],
) -> None:
    """The fast read of a peer in the module's layout gives what the attribute loop gives."""
    dump = _kernel_layout_dump(device, handshake=1_700_000_000)
    state = merge_dump(dump, "wg0")
    for p in device:
        got = state.peers[p.public_key]
        assert got.allowed_ips == p.allowed_ips and got.endpoint == p.endpoint
        assert got.persistent_keepalive == p.persistent_keepalive
        assert got.preshared_fingerprint == p.preshared_fingerprint
        assert got.last_handshake == 1_700_000_000.25 and (got.tx_bytes, got.rx_bytes) == (
            4096,
            8192,
        )
        assert merge_dump(dump, "wg0", lazy=True).peers.unchanged(p)  # type: ignore[attr-defined]
    # the attribute loop alone (the fast head switched off) reads the same state
    head = _netlink._KERNEL_HEAD_EXPECTED
    try:
        _netlink._KERNEL_HEAD_EXPECTED = ()  # type: ignore[assignment]
        assert merge_dump(dump, "wg0") == state
    finally:
        _netlink._KERNEL_HEAD_EXPECTED = head  # type: ignore[misc]


def test_the_fast_head_matches_the_module_s_layout() -> None:
    """The one-unpack read engages on the layout the module writes (or it would only cost)."""
    (msg,) = _kernel_layout_dump([PeerConfig(public_key=A, allowed_ips=(n("10.0.0.0/8"),))])
    first_peer = msg.index(A) - 4 - 4  # the peer nest's header, then the key attribute's
    head = _netlink._KERNEL_HEAD.unpack_from(msg, first_peer + 4)
    assert _netlink._KERNEL_HEAD_FRAME(head) == _netlink._KERNEL_HEAD_EXPECTED


_DEVICE_CHANGES = [
    "same", "keepalive", "psk", "endpoint", "no endpoint", "prefixes", "more", "order", "trailing",
]  # fmt: skip


def _changed(p: PeerConfig, change: str) -> PeerConfig:
    """``p`` as the device might hold it after someone else wrote to it."""
    import dataclasses

    texts = p.prefix_texts()
    if change == "keepalive":
        return dataclasses.replace(p, persistent_keepalive=25 - p.persistent_keepalive)
    if change == "psk":
        return dataclasses.replace(p, preshared_key=None if p.preshared_key else bytes([9]) * 32)
    if change == "endpoint":
        port = 1 if p.endpoint is None else p.endpoint.port % 65535 + 1
        return dataclasses.replace(p, endpoint=Endpoint(host="192.0.2.77", port=port))
    if change == "no endpoint":
        return dataclasses.replace(p, endpoint=None)
    if change == "prefixes":
        more = texts[:-1] if texts else ("10.99.0.0/16",)
        return dataclasses.replace(p, allowed_ips=tuple(ipaddress.ip_network(t) for t in more))
    if change == "more":  # one more at the end: continued in the next message if it is last
        more = (*texts, f"10.98.{p.public_key[0]}.0/24")
        return dataclasses.replace(p, allowed_ips=tuple(ipaddress.ip_network(t) for t in more))
    if change == "order" and len(texts) > 1:
        return dataclasses.replace(p, allowed_ips=tuple(reversed(p.allowed_ips)))
    return p


@settings(max_examples=400, deadline=None)
@given(
    device=st.lists(_peer_configs, max_size=6, unique_by=lambda p: p.public_key),
    changes=st.lists(
        st.sampled_from(_DEVICE_CHANGES),
        min_size=6,
        max_size=6,
    ),
    wanted=st.lists(
        st.sampled_from(["same", "keepalive", "psk", "endpoint", "no endpoint", "prefixes"]),
        min_size=6,
        max_size=6,
    ),
    carry=st.booleans(),
)
def test_a_remembered_peer_is_checked_on_bytes_and_never_changes_a_plan(
    device: list[PeerConfig], changes: list[str], wanted: list[str], carry: bool
) -> None:
    """A backend keeps, per peer, the desired object last found unchanged and the stable tail
    of its nest (``DumpMemo.matched``). Holding that desired state while the device changes
    under it (any stable field, and always the handshake time and counters), the next read's
    byte check plans exactly what a full decode plans."""
    import dataclasses

    from hypothesis import assume

    from ppn.wg import DesiredStateError, InterfaceConfig, plan

    want = InterfaceConfig(peers=tuple(device))
    memo = _netlink.DumpMemo()
    first = merge_dump(_kernel_layout_dump(device, carry=carry), "wg0", memo=memo, lazy=True)
    try:
        assert not plan(want, first, now=0.0)
    except DesiredStateError:  # a prefix in two peers: refused before any check
        assume(False)
    # every peer read from one nest in the module's layout is remembered with its object
    whole = {k for k, c in first.peers._index.items() if c >= 0}  # type: ignore[attr-defined]
    assert {k for k, (p, _tail) in memo.matched.items() if want.peer_map()[k] is p} == whole
    pairs = list(zip(device, changes, strict=False))
    held = [_changed(p, c) for p, c in pairs]
    more = {p.public_key: "10.98.0.0/16" for p, c in pairs if c == "trailing"}
    dump = _kernel_layout_dump(held, handshake=1_700_000_000, trailing=more, carry=carry)
    eager = merge_dump(dump, "wg0")
    cold = merge_dump(dump, "wg0", lazy=True).peers
    # the held objects, then ones built afresh (equal ones are recognised by value; the
    # others differ as ``wanted`` says), then the held ones again
    fresh = InterfaceConfig(
        peers=tuple(
            dataclasses.replace(_changed(p, c)) for p, c in zip(device, wanted, strict=False)
        )
    )

    def outcome(desired: InterfaceConfig, state: object, now: float) -> object:
        try:
            return plan(desired, state, now=now)  # type: ignore[arg-type]
        except DesiredStateError as exc:  # a prefix in two desired peers: refused either way
            return str(exc)

    for desired in (want, fresh, want):
        lazy = merge_dump(dump, "wg0", memo=memo, lazy=True)
        # messages taken as recorded (DumpMemo.pages) index as a cold read does
        assert lazy.peers._index == cold._index  # type: ignore[attr-defined]
        for now in (1_700_000_001.0, 1_800_000_000.0):  # the handshake fresh, then stale
            assert outcome(desired, lazy, now) == outcome(desired, eager, now)
        assert dict(lazy.peers.items()) == eager.peers


def test_an_unchanged_device_is_planned_without_decoding_a_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second read of an unchanged device (only its handshake times and counters moved)
    decodes no peer: each is recognised on bytes."""
    from ppn.wg import InterfaceConfig, plan

    peers = [
        PeerConfig(
            public_key=bytes([i]) * 32,
            allowed_ips=(n(f"10.0.{i}.0/24"), n(f"fd00::{i:x}/128")),
            endpoint=Endpoint(host=f"192.0.2.{i}", port=51820) if i % 2 else None,
            persistent_keepalive=25 if i % 3 else 0,
            preshared_key=bytes([i]) * 32 if i % 5 == 0 else None,
        )
        for i in range(1, 20)
    ]
    want = InterfaceConfig(peers=tuple(peers))
    memo = _netlink.DumpMemo()
    assert not plan(
        want, merge_dump(_kernel_layout_dump(peers), "wg0", memo=memo, lazy=True), now=0
    )
    decoded: list[int] = []
    real = _netlink._read_peer

    def counting(*args: object) -> None:
        decoded.append(1)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_netlink, "_read_peer", counting)
    dump = _kernel_layout_dump(peers, handshake=1_700_000_000)
    assert not plan(want, merge_dump(dump, "wg0", memo=memo, lazy=True), now=1_700_000_001)
    assert decoded == []
    # an equal desired object built afresh is recognised by value, and remembered instead
    import dataclasses

    fresh = dataclasses.replace(peers[0])
    again = InterfaceConfig(peers=(fresh, *peers[1:]))
    assert not plan(again, merge_dump(dump, "wg0", memo=memo, lazy=True), now=1_700_000_001)
    assert decoded == [] and memo.matched[fresh.public_key][0] is fresh
    # one whose endpoint differs is read (and planned: the device keeps the old endpoint)
    moved = dataclasses.replace(peers[0], endpoint=Endpoint(host="192.0.2.200", port=1))
    other = InterfaceConfig(peers=(moved, *peers[1:]))
    assert plan(other, merge_dump(dump, "wg0", memo=memo, lazy=True), now=1_800_000_000)
    assert decoded == [1]


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of ``_netlink.<name>`` (the real function still runs)."""
    calls: list[int] = []
    real = getattr(_netlink, name)

    def counted(*args: object) -> object:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_netlink, name, counted)
    return calls


def test_a_message_dumped_again_is_not_indexed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message of the dump that comes back the same (but for handshake times and counters)
    is taken as indexed last time: no peer of it is looked at again, but for the peers it
    continues from the message before (as the module lays out a full message, read and
    merged again on every read), and its peers' volatile fields are read from the new
    message. A message with a changed peer is indexed again, alone, and the change planned."""
    import dataclasses

    from ppn.wg import InterfaceConfig, plan

    peers = [
        PeerConfig(
            public_key=bytes([i]) * 32,
            allowed_ips=(n(f"10.0.{i}.0/24"), n(f"fd00::{i:x}/128"), n(f"10.1.{i}.0/24")),
            endpoint=Endpoint(host=f"192.0.2.{i}", port=51820) if i % 2 else None,
            persistent_keepalive=25 if i % 3 else 0,
            preshared_key=bytes([i]) * 32 if i % 5 == 0 else None,
        )
        for i in range(1, 20)
    ]  # 7 messages of up to 3 peers, each message's last peer continued in the next one

    def dump_of(held: list[PeerConfig], handshake: int = 0) -> list[bytes]:
        return _kernel_layout_dump(held, handshake=handshake, carry=True)

    continued = {peers[min(g + 2, len(peers) - 1)].public_key for g in range(0, len(peers), 3)}
    want = InterfaceConfig(peers=tuple(peers))
    memo = _netlink.DumpMemo()
    assert not plan(want, merge_dump(dump_of(peers), "wg0", memo=memo, lazy=True), now=0)
    indexed = indexed_messages(monkeypatch)
    decoded = decoded_keys(monkeypatch)
    dump = dump_of(peers, handshake=1_700_000_000)
    for _ in range(2):  # counters moved, then the same bytes again
        state = merge_dump(dump, "wg0", memo=memo, lazy=True)
        assert not plan(want, state, now=1_700_000_001)
        assert indexed == [] and set(decoded) == continued
        offered = state.peers.known_unchanged  # type: ignore[attr-defined]
        assert offered == {k: p for k, p in want.peer_map().items() if k not in continued}
        got = state.peers[peers[7].public_key]  # decoded now, from this read's message
        assert (got.last_handshake, got.tx_bytes, got.rx_bytes) == (1_700_000_000.25, 4096, 8192)
        assert got.allowed_ips == peers[7].allowed_ips and got.endpoint == peers[7].endpoint
        assert state.peers[peers[8].public_key].allowed_ips == peers[8].allowed_ips  # merged
        decoded.clear()
    # a desired state built afresh, equal: recognised by value, and the pages kept in step
    fresh = InterfaceConfig(peers=tuple(dataclasses.replace(p) for p in peers))
    assert not plan(fresh, merge_dump(dump, "wg0", memo=memo, lazy=True), now=1_700_000_001)
    decoded.clear()
    state = merge_dump(dump, "wg0", memo=memo, lazy=True)
    assert indexed == [] and set(decoded) == continued
    offered = state.peers.known_unchanged  # type: ignore[attr-defined]
    assert all(offered[k] is p for k, p in fresh.peer_map().items() if k not in continued)
    # someone else changes peer 5's keepalive (the second peer of the second message): that
    # message alone is indexed again (the others differ only in handshake times), and the
    # change is planned from that peer alone (and the continued ones)
    held = list(peers)
    for keepalive in (7, 8):
        decoded.clear()
        held[4] = dataclasses.replace(peers[4], persistent_keepalive=keepalive)
        state = merge_dump(dump_of(held, handshake=keepalive), "wg0", memo=memo, lazy=True)
        assert len(indexed) == 1
        (op,) = plan(fresh, state, now=1_700_000_010)
        assert op == UpdatePeer(public_key=peers[4].public_key, persistent_keepalive=25)
        assert set(decoded) == continued | {peers[4].public_key}
        indexed.clear()


def test_a_message_dumped_again_never_hides_a_peer_merged_before_it() -> None:
    """A peer whose nest comes back the same in its message, but now also appears in an
    earlier message, is merged from both (as a fresh read merges it), not taken as recorded."""
    a = PeerConfig(public_key=A, allowed_ips=(n("10.0.1.0/24"),))
    b = PeerConfig(public_key=B, allowed_ips=(n("10.0.2.0/24"),))
    c = PeerConfig(public_key=C, allowed_ips=(n("10.0.3.0/24"),))
    c_more = PeerConfig(public_key=C, allowed_ips=(n("10.0.33.0/24"),))
    first, second = _kernel_layout_dump([a, b, c, c])[:1], _kernel_layout_dump([c])
    memo = _netlink.DumpMemo()
    assert merge_dump(_kernel_layout_dump([a, b, a]) + second, "wg0", memo=memo).peers[
        C
    ].allowed_ips == (n("10.0.3.0/24"),)
    again = _kernel_layout_dump([a, b, c_more])[:1] + second
    assert first != again[:1]
    merged = merge_dump(again, "wg0", memo=memo, lazy=True).peers[C]
    assert merged.allowed_ips == (n("10.0.33.0/24"), n("10.0.3.0/24"))
    assert merged == merge_dump(again, "wg0").peers[C]


def _one_message(*nests: bytes) -> bytes:
    body = _netlink._ifname("wg0") + _netlink._nest(8, list(nests))
    return _netlink._genl_message(FAMILY, 2, 1, 0, body)


def _peer_nests(message: bytes) -> list[bytes]:
    """The peer nests (headers included) of one message of a dump."""
    headers = _netlink._HEADERS
    for kind, start, end in _netlink._attrs(message, headers):
        if kind == _netlink.WGDEVICE_A_PEERS:
            return [message[s - 4 : e] for _kind, s, e in _netlink._attrs(message, start, end)]
    return []


def _continuation(key: bytes, *texts: str) -> bytes:
    allowed = _netlink._nest(9, [_netlink._allowed_from_text(t) for t in texts])
    return _netlink._nest(0, [_netlink._KEY_ATTR.pack(36, 1, key) + allowed])


def test_a_peer_continued_in_the_same_message_is_never_clean() -> None:
    """A nest that matched what the backend remembers, followed in the same message by a
    continuation of that peer, does not make the peer clean, on a full read or a message
    taken as recorded: the continuation's allowed IPs count."""
    from ppn.wg import InterfaceConfig, plan

    a1 = PeerConfig(public_key=A, allowed_ips=(n("10.0.1.0/24"),))
    want = InterfaceConfig(peers=(a1,))
    memo = _netlink.DumpMemo()
    (alone,) = _kernel_layout_dump([a1])
    assert not plan(want, merge_dump([alone], "wg0", memo=memo, lazy=True), now=0)
    assert memo.matched[A][0] is a1
    split = [_one_message(*_peer_nests(alone), _continuation(A, "10.0.2.0/24"))]
    for _ in range(2):  # indexed, then taken as recorded
        state = merge_dump(split, "wg0", memo=memo, lazy=True)
        assert state.peers.known_unchanged == {}  # type: ignore[attr-defined]
        (op,) = plan(want, state, now=0)
        assert op == UpdatePeer(public_key=A, allowed_ips=(n("10.0.1.0/24"),))
        assert memo.pages  # the message is recorded, its continuation with it


def test_a_continuation_counts_only_while_its_peer_is_met_before() -> None:
    """A message recorded with a nest continuing a peer from the message before is indexed
    again when that peer is no longer in the message before: the nest is then the peer's
    first, located as a cold read locates it."""
    a = PeerConfig(public_key=A, allowed_ips=(n("10.0.1.0/24"),))
    b = PeerConfig(public_key=B, allowed_ips=(n("10.0.2.0/24"),))
    c = PeerConfig(public_key=C, allowed_ips=(n("10.0.3.0/24"), n("10.0.4.0/24"), n("10.0.5.0/24")))
    d = PeerConfig(public_key=bytes([0xD4]) * 32, allowed_ips=(n("10.0.6.0/24"),))
    e = PeerConfig(public_key=bytes([0xE5]) * 32, allowed_ips=(n("10.0.7.0/24"),))
    memo = _netlink.DumpMemo()
    first = _kernel_layout_dump([a, b, c, d], carry=True)  # [a, b, c...] [...c, d]
    assert len(first) == 2
    merge_dump(first, "wg0", memo=memo, lazy=True)
    again = _kernel_layout_dump([a, b, e], carry=True)[:1] + first[1:]  # [a, b, e] [...c, d]
    paged = merge_dump(again, "wg0", memo=memo, lazy=True).peers
    cold = merge_dump(again, "wg0", lazy=True).peers
    assert paged._index == cold._index  # type: ignore[attr-defined]
    assert cold._index[C] >= 0  # type: ignore[attr-defined]
    assert dict(paged.items()) == dict(cold.items())


def test_a_desired_state_parsed_again_is_recognised_by_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A config file parsed again (new, equal objects) is recognised by value: every peer
    then *is* the object its nest is clean for, in the read, the memo and the message's page
    (so the next read offers it), and none is decoded. A peer whose endpoint changed in the
    file is not taken for its old self, and is planned."""
    from ppn.wg import parse_config, plan

    lines = ["[Interface]\n"]
    for i in range(1, 12):
        lines.append(
            f"[Peer]\nPublicKey = {base64.b64encode(bytes([i]) * 32).decode()}\n"
            f"AllowedIPs = 10.0.{i}.0/24, fd00::{i:x}/128, 10.1.{i}.0/24\n"
            f"Endpoint = 192.0.2.{i}:51820\n"
        )
    text = "\n".join(lines)
    held = parse_config(text)
    memo = _netlink.DumpMemo()
    dump = _kernel_layout_dump(list(held.peers), carry=True)
    assert not plan(held, merge_dump(dump, "wg0", memo=memo, lazy=True), now=0)
    decoded = _counting(monkeypatch, "_read_peer")
    again = parse_config(text)
    state = merge_dump(dump, "wg0", memo=memo, lazy=True)
    assert not plan(again, state, now=0)
    continued = {p.public_key for p in held.peers[2::3]} | {held.peers[-1].public_key}
    assert len(decoded) == 2 * len(continued)  # only the continued peers' two nests, merged
    fresh = {k: p for k, p in again.peer_map().items() if k not in continued}
    offered = state.peers.known_unchanged  # type: ignore[attr-defined]
    assert all(offered[k] is p for k, p in fresh.items())
    assert all(memo.matched[k][0] is p for k, p in fresh.items())
    page_clean = {k: p for page in memo.pages.values() for k, p in page.clean.items()}
    assert all(page_clean[k] is p for k, p in fresh.items())
    # one endpoint changed in the file: that peer keeps its old object, and is planned
    moved = parse_config(text.replace("192.0.2.5:51820", "192.0.2.55:51820"))
    five = moved.peers[4]
    state = merge_dump(dump, "wg0", memo=memo, lazy=True)
    (op,) = plan(moved, state, now=0)
    assert op == UpdatePeer(public_key=five.public_key, endpoint=five.endpoint)
    assert state.peers.known_unchanged[five.public_key] is not five  # type: ignore[attr-defined]
