"""Key material every node holds: a WireGuard (X25519) key pair and an Ed25519 identity key.

WireGuard keys are shown base64-encoded, as ``wg`` prints them; identity keys likewise. Parsing
is strict: wrong length or alphabet is a :class:`KeyFormatError` with a sentence that says so.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ._errors import PPNError

__all__ = [
    "IdentityKey",
    "KeyFormatError",
    "WireGuardKeyPair",
    "decode_key",
    "encode_key",
    "verify_signature",
]

KEY_SIZE = 32


class KeyFormatError(PPNError, ValueError):
    """A key string that is not 32 bytes of standard base64."""


def encode_key(raw: bytes) -> str:
    """Base64 of a 32-byte key, as ``wg`` prints it (44 characters ending in ``=``)."""
    if len(raw) != KEY_SIZE:
        raise KeyFormatError(f"a key is {KEY_SIZE} bytes, not {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str) -> bytes:
    """Parse a base64 key as ``wg`` prints it. Rejects anything that is not exactly 32 bytes."""
    text = text.strip()
    if len(text) != 44 or not text.endswith("="):
        raise KeyFormatError("a key is 44 base64 characters ending in '='")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError("a key must be standard base64") from exc
    if len(raw) != KEY_SIZE or base64.b64encode(raw).decode("ascii") != text:
        raise KeyFormatError("a key must be the canonical base64 of 32 bytes")
    return raw


@dataclass(frozen=True, kw_only=True)
class WireGuardKeyPair:
    """An X25519 key pair as WireGuard uses it. The private half never appears in ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> WireGuardKeyPair:
        return cls.from_private(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def from_private(cls, private: bytes) -> WireGuardKeyPair:
        if len(private) != KEY_SIZE:
            raise KeyFormatError(f"a private key is {KEY_SIZE} bytes")
        # Clamp as `wg genkey` does so the stored key is the one every implementation uses.
        clamped = bytearray(private)
        clamped[0] &= 248
        clamped[31] = (clamped[31] & 127) | 64
        # Imported here: key types are used by every command family, the crypto backends are
        # needed by few, and loading them costs tens of milliseconds of start-up.
        from nacl.bindings import crypto_scalarmult_base

        return cls(private=bytes(clamped), public=crypto_scalarmult_base(bytes(clamped)))

    @property
    def public_b64(self) -> str:
        return encode_key(self.public)


@dataclass(frozen=True, kw_only=True)
class IdentityKey:
    """A node's or holder's Ed25519 signing key. ``public`` is the 32-byte verify key."""

    seed: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls.from_seed(secrets.token_bytes(KEY_SIZE))

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKey:
        if len(seed) != KEY_SIZE:
            raise KeyFormatError(f"an identity seed is {KEY_SIZE} bytes")
        from nacl.signing import SigningKey

        return cls(seed=seed, public=bytes(SigningKey(seed).verify_key))

    @cached_property
    def _signing_key(self) -> Any:
        # Expanding the seed costs as much as a signature: do it once per key object.
        from nacl.signing import SigningKey

        return SigningKey(self.seed)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message``."""
        return bytes(self._signing_key.sign(message).signature)

    @property
    def public_b64(self) -> str:
        return encode_key(self.public)


def verify_signature(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature by ``public`` over ``message``."""
    if len(public) != KEY_SIZE or len(signature) != 64:
        return False
    from nacl.signing import VerifyKey

    try:
        VerifyKey(public).verify(message, signature)
    except Exception:  # nacl raises BadSignatureError and, for bad keys, others
        return False
    return True
