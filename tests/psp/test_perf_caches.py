"""The hot-path caches never turn a refusal into an admission (or the reverse)."""

from __future__ import annotations

import pytest

from ppn import IdentityKey
from psp import Query, QueryError, Scope, Verifier, admit, invoke, mint

NOW = 1_800_000_000


def _setup() -> tuple[IdentityKey, IdentityKey, Verifier]:
    vault, holder = IdentityKey.from_seed(b"\x01" * 32), IdentityKey.from_seed(b"\x02" * 32)
    return vault, holder, Verifier(vault.public)


def _cap(vault: IdentityKey, holder: IdentityKey, scope: Scope, nonce: bytes):  # type: ignore[no-untyped-def]
    return mint(
        vault, audience=holder.public, scope=scope, not_before=0, expires=NOW + 999, nonce=nonce
    )


def test_a_remembered_permit_is_per_chain() -> None:
    vault, holder, verifier = _setup()
    wide = _cap(vault, holder, Scope(vaults=(vault.public,)), b"w" * 16)
    narrow = _cap(vault, holder, Scope(vaults=(vault.public,), collections=("other",)), b"n" * 16)
    q = Query(collection="people", limit=5).encode()
    for i in range(2):  # the second admission comes from the cache
        env = invoke(
            wide, holder, vaults=[vault.public], query_bytes=q, now=NOW, nonce=bytes([i]) * 16
        )
        admitted = admit(verifier, env.raw, q, now=NOW)
        assert admitted.row_limit == 5 and admitted.query.collection == "people"
    assert len(verifier.permits) == 1
    env = invoke(narrow, holder, vaults=[vault.public], query_bytes=q, now=NOW, nonce=b"x" * 16)
    with pytest.raises(QueryError):
        admit(verifier, env.raw, q, now=NOW)
    assert len(verifier.permits) == 1  # refusals are not remembered


def test_permits_are_bounded() -> None:
    vault, holder, _ = _setup()
    verifier = Verifier(vault.public, cache_size=3)
    cap = _cap(vault, holder, Scope(vaults=(vault.public,)), b"c" * 16)
    for i in range(6):
        q = Query(collection="people", limit=i + 1).encode()
        env = invoke(
            cap, holder, vaults=[vault.public], query_bytes=q, now=NOW, nonce=bytes([i]) * 16
        )
        assert admit(verifier, env.raw, q, now=NOW).row_limit == i + 1
    assert len(verifier.permits) == 3
