"""Mesh addressing: the mesh CIDR, the genesis node's address, and lowest-free allocation.

Default CIDR 10.8.0.0/24; the genesis node takes the first host address; a sponsor gives a new
member the lowest host address no roster record claims (RFC-NOTES §7.5).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .._errors import LocalProtocolError

__all__ = [
    "DEFAULT_CIDR",
    "AddressSpaceExhausted",
    "MeshNetwork",
    "first_host",
    "is_host_address",
    "lowest_free",
    "parse_cidr",
]

DEFAULT_CIDR = "10.8.0.0/24"

MeshNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressSpaceExhausted(LocalProtocolError):
    """Every host address of the mesh CIDR is already claimed."""


def parse_cidr(text: str) -> MeshNetwork:
    """A mesh CIDR such as ``10.8.0.0/24`` (host bits must be zero; at least two host addresses)."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise LocalProtocolError(f"{text!r} is not a network address with a prefix length") from exc
    if network.num_addresses < 4:
        raise LocalProtocolError("a mesh CIDR needs room for at least two host addresses")
    return network


def _hosts(network: MeshNetwork) -> Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    # ``hosts()`` already excludes the network (and, for IPv4, broadcast) address.
    return network.hosts()


def first_host(network: MeshNetwork) -> str:
    """The genesis node's mesh address: the first host address of the CIDR."""
    return str(next(iter(_hosts(network))))


def is_host_address(network: MeshNetwork, address: str) -> bool:
    """True when ``address`` is a usable host address inside ``network``."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if parsed.version != network.version or parsed not in network:
        return False
    if parsed == network.network_address:
        return False
    return not (isinstance(network, ipaddress.IPv4Network) and parsed == network.broadcast_address)


def lowest_free(network: MeshNetwork, taken: Iterable[str]) -> str:
    """The lowest host address of ``network`` not in ``taken``."""
    claimed = set(taken)
    for host in _hosts(network):
        text = str(host)
        if text not in claimed:
            return text
    raise AddressSpaceExhausted(f"every address of {network} is taken")
