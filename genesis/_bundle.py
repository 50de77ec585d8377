"""The join bundles exchanged after both operators confirmed, and their AEAD sealing.

Sponsor -> joiner: mesh id, mesh CIDR, the joiner's address and roles, the sponsor's identity and
the roster (one member record per node). Joiner -> sponsor: its endpoints. Then a sealed
``done``. Each direction has its own ChaCha20-Poly1305 key derived from the ISK, and nonces are a
per-direction message counter, so no (key, nonce) pair is ever used twice (RFC-NOTES §5.6).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ppn import wire

from ._derive import KEY_SIZE, LABEL, MESH_ID_SIZE, valid_name
from ._errors import RemoteProtocolError

__all__ = [
    "JoinerBundle",
    "MemberRecord",
    "SponsorBundle",
    "lowest_free_address",
    "member_from_value",
    "member_to_value",
    "open_box",
    "parse_endpoint",
    "seal_box",
]

MAX_MEMBERS = 1024
MAX_ENDPOINTS = 8
MAX_ROLES = 8
MAX_TEXT = 255


def parse_endpoint(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6). Raises ValueError when malformed."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT:
        raise ValueError("an endpoint is HOST:PORT")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 endpoint is [ADDRESS]:PORT")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("an endpoint is HOST:PORT")
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
        if not set(host) <= allowed:
            raise ValueError("an endpoint host is an IP address or a DNS name")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("an endpoint port is 1..65535")
    return host, int(port_text)


@dataclass(frozen=True, kw_only=True)
class MemberRecord:
    """One node of the mesh as the roster records it."""

    name: str
    identity: bytes
    wg: bytes
    address: str
    endpoints: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


def member_to_value(member: MemberRecord) -> dict[str, Any]:
    return {
        "name": member.name,
        "identity": member.identity,
        "wg": member.wg,
        "address": member.address,
        "endpoints": list(member.endpoints),
        "roles": list(member.roles),
    }


def _text_list(value: Any, limit: int, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise RemoteProtocolError(f"{what} must be a short list")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in value):
        raise RemoteProtocolError(f"{what} must be short texts")
    return tuple(value)


def member_from_value(value: Any) -> MemberRecord:
    """Validate one member record (raises :class:`RemoteProtocolError`)."""
    keys = {"name", "identity", "wg", "address", "endpoints", "roles"}
    if not isinstance(value, dict) or set(value) != keys:
        raise RemoteProtocolError("malformed member record")
    name, identity, wg, address = value["name"], value["identity"], value["wg"], value["address"]
    if not isinstance(name, str) or not valid_name(name):
        raise RemoteProtocolError("malformed member name")
    for key in (identity, wg):
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise RemoteProtocolError("malformed member key")
    if not isinstance(address, str):
        raise RemoteProtocolError("malformed member address")
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise RemoteProtocolError("malformed member address") from exc
    endpoints = _text_list(value["endpoints"], MAX_ENDPOINTS, "endpoints")
    for endpoint in endpoints:
        try:
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise RemoteProtocolError("malformed member endpoint") from exc
    return MemberRecord(
        name=name,
        identity=identity,
        wg=wg,
        address=address,
        endpoints=endpoints,
        roles=_text_list(value["roles"], MAX_ROLES, "roles"),
    )


@dataclass(frozen=True, kw_only=True)
class SponsorBundle:
    """What the sponsor grants: the joiner's place in the mesh and the current roster."""

    mesh_id: bytes
    cidr: str
    address: str
    roles: tuple[str, ...]
    sponsor: bytes
    roster: tuple[MemberRecord, ...]

    def to_bytes(self) -> bytes:
        return wire.pack_canonical(
            {
                "mesh": self.mesh_id,
                "cidr": self.cidr,
                "address": self.address,
                "roles": list(self.roles),
                "sponsor": self.sponsor,
                "roster": [member_to_value(m) for m in self.roster],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SponsorBundle:
        try:
            value = wire.unpack_canonical(data, max_depth=4)
        except wire.WireError as exc:
            raise RemoteProtocolError("malformed join bundle") from exc
        keys = {"mesh", "cidr", "address", "roles", "sponsor", "roster"}
        if not isinstance(value, dict) or set(value) != keys:
            raise RemoteProtocolError("malformed join bundle")
        mesh, sponsor, roster = value["mesh"], value["sponsor"], value["roster"]
        if not isinstance(mesh, bytes) or len(mesh) != MESH_ID_SIZE:
            raise RemoteProtocolError("malformed mesh id")
        if not isinstance(sponsor, bytes) or len(sponsor) != KEY_SIZE:
            raise RemoteProtocolError("malformed sponsor identity")
        if not isinstance(roster, list) or not 0 < len(roster) <= MAX_MEMBERS:
            raise RemoteProtocolError("malformed roster")
        if not (isinstance(value["cidr"], str) and isinstance(value["address"], str)):
            raise RemoteProtocolError("malformed mesh CIDR or address")
        try:
            ipaddress.ip_network(value["cidr"], strict=True)
            ipaddress.ip_address(value["address"])
        except (ValueError, TypeError) as exc:
            raise RemoteProtocolError("malformed mesh CIDR or address") from exc
        return cls(
            mesh_id=mesh,
            cidr=value["cidr"],
            address=value["address"],
            roles=_text_list(value["roles"], MAX_ROLES, "roles"),
            sponsor=sponsor,
            roster=tuple(member_from_value(m) for m in roster),
        )


@dataclass(frozen=True, kw_only=True)
class JoinerBundle:
    """What the joiner tells the sponsor after both confirmed: where to reach it."""

    endpoints: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return wire.pack_canonical({"endpoints": list(self.endpoints)})

    @classmethod
    def from_bytes(cls, data: bytes) -> JoinerBundle:
        try:
            value = wire.unpack_canonical(data, max_depth=2)
        except wire.WireError as exc:
            raise RemoteProtocolError("malformed joiner bundle") from exc
        if not isinstance(value, dict) or set(value) != {"endpoints"}:
            raise RemoteProtocolError("malformed joiner bundle")
        endpoints = _text_list(value["endpoints"], MAX_ENDPOINTS, "endpoints")
        for endpoint in endpoints:
            try:
                parse_endpoint(endpoint)
            except ValueError as exc:
                raise RemoteProtocolError("malformed endpoint") from exc
        return cls(endpoints=endpoints)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


def seal_box(key: bytes, counter: int, kind: str, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 with nonce = 96-bit counter and AAD = label || kind."""
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, LABEL + b" " + kind.encode())


def open_box(key: bytes, counter: int, kind: str, box: bytes) -> bytes:
    """Open a sealed box; any failure is one detail-free :class:`RemoteProtocolError`."""
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), box, LABEL + b" " + kind.encode())
    except (InvalidTag, ValueError) as exc:
        raise RemoteProtocolError("sealed message did not authenticate") from exc


def lowest_free_address(
    cidr: str, roster: tuple[MemberRecord, ...], *, also_taken: Iterable[str] = ()
) -> str | None:
    """The lowest host address of ``cidr`` no member holds and not in ``also_taken`` (the
    signed roster's addresses, RFC-NOTES §7.5); None when the mesh is full."""
    network = ipaddress.ip_network(cidr)
    taken = {ipaddress.ip_address(m.address) for m in roster}
    taken.update(ipaddress.ip_address(a) for a in also_taken)
    for address in network.hosts():
        if address not in taken:
            return str(address)
    return None
