"""Derived identifiers: a node's id from its identity key, a mesh's id from its genesis node's.

Both are the first 16 bytes of ``SHA-256(lv(label) || lv(public key))`` where ``lv`` prefixes
each part with its 4-byte big-endian length (RFC-NOTES §7.1). The mesh id is exactly the one the
join ceremony derives (``genesis._derive.mesh_id_for``, RFC-NOTES §5), so a ceremony's mesh id
and the roster's agree; the node id uses its own label, so the two can never be confused.
"""

from __future__ import annotations

import hashlib

__all__ = ["ID_SIZE", "mesh_id", "node_id", "short_id"]

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
