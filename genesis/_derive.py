"""Every value the ceremony derives from hashes: mesh id, CI, sid, AD, commitment, SAS, bundle keys.

All derivations are domain-separated by a label starting ``ppn-genesis/v1`` and use
length-prefixed concatenation (``lv``: 4-byte big-endian length, then the bytes), so no two
different inputs collide by shifting a boundary (RFC-NOTES §5.4).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ppn import wire

from ._errors import RemoteProtocolError

__all__ = [
    "LABEL",
    "PartyInfo",
    "bundle_keys",
    "commitment",
    "encode_ad",
    "decode_ad",
    "make_ci",
    "make_sid",
    "mesh_id_for",
    "render_sas",
    "sas_value",
    "transcript_hash",
]

LABEL = b"ppn-genesis/v1"
NONCE_SIZE = 16
MESH_ID_SIZE = 16
KEY_SIZE = 32
MAX_NAME = 63


def lv(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def mesh_id_for(genesis_identity: bytes) -> bytes:
    """The mesh id: ``SHA-256(lv("ppn-mesh-id/v1") || lv(genesis identity key))[:16]``."""
    return hashlib.sha256(lv(b"ppn-mesh-id/v1", genesis_identity)).digest()[:MESH_ID_SIZE]


def make_ci(mesh_id: bytes, window: int) -> bytes:
    """CPace channel identifier: protocol label, mesh id and window number."""
    return lv(LABEL, mesh_id, window.to_bytes(4, "big"))


def make_sid(joiner_nonce: bytes, sponsor_nonce: bytes) -> bytes:
    """A fresh session id both sides agree on from their first messages (16 bytes each)."""
    return hashlib.sha512(lv(LABEL + b" sid", joiner_nonce, sponsor_nonce)).digest()[:32]


@dataclass(frozen=True, kw_only=True)
class PartyInfo:
    """What each side binds into CPace's AD: node name, identity key, WireGuard public key."""

    name: str
    identity: bytes
    wg: bytes


def valid_name(name: str) -> bool:
    """Node names: 1-63 characters of ``a-z 0-9 -``, not starting or ending with ``-``."""
    return (
        0 < len(name) <= MAX_NAME
        and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789-" for ch in name)
        and not name.startswith("-")
        and not name.endswith("-")
    )


def encode_ad(info: PartyInfo) -> bytes:
    """AD bytes: canonical msgpack ``{"identity": bin32, "name": str, "wg": bin32}``."""
    return wire.pack_canonical({"identity": info.identity, "name": info.name, "wg": info.wg})


def decode_ad(data: bytes) -> PartyInfo:
    try:
        value = wire.unpack_canonical(data, max_size=256)
    except wire.WireError as exc:
        raise RemoteProtocolError("malformed AD") from exc
    if not isinstance(value, dict) or set(value) != {"identity", "name", "wg"}:
        raise RemoteProtocolError("malformed AD")
    identity, name, wg = value["identity"], value["name"], value["wg"]
    if not (isinstance(identity, bytes) and len(identity) == KEY_SIZE):
        raise RemoteProtocolError("malformed AD identity key")
    if not (isinstance(wg, bytes) and len(wg) == KEY_SIZE):
        raise RemoteProtocolError("malformed AD WireGuard key")
    if not (isinstance(name, str) and valid_name(name)):
        raise RemoteProtocolError("malformed AD node name")
    return PartyInfo(name=name, identity=identity, wg=wg)


def commitment(sid: bytes, share: bytes, ad: bytes) -> bytes:
    """The first speaker's commitment to its share and AD, sent before it sees the other's."""
    return hashlib.sha512(lv(LABEL + b" commit", sid, share, ad)).digest()


def transcript_hash(frames: list[bytes]) -> bytes:
    """SHA-512 over every payload exchanged up to key confirmation, in order."""
    return hashlib.sha512(lv(LABEL + b" transcript", *frames)).digest()


def _prf(isk: bytes, label: bytes, transcript: bytes) -> bytes:
    return hmac.new(isk, lv(LABEL + b" " + label, transcript), hashlib.sha512).digest()


def sas_value(isk: bytes, transcript: bytes, modulus: int) -> int:
    """The SAS as an integer below ``modulus`` (``10**digits``; the 512-bit PRF makes the bias
    negligible). Tests pass a smaller modulus, such as 256 for an 8-bit SAS."""
    return int.from_bytes(_prf(isk, b"sas", transcript), "big") % modulus


def render_sas(value: int, digits: int) -> str:
    """Decimal, zero-padded, in groups of three from the left: ``1234567`` -> ``123 4567``.

    A trailing group of one digit joins the group before it, so nothing is read alone.
    """
    text = f"{value:0{digits}d}"
    groups = [text[i : i + 3] for i in range(0, len(text), 3)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        last = groups.pop()
        groups[-1] += last
    return " ".join(groups)


def bundle_keys(isk: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """ChaCha20-Poly1305 keys (sponsor->joiner, joiner->sponsor), one per direction."""
    s2j = _prf(isk, b"bundle sponsor-to-joiner", transcript)[:32]
    j2s = _prf(isk, b"bundle joiner-to-sponsor", transcript)[:32]
    return s2j, j2s
