"""WireGuard generic-netlink messages (the kernel backend), sans I/O.

The layout is pyroute2's ``wgmsg`` (``uapi/wireguard.h``), written here as plain attribute
lists so this core needs no pyroute2 (importing pyroute2 loads asyncio, sqlite3 and socket);
:mod:`ppn.wg._io_kernel` wraps the lists into ``wgmsg`` objects and owns the socket.

* :func:`set_device_attrs` turns operations into the attribute lists of ``WG_CMD_SET_DEVICE``
  messages, batching many peers per message under a size budget. A peer whose allowed IPs do
  not fit is continued in the next message with ``WGPEER_F_UPDATE_ONLY`` and without
  ``REPLACE_ALLOWEDIPS`` (as wg(8) does), so the continuation appends instead of wiping the
  first part.
* :func:`merge_dump` folds the messages of a ``WG_CMD_GET_DEVICE`` dump into one
  :class:`DeviceState`. The kernel splits a large device over several messages, and one peer's
  allowed IPs may straddle two of them: chunks are merged by public key. The private key is
  turned into the public key and dropped as it is read.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._errors import LocalProtocolError
from ._model import (
    DeviceState,
    Endpoint,
    IPNetwork,
    PeerState,
    UAPIProtocolError,
    key_fingerprint,
    public_key_of,
)
from ._plan import AddPeer, Operation, RemovePeer, SetInterface

__all__ = [
    "MESSAGE_BUDGET",
    "WG_CMD_SET_DEVICE",
    "WG_GENL_VERSION",
    "WGPEER_F_REMOVE_ME",
    "WGPEER_F_REPLACE_ALLOWEDIPS",
    "WGPEER_F_UPDATE_ONLY",
    "merge_dump",
    "set_device_attrs",
]

# uapi/wireguard.h (the kernel ABI; a test holds them equal to pyroute2's copies).
WG_CMD_SET_DEVICE = 1
WG_GENL_VERSION = 1
WGPEER_F_REMOVE_ME = 1 << 0
WGPEER_F_REPLACE_ALLOWEDIPS = 1 << 1
WGPEER_F_UPDATE_ONLY = 1 << 2

# Stay well under the kernel's per-message limits and a default socket buffer.
MESSAGE_BUDGET = 16 * 1024
_ALLOWED_IP_SIZE = 4 + 8 + 20 + 8  # nest + family + address + mask, with headers
_PEER_BASE_SIZE = 4 + 36 + 36 + 8 + 32 + 8  # nest + keys + flags + endpoint + keepalive


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _allowed_attr(net: IPNetwork) -> dict[str, Any]:
    family = 2 if net.version == 4 else 10
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", family],
            ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
            ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen],
        ]
    }


def _endpoint_attr(endpoint: Endpoint) -> list[Any]:
    if not endpoint.is_literal:
        raise LocalProtocolError(f"endpoint {endpoint} must be resolved to an address first")
    return ["WGPEER_A_ENDPOINT", {"addr": endpoint.host, "port": endpoint.port}]


def _peer_chunks(op: Operation) -> list[list[list[Any]]]:
    """The attribute lists of one peer operation, split so each fits a message."""
    if isinstance(op, RemovePeer):
        return [
            [["WGPEER_A_PUBLIC_KEY", _b64(op.public_key)], ["WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME]]
        ]
    head: list[list[Any]] = []
    if isinstance(op, AddPeer):
        p = op.peer
        key = p.public_key
        flags = WGPEER_F_REPLACE_ALLOWEDIPS
        if p.preshared_key is not None:
            head.append(["WGPEER_A_PRESHARED_KEY", _b64(p.preshared_key)])
        if p.endpoint is not None:
            head.append(_endpoint_attr(p.endpoint))
        if p.persistent_keepalive:
            head.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", p.persistent_keepalive])
        nets: Sequence[IPNetwork] | None = p.allowed_ips
    else:
        assert not isinstance(op, SetInterface)
        key = op.public_key
        flags = WGPEER_F_UPDATE_ONLY
        if op.preshared_key is not None:
            head.append(["WGPEER_A_PRESHARED_KEY", _b64(op.preshared_key)])
        if op.endpoint is not None:
            head.append(_endpoint_attr(op.endpoint))
        if op.persistent_keepalive is not None:
            head.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", op.persistent_keepalive])
        nets = op.allowed_ips
        if nets is not None:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
    per_chunk = max(1, (MESSAGE_BUDGET - _PEER_BASE_SIZE - 64) // _ALLOWED_IP_SIZE)
    all_nets = list(nets or ())
    first: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", _b64(key)], ["WGPEER_A_FLAGS", flags], *head]
    if nets is not None:
        first.append(["WGPEER_A_ALLOWEDIPS", [_allowed_attr(n) for n in all_nets[:per_chunk]]])
    chunks = [first]
    for start in range(per_chunk, len(all_nets), per_chunk):
        chunks.append(
            [
                ["WGPEER_A_PUBLIC_KEY", _b64(key)],
                ["WGPEER_A_FLAGS", WGPEER_F_UPDATE_ONLY],
                [
                    "WGPEER_A_ALLOWEDIPS",
                    [_allowed_attr(n) for n in all_nets[start : start + per_chunk]],
                ],
            ]
        )
    return chunks


def _chunk_size(attrs: list[list[Any]]) -> int:
    size = _PEER_BASE_SIZE
    for name, value in attrs:
        if name == "WGPEER_A_ALLOWEDIPS":
            size += _ALLOWED_IP_SIZE * len(value)
    return size


def set_device_attrs(interface: str, ops: Iterable[Operation]) -> list[list[list[Any]]]:
    """The attribute lists of the ``WG_CMD_SET_DEVICE`` messages for ``ops``, in order, batched
    under the budget (empty when there is nothing to do). Each list starts with the interface's
    name; the command, version and headers are the socket side's to add.
    """
    device: list[list[Any]] = []
    peer_chunks: list[list[list[Any]]] = []
    for op in ops:
        if isinstance(op, SetInterface):
            if op.private_key is not None:
                device.append(["WGDEVICE_A_PRIVATE_KEY", _b64(op.private_key)])
            if op.listen_port is not None:
                device.append(["WGDEVICE_A_LISTEN_PORT", op.listen_port])
            if op.fwmark is not None:
                device.append(["WGDEVICE_A_FWMARK", op.fwmark])
        else:
            peer_chunks.extend(_peer_chunks(op))
    current: list[list[Any]] = [["WGDEVICE_A_IFNAME", interface], *device]
    messages = [current]
    batch: list[dict[str, Any]] = []
    used = 64
    for chunk in peer_chunks:
        size = _chunk_size(chunk)
        if batch and used + size > MESSAGE_BUDGET:
            current.append(["WGDEVICE_A_PEERS", batch])
            current = [["WGDEVICE_A_IFNAME", interface]]
            messages.append(current)
            batch, used = [], 64
        batch.append({"attrs": chunk})
        used += size
    if batch:
        current.append(["WGDEVICE_A_PEERS", batch])
    if len(messages) == 1 and not device and not batch:
        return []
    return messages


def _key_of(value: Any, what: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise UAPIProtocolError(f"{what} in a netlink dump is not a key") from None
    if len(raw) != 32:
        raise UAPIProtocolError(f"{what} in a netlink dump is not 32 bytes")
    return raw


def _attrs(obj: Any) -> Mapping[str, Any]:
    """pyroute2 nla → {name: value}, keeping the last value of repeated attributes."""
    return {name: value for name, value, *_ in obj["attrs"]}


def merge_dump(messages: Iterable[Any], name: str) -> DeviceState:
    """One :class:`DeviceState` from the (decoded) messages of a ``WG_CMD_GET_DEVICE`` dump."""
    public_key: bytes | None = None
    listen_port = 0
    fwmark = 0
    peers: dict[bytes, dict[str, Any]] = {}
    allowed: dict[bytes, list[IPNetwork]] = {}
    for msg in messages:
        attrs = _attrs(msg)
        if "WGDEVICE_A_PRIVATE_KEY" in attrs:
            private = _key_of(attrs["WGDEVICE_A_PRIVATE_KEY"], "private key")
            public_key = None if private == bytes(32) else public_key_of(private)
            del private
        elif "WGDEVICE_A_PUBLIC_KEY" in attrs:
            key = _key_of(attrs["WGDEVICE_A_PUBLIC_KEY"], "public key")
            public_key = None if key == bytes(32) else key
        if "WGDEVICE_A_LISTEN_PORT" in attrs:
            listen_port = int(attrs["WGDEVICE_A_LISTEN_PORT"])
        if "WGDEVICE_A_FWMARK" in attrs:
            fwmark = int(attrs["WGDEVICE_A_FWMARK"])
        for peer in attrs.get("WGDEVICE_A_PEERS") or ():
            p = _attrs(peer)
            key = _key_of(p.get("WGPEER_A_PUBLIC_KEY"), "peer public key")
            fields = peers.setdefault(key, {})
            nets = allowed.setdefault(key, [])
            if "WGPEER_A_PRESHARED_KEY" in p:
                psk = _key_of(p["WGPEER_A_PRESHARED_KEY"], "preshared key")
                fields["preshared_fingerprint"] = None if psk == bytes(32) else key_fingerprint(psk)
                del psk
            endpoint = p.get("WGPEER_A_ENDPOINT")
            if endpoint and endpoint.get("port"):
                fields["endpoint"] = Endpoint(
                    host=str(endpoint["addr"]), port=int(endpoint["port"])
                )
            if "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL" in p:
                fields["persistent_keepalive"] = int(p["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"])
            handshake = p.get("WGPEER_A_LAST_HANDSHAKE_TIME")
            if handshake is not None:
                sec, nsec = int(handshake["tv_sec"]), int(handshake["tv_nsec"])
                fields["last_handshake"] = None if sec == 0 and nsec == 0 else sec + nsec / 1e9
            if "WGPEER_A_RX_BYTES" in p:
                fields["rx_bytes"] = int(p["WGPEER_A_RX_BYTES"])
            if "WGPEER_A_TX_BYTES" in p:
                fields["tx_bytes"] = int(p["WGPEER_A_TX_BYTES"])
            if "WGPEER_A_PROTOCOL_VERSION" in p:
                fields["protocol_version"] = int(p["WGPEER_A_PROTOCOL_VERSION"])
            for entry in p.get("WGPEER_A_ALLOWEDIPS") or ():
                try:
                    nets.append(ipaddress.ip_network(entry["addr"], strict=False))
                except (KeyError, ValueError):
                    raise UAPIProtocolError(
                        "an allowed IP in a netlink dump is malformed"
                    ) from None
    states = {
        key: PeerState(public_key=key, allowed_ips=tuple(dict.fromkeys(allowed[key])), **fields)
        for key, fields in peers.items()
    }
    return DeviceState(
        name=name, public_key=public_key, listen_port=listen_port, fwmark=fwmark, peers=states
    )
