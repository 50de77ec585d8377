from __future__ import annotations

import pytest

from ppn import (
    IdentityKey,
    KeyFormatError,
    WireGuardKeyPair,
    decode_key,
    encode_key,
    verify_signature,
)


def test_wireguard_pair_matches_known_clamping() -> None:
    pair = WireGuardKeyPair.from_private(bytes(range(32)))
    assert pair.private[0] & 7 == 0 and pair.private[31] & 0x80 == 0 and pair.private[31] & 0x40
    assert decode_key(pair.public_b64) == pair.public
    assert "private" not in repr(pair) or "bytes(range" not in repr(pair)
    assert pair.private.hex() not in repr(pair)


@pytest.mark.parametrize(
    "text", ["", "abc", "A" * 44, "!" * 43 + "=", encode_key(bytes(32))[:-2] + "B="]
)
def test_bad_keys_rejected(text: str) -> None:
    with pytest.raises(KeyFormatError):
        decode_key(text)


def test_identity_sign_verify() -> None:
    key = IdentityKey.generate()
    sig = key.sign(b"hello")
    assert verify_signature(key.public, b"hello", sig)
    assert not verify_signature(key.public, b"hellp", sig)
    assert not verify_signature(key.public, b"hello", sig[:-1])
    assert key.seed.hex() not in repr(key)


def test_wireguard_public_key_matches_cryptography() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    pair = WireGuardKeyPair.generate()
    expected = X25519PrivateKey.from_private_bytes(pair.private).public_key().public_bytes_raw()
    assert pair.public == expected
