"""Derived identifiers: a node's id from its identity key, a mesh's id from its genesis node's.

Both are the first 16 bytes of ``SHA-256(lv(label) || lv(public key))`` where ``lv`` prefixes
each part with its 4-byte big-endian length (RFC-NOTES §7.1). The mesh id is exactly the one the
join ceremony derives (``genesis._derive.mesh_id_for``, RFC-NOTES §5), so a ceremony's mesh id
and the roster's agree; the node id uses its own label, so the two can never be confused.
"""

from __future__ import annotations

import hashlib
import ipaddress

__all__ = ["ID_SIZE", "control_network", "mesh_id", "node_address6", "node_id", "short_id"]

ID_SIZE = 16
_NODE_LABEL = b"ppn-node-id/v1"
_MESH_LABEL = b"ppn-mesh-id/v1"


def _lv(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def _derive(label: bytes, identity_public: bytes) -> bytes:
    if len(identity_public) != 32:
        raise ValueError("an identity public key is 32 bytes")
    return hashlib.sha256(_lv(label) + _lv(identity_public)).digest()[:ID_SIZE]


def node_id(identity_public: bytes) -> bytes:
    """The 16-byte node id of the member whose Ed25519 public key is ``identity_public``."""
    return _derive(_NODE_LABEL, identity_public)


def mesh_id(genesis_identity_public: bytes) -> bytes:
    """The 16-byte id of the mesh founded by the node with this Ed25519 public key."""
    return _derive(_MESH_LABEL, genesis_identity_public)


def short_id(ident: bytes) -> str:
    """The first 8 hex digits of an id, as operators see it in status output."""
    return ident.hex()[:8]


def control_network(mesh: bytes) -> str:
    """The mesh's IPv6 control network: ``fd`` + the mesh id's first 5 bytes as a ULA /48,
    subnet 0, as a /64 (RFC 4193 shape; RFC-NOTES §7.1)."""
    if len(mesh) != ID_SIZE:
        raise ValueError("a mesh id is 16 bytes")
    raw = b"\xfd" + mesh[:5] + b"\x00\x00" + bytes(8)
    return f"{ipaddress.IPv6Address(raw)}/64"


def node_address6(mesh: bytes, identity_public: bytes) -> str:
    """A member's control address: the mesh's control network with the node id's first 8 bytes
    as interface id. It derives from keys alone, so no two members ever share it — PPN control
    keeps working for a member whose IPv4 mesh address lost a conflict (RFC-NOTES §7.6)."""
    if len(mesh) != ID_SIZE:
        raise ValueError("a mesh id is 16 bytes")
    raw = b"\xfd" + mesh[:5] + b"\x00\x00" + node_id(identity_public)[:8]
    return str(ipaddress.IPv6Address(raw))
