"""The CPace group environment G_X25519 with hash SHA-512 (draft-irtf-cfrg-cpace-21, 8.2).

X25519 itself is libsodium's (through PyNaCl's bindings); the generator is computed here with
the pure-Python Elligator 2 map.
"""

from __future__ import annotations

import hashlib
import secrets

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError

from ._cpace_elligator2 import elligator2_u
from ._cpace_strings import generator_string

__all__ = [
    "DSI",
    "DSI_ISK",
    "FIELD_SIZE_BITS",
    "FIELD_SIZE_BYTES",
    "H_S_IN_BYTES",
    "IDENTITY",
    "calculate_generator",
    "sample_scalar",
    "scalar_mult_vfy",
]

DSI = b"CPace255"  # G_X25519.DSI
DSI_ISK = DSI + b"_ISK"  # G.DSI || b"_ISK", the ISK hash's domain separator (section 7.2)
FIELD_SIZE_BYTES = 32
FIELD_SIZE_BITS = 255
H_S_IN_BYTES = 128  # SHA-512's input block size
IDENTITY = bytes(FIELD_SIZE_BYTES)  # G_X25519.I: X25519's all-zero output

_U_MASK = (1 << FIELD_SIZE_BITS) - 1


def calculate_generator(prs: bytes, ci: bytes, sid: bytes) -> bytes:
    """``G_X25519.calculate_generator(SHA-512, PRS, CI, sid)``: the 32-byte u-coordinate g.

    gen_str = generator_string(DSI, PRS, CI, sid, 128); the first 32 bytes of its SHA-512
    are decoded as an RFC 7748 u-coordinate (bit 255 cleared) and mapped with Elligator 2;
    the map's v-coordinate is not needed.
    """
    gen_str = generator_string(DSI, prs, ci, sid, H_S_IN_BYTES)
    gen_str_hash = hashlib.sha512(gen_str).digest()[:FIELD_SIZE_BYTES]
    u = int.from_bytes(gen_str_hash, "little") & _U_MASK
    return elligator2_u(u).to_bytes(FIELD_SIZE_BYTES, "little")


def sample_scalar() -> bytes:
    """``G_X25519.sample_scalar()``: 32 uniformly random bytes (X25519 clamps them)."""
    return secrets.token_bytes(FIELD_SIZE_BYTES)


def scalar_mult_vfy(scalar: bytes, u: bytes) -> bytes:
    """``G_X25519.scalar_mult(y, g) = scalar_mult_vfy(y, g) = X25519(y, g)`` (RFC 7748).

    Both inputs are 32 bytes. X25519 clamps the scalar and ignores bit 255 of ``u``.
    Returns :data:`IDENTITY` where RFC 7748's X25519 yields the all-zero string (``u`` of
    low order on the curve or its twist, including the non-canonical encodings of 0 and 1).
    libsodium refuses to return that value and signals an error instead, for exactly those
    inputs; translating the refusal back gives RFC 7748's result, so the caller's
    ``K == G.I`` check is where the protocol aborts, as the draft says.
    """
    try:
        return crypto_scalarmult(scalar, u)
    except CryptoError:
        return IDENTITY
