"""Capability model units: key checks, scope narrowing, the verifier's caches, and fuzzing of
every decoder (envelopes, capabilities, queries): only the protocol's own errors may escape."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn import IdentityKey
from ppn.wire import pack_canonical
from psp import (
    ANY,
    OPERATIONS,
    AuthorizationError,
    Capability,
    ErrorCode,
    LocalProtocolError,
    PSPError,
    Query,
    QueryError,
    Scope,
    Verifier,
    admit,
    decode_capability,
    decode_envelope,
    decode_query,
    delegate,
    invoke,
    mint,
)
from psp._ed25519 import SMALL_ORDER_KEYS, public_key_ok, signature_shape_ok

NOW = 1_800_000_000
VAULT = IdentityKey.from_seed(b"V" * 32)
ALICE = IdentityKey.from_seed(b"A" * 32)
BOB = IdentityKey.from_seed(b"B" * 32)


def _small_order_encodings() -> set[bytes]:
    """Recompute every encoding of the 8-torsion points of edwards25519 from the curve equation."""
    p = 2**255 - 19
    d = (-121665 * pow(121666, p - 2, p)) % p
    order = 2**252 + 27742317777372353535851937790883648493

    def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        (x1, y1), (x2, y2) = a, b
        t = d * x1 * x2 * y1 * y2
        return (
            (x1 * y2 + x2 * y1) * pow(1 + t, p - 2, p) % p,
            (y1 * y2 + x1 * x2) * pow(1 - t, p - 2, p) % p,
        )

    def mul(k: int, pt: tuple[int, int]) -> tuple[int, int]:
        r = (0, 1)
        while k:
            if k & 1:
                r = add(r, pt)
            pt, k = add(pt, pt), k >> 1
        return r

    def point(y: int) -> tuple[int, int] | None:
        xx = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
        x = pow(xx, (p + 3) // 8, p)
        if (x * x - xx) % p:
            x = x * pow(2, (p - 1) // 4, p) % p
        return (x, y) if (x * x - xx) % p == 0 else None

    torsion: set[tuple[int, int]] = set()
    for y in range(2, 200):
        pt = point(y)
        if pt is not None:
            t = mul(order, pt)
            torsion |= {mul(k, t) for k in range(8)}
        if len(torsion) == 8:
            break
    out = set()
    for x, y in torsion:
        for yy in (y, y + p):
            if yy < 2**255:
                out.add((yy | ((x & 1) << 255)).to_bytes(32, "little"))
                if x == 0:
                    out.add((yy | (1 << 255)).to_bytes(32, "little"))
    return out


def test_small_order_list_is_the_whole_torsion_subgroup() -> None:
    assert _small_order_encodings() == SMALL_ORDER_KEYS
    assert not any(public_key_ok(k) for k in SMALL_ORDER_KEYS)
    assert public_key_ok(ALICE.public)
    assert not signature_shape_ok(b"\x00" * 32 + (2**253).to_bytes(32, "little"))


def _cap(rows: int = 100) -> Capability:
    root = mint(
        VAULT,
        audience=ALICE.public,
        scope=Scope(vaults=(VAULT.public,), rows=1000),
        not_before=0,
        expires=NOW + 1000,
        nonce=b"r" * 16,
    )
    return delegate(
        root,
        ALICE,
        audience=BOB.public,
        scope=Scope(vaults=(VAULT.public,), collections=("people",), rows=rows),
        not_before=0,
        expires=NOW + 500,
        nonce=b"d" * 16,
    )


def test_text_form_round_trips_and_delegation_refuses_widening() -> None:
    cap = _cap()
    assert Capability.from_text(cap.to_text()) == cap
    assert decode_capability(cap.encode()) == cap
    with pytest.raises(LocalProtocolError):
        delegate(
            cap,
            BOB,
            audience=ALICE.public,
            scope=Scope(vaults=(VAULT.public,), rows=100),
            not_before=0,
            expires=NOW,
            nonce=b"x" * 16,
        )
    with pytest.raises(LocalProtocolError):
        delegate(
            cap,
            ALICE,
            audience=BOB.public,
            scope=cap.scope,
            not_before=0,
            expires=NOW,
            nonce=b"x" * 16,
        )
    with pytest.raises(AuthorizationError):
        Capability.from_text("pspcap1.!!!")


def test_a_warm_verifier_still_checks_signatures_of_changed_bytes() -> None:
    cap = _cap()
    q = Query(collection="people", op="count").encode()
    verifier = Verifier(VAULT.public)
    admit(
        verifier,
        invoke(cap, BOB, vaults=[VAULT.public], query_bytes=q, now=NOW, nonce=b"1" * 16).raw,
        q,
        now=NOW,
    )
    leaf = cap.links[-1]
    bad_sig = bytes([leaf.signature[0] ^ 1]) + leaf.signature[1:]
    forged = Capability(links=(cap.links[0], type(leaf).decode(leaf.payload, bad_sig)))
    env = invoke(forged, BOB, vaults=[VAULT.public], query_bytes=q, now=NOW, nonce=b"2" * 16)
    with pytest.raises(AuthorizationError) as info:
        admit(verifier, env.raw, q, now=NOW)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


names = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, unique=True).map(sorted)
scopes = st.builds(
    lambda c, f, o, lo, span, rows: Scope(
        vaults=(VAULT.public,),
        collections=tuple(c),
        fields=tuple(f),
        ops=tuple(o),
        time=(lo, lo + span),
        rows=rows,
    ),
    st.one_of(st.just([ANY]), names),
    st.one_of(st.just([ANY]), names),
    st.lists(st.sampled_from(OPERATIONS), min_size=1, unique=True).map(sorted),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 2**32 - 1),
)


@given(scopes, scopes, scopes)
def test_within_is_a_partial_order(a: Scope, b: Scope, c: Scope) -> None:
    assert a.within(a)
    if a.within(b) and b.within(c):
        assert a.within(c)
    if a.within(b) and b.within(a):
        assert a.to_wire() == b.to_wire()


wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "v",
                    "alg",
                    "chain",
                    "inv",
                    "iss",
                    "aud",
                    "scope",
                    "nbf",
                    "exp",
                    "prf",
                    "nonce",
                    "cap",
                    "q",
                    "iat",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=25,
)


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(
        st.integers(0, max(len(data) - 1, 0)), st.integers(0, 255), st.integers(0, len(data))
    ).map(lambda t: (data[: t[0]] + bytes([t[1]]) + data[t[0] + 1 :])[: t[2] or None])


GOOD_QUERY = Query(collection="people", op="count").encode()
GOOD = invoke(
    _cap(), BOB, vaults=[VAULT.public], query_bytes=GOOD_QUERY, now=NOW, nonce=b"g" * 16
).raw


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), wire_values.map(pack_canonical), _mutations(GOOD)))
def test_envelope_and_capability_decoders_raise_only_protocol_errors(data: bytes) -> None:
    for decode in (decode_envelope, decode_capability):
        try:
            decode(data)
        except AuthorizationError as exc:
            assert isinstance(exc.code, ErrorCode)
    try:
        admit(Verifier(VAULT.public), data, GOOD_QUERY, now=NOW)
    except PSPError as exc:
        assert isinstance(getattr(exc, "code", None), ErrorCode)


query_maps = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 2]),
        "coll": st.sampled_from(["people", "a b", ""]),
        "op": st.sampled_from([*OPERATIONS, "readall"]),
    },
    optional={
        "where": st.lists(
            st.lists(
                st.one_of(
                    st.sampled_from(["age", "eq", "in", "range", "prefix", "1x"]),
                    st.integers(-3, 3),
                    st.none(),
                    st.lists(st.integers(0, 3), max_size=3),
                ),
                max_size=5,
            ),
            max_size=3,
        ),
        "select": st.lists(st.sampled_from(["age", "name", "_x", "age"]), max_size=3),
        "order": st.lists(st.sampled_from(["age", "asc", "desc", "up"]), max_size=3),
        "limit": st.integers(-1, 2**64 - 1),
        "agg": st.dictionaries(
            st.sampled_from(["fn", "field", "group", "x"]),
            st.sampled_from(["count", "sum", "age", "bad"]),
            max_size=3,
        ),
        "as_of": st.integers(-1, 5),
        "offset": st.integers(-1, 5),
        "zzz": st.integers(0, 1),
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(query_maps.map(pack_canonical), st.binary(max_size=100), _mutations(GOOD_QUERY)))
def test_query_decoder_raises_only_query_errors(data: bytes) -> None:
    try:
        q = decode_query(data)
    except QueryError as exc:
        assert exc.code in (ErrorCode.QUERY_INVALID, ErrorCode.COST_LIMIT)
        return
    assert decode_query(pack_canonical(q.to_wire())) == q


def test_one_invocation_fans_out_to_each_named_vault_once() -> None:
    other = IdentityKey.from_seed(b"W" * 32)
    fleet = IdentityKey.from_seed(b"F" * 32)
    vaults = tuple(sorted([VAULT.public, other.public]))
    cap = mint(
        fleet,
        audience=BOB.public,
        scope=Scope(vaults=vaults, rows=10),
        not_before=0,
        expires=NOW + 100,
        nonce=b"f" * 16,
    )
    q = Query(collection="people", op="count").encode()
    env = invoke(cap, BOB, vaults=list(vaults), query_bytes=q, now=NOW, nonce=b"o" * 16).raw
    at_a = Verifier(VAULT.public, trusted_roots=[fleet.public])
    at_b = Verifier(other.public, trusted_roots=[fleet.public])
    assert (
        admit(at_a, env, q, now=NOW).query_id == admit(at_b, env, q, now=NOW).query_id == b"o" * 16
    )
    for verifier in (at_a, at_b):
        with pytest.raises(AuthorizationError) as info:
            admit(verifier, env, q, now=NOW)
        assert info.value.code is ErrorCode.REPLAYED
    third = Verifier(IdentityKey.from_seed(b"X" * 32).public, trusted_roots=[fleet.public])
    with pytest.raises(AuthorizationError) as info:
        admit(third, env, q, now=NOW)
    assert info.value.code is ErrorCode.WRONG_VAULT
