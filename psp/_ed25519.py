"""Ed25519 checks PSP makes beyond a bare verify: canonical keys, no small-order keys, S < L.

libsodium (under PyNaCl) already refuses most of these, but the protocol's guarantees should not
rest on one library version's defaults, and these checks are cheap set and integer comparisons.
Signatures are always made over ``context || message`` so a signature made for one purpose
(a capability link) can never be presented for another (an invocation).
"""

from __future__ import annotations

from ppn import verify_signature

__all__ = [
    "CONTEXT_INVOCATION",
    "CONTEXT_LINK",
    "SMALL_ORDER_KEYS",
    "public_key_ok",
    "signature_shape_ok",
    "verify_in_context",
]

CONTEXT_LINK = b"PSP-v1 capability link\x00"
CONTEXT_INVOCATION = b"PSP-v1 invocation\x00"

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493

# Every encoding of a point of order 1, 2, 4 or 8 (canonical, with the sign bit flipped where x=0,
# and with y + p where that still fits), as libsodium's blocklist. tests/psp checks the list by
# recomputing the torsion subgroup.
SMALL_ORDER_KEYS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)


def public_key_ok(key: bytes) -> bool:
    """32 bytes, y coordinate canonical (< p), and not a small-order point."""
    if len(key) != 32 or key in SMALL_ORDER_KEYS:
        return False
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    return y < _P


def signature_shape_ok(signature: bytes) -> bool:
    """64 bytes with a canonical scalar S < L (no malleable second encoding)."""
    return len(signature) == 64 and int.from_bytes(signature[32:], "little") < _L


def verify_in_context(public: bytes, context: bytes, message: bytes, signature: bytes) -> bool:
    if not public_key_ok(public) or not signature_shape_ok(signature):
        return False
    return verify_signature(public, context + message, signature)
