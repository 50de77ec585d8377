"""Generate tests/vectors/psp-attacks.json: the PSP capability attack sample suite.

Run ``.venv/bin/python -m tests.psp.gen_attack_vectors`` to regenerate (the output is
deterministic: fixed key seeds, fixed nonces, fixed clock; Ed25519 signing is deterministic).
``test_caps_vectors.py`` checks the file both ways: every case gives its expected result, and
regenerating reproduces the file byte for byte.

Each case: ``envelope`` (hex: the capability chain + invocation a client sends), ``query`` (hex:
the query bytes sent beside it), ``context`` (the vault: id, time, trusted roots, revoked link
ids, nonces already seen) and ``expect`` (``ok`` or an error code name and number).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from ppn import IdentityKey
from ppn.wire import pack_canonical
from psp._capability import MAX_ENVELOPE_SIZE, link_id
from psp._ed25519 import CONTEXT_INVOCATION, CONTEXT_LINK, SMALL_ORDER_KEYS
from psp._errors import ErrorCode
from psp._query import Query
from psp._scope import MAX_TIME

OUT = Path(__file__).resolve().parent.parent / "vectors" / "psp-attacks.json"
NOW = 1_800_000_000
_L = 2**252 + 27742317777372353535851937790883648493


def key(name: str) -> IdentityKey:
    return IdentityKey.from_seed(hashlib.sha256(b"psp-vectors/" + name.encode()).digest())


def nonce(label: str) -> bytes:
    return hashlib.sha256(b"nonce/" + label.encode()).digest()[:16]


VAULT, VAULT_B, ROOT = key("vault"), key("vault-b"), key("fleet-root")
ALICE, BOB, CAROL, MALLORY = key("alice"), key("bob"), key("carol"), key("mallory")

ROOT_SCOPE: dict[str, Any] = {
    "vaults": [VAULT.public],
    "collections": ["ledger", "people"],
    "fields": ["*"],
    "ops": ["aggregate", "count", "read", "stream"],
    "time": [0, MAX_TIME],
    "rows": 100,
}
LEAF_SCOPE: dict[str, Any] = {
    "vaults": [VAULT.public],
    "collections": ["people"],
    "fields": ["age", "city", "name"],
    "ops": ["count", "read"],
    "time": [0, MAX_TIME],
    "rows": 50,
}
QUERY = Query(collection="people", op="read", select=("name",), limit=10).encode()


def link_map(
    iss: IdentityKey | bytes,
    aud: IdentityKey | bytes,
    scope: dict[str, Any],
    *,
    prf: bytes = b"",
    label: str = "link",
    nbf: int = NOW - 1000,
    exp: int = NOW + 100_000,
) -> dict[str, Any]:
    return {
        "v": 1,
        "alg": "Ed25519",
        "iss": iss.public if isinstance(iss, IdentityKey) else iss,
        "aud": aud.public if isinstance(aud, IdentityKey) else aud,
        "scope": scope,
        "nbf": nbf,
        "exp": exp,
        "prf": prf,
        "nonce": nonce(label),
    }


def signed(
    signer: IdentityKey, payload: dict[str, Any] | bytes, context: bytes = CONTEXT_LINK
) -> list[bytes]:
    raw = payload if isinstance(payload, bytes) else pack_canonical(payload)
    return [raw, signer.sign(context + raw)]


def inv_map(
    holder: IdentityKey | bytes,
    leaf: list[bytes],
    *,
    query: bytes = QUERY,
    vaults: list[bytes] | None = None,
    label: str = "inv",
    iat: int = NOW - 5,
    exp: int = NOW + 60,
) -> dict[str, Any]:
    return {
        "v": 1,
        "alg": "Ed25519",
        "iss": holder.public if isinstance(holder, IdentityKey) else holder,
        "aud": vaults if vaults is not None else [VAULT.public],
        "cap": link_id(leaf[0]),
        "q": hashlib.sha256(query).digest(),
        "nonce": nonce(label),
        "iat": iat,
        "exp": exp,
    }


def envelope(chain: list[list[bytes]], inv: list[bytes]) -> bytes:
    return pack_canonical({"v": 1, "chain": chain, "inv": inv})


def root_link(**kw: Any) -> list[bytes]:
    return signed(VAULT, link_map(VAULT, ALICE, ROOT_SCOPE, label="root", **kw))


def leaf_link(parent: list[bytes], scope: dict[str, Any] | None = None, **kw: Any) -> list[bytes]:
    m = link_map(ALICE, BOB, scope or LEAF_SCOPE, prf=link_id(parent[0]), label="leaf", **kw)
    return signed(ALICE, m)


def invoke(chain: list[list[bytes]], holder: IdentityKey = BOB, **kw: Any) -> bytes:
    return envelope(chain, signed(holder, inv_map(holder, chain[-1], **kw), CONTEXT_INVOCATION))


R = root_link()
LEAF = leaf_link(R)
GOOD = invoke([R, LEAF])
INV_NONCE = nonce("inv")


def widened(**changes: Any) -> bytes:
    leaf = leaf_link(R, {**LEAF_SCOPE, **changes})
    return invoke([R, leaf])


def with_scope_raw(scope_bytes_patch: Callable[[bytes], bytes]) -> bytes:
    """A leaf whose payload bytes are patched (non-canonical), then properly signed and invoked."""
    payload = scope_bytes_patch(
        pack_canonical(link_map(ALICE, BOB, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"))
    )
    leaf = signed(ALICE, payload)
    return invoke([R, leaf])


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def case(
        name: str,
        description: str,
        env: bytes,
        expect: str,
        *,
        query: bytes = QUERY,
        now: int = NOW,
        vault: bytes = VAULT.public,
        roots: tuple[bytes, ...] = (),
        revoked: tuple[bytes, ...] = (),
        seen: tuple[bytes, ...] = (),
    ) -> None:
        out.append(
            {
                "name": name,
                "description": description,
                "envelope": env.hex(),
                "query": query.hex(),
                "context": {
                    "vault": vault.hex(),
                    "now": now,
                    "trusted_roots": [r.hex() for r in roots],
                    "revoked": [r.hex() for r in revoked],
                    "seen_nonces": [{"nonce": n.hex(), "expires": NOW + 60} for n in seen],
                },
                "expect": expect,
                "expect_code": 0 if expect == "ok" else int(ErrorCode[expect]),
            }
        )

    # --- accepted ---
    case("ok_direct", "vault-minted capability invoked by its holder", invoke([R], ALICE), "ok")
    case("ok_delegated", "one offline delegation, invoked by the delegate", GOOD, "ok")
    fleet = signed(ROOT, link_map(ROOT, ALICE, ROOT_SCOPE, label="fleet"))
    case(
        "ok_trusted_root",
        "chain rooted in a fleet key the vault is configured to trust",
        invoke([fleet, leaf_link(fleet)]),
        "ok",
        roots=(ROOT.public,),
    )
    count_q = Query(collection="people", op="count").encode()
    case(
        "ok_count",
        "a count query within scope",
        invoke([R, LEAF], query=count_q),
        "ok",
        query=count_q,
    )

    # --- tampering ---
    wide_root = link_map(VAULT, ALICE, {**ROOT_SCOPE, "rows": 10_000}, label="root")
    forged = [pack_canonical(wide_root), R[1]]
    case(
        "tampered_root_payload",
        "holder widens the root's rows and re-signs its own invocation; root signature no longer matches",
        invoke([forged], ALICE),
        "BAD_SIGNATURE",
    )
    case(
        "tampered_root_signature",
        "one bit of the root link's signature (R half) flipped",
        invoke([[R[0], flip(R[1], 3)], LEAF]),
        "BAD_SIGNATURE",
    )
    leaf_forged = [
        pack_canonical(
            link_map(ALICE, BOB, {**LEAF_SCOPE, "rows": 100}, prf=link_id(R[0]), label="leaf")
        ),
        LEAF[1],
    ]
    case(
        "tampered_leaf_payload",
        "delegate raises its rows limit in the leaf payload, keeping the leaf signature",
        invoke([R, leaf_forged]),
        "BAD_SIGNATURE",
    )
    inv = signed(BOB, inv_map(BOB, LEAF), CONTEXT_INVOCATION)
    case(
        "tampered_invocation_signature",
        "one bit of the invocation signature flipped",
        envelope([R, LEAF], [inv[0], flip(inv[1], 5)]),
        "BAD_SIGNATURE",
    )
    other_nonce = pack_canonical({**inv_map(BOB, LEAF), "nonce": nonce("other")})
    case(
        "tampered_invocation_payload",
        "invocation nonce changed after signing",
        envelope([R, LEAF], [other_nonce, inv[1]]),
        "BAD_SIGNATURE",
    )

    # --- authority and chain structure ---
    rogue = signed(MALLORY, link_map(MALLORY, MALLORY, ROOT_SCOPE, label="rogue"))
    case(
        "untrusted_root",
        "a chain rooted in a key the vault does not trust",
        invoke([rogue], MALLORY),
        "UNTRUSTED_ROOT",
    )
    case(
        "untrusted_root_without_config",
        "the fleet-rooted chain at a vault not configured to trust the fleet key",
        invoke([fleet, leaf_link(fleet)]),
        "UNTRUSTED_ROOT",
    )
    case("link_reordered", "leaf placed before root", invoke([LEAF, R]), "BROKEN_CHAIN")
    mid = signed(BOB, link_map(BOB, CAROL, LEAF_SCOPE, prf=link_id(LEAF[0]), label="mid"))
    case(
        "link_dropped",
        "three-link chain with the middle link removed",
        invoke([R, mid], CAROL),
        "BROKEN_CHAIN",
    )
    case(
        "link_inserted",
        "an extra link (not referenced by its successor) inserted in the middle",
        invoke([R, rogue, LEAF]),
        "BROKEN_CHAIN",
    )
    wrong_iss = signed(CAROL, link_map(CAROL, BOB, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"))
    case(
        "issuer_not_parent_audience",
        "a delegation signed by a key that is not the parent's audience",
        invoke([R, wrong_iss]),
        "BROKEN_CHAIN",
    )
    case(
        "root_with_parent",
        "a first link that claims a parent",
        invoke([LEAF]),
        "BROKEN_CHAIN",
    )
    case(
        "invocation_wrong_leaf",
        "invocation references a different capability than the chain it carries",
        envelope(
            [R, LEAF], signed(BOB, {**inv_map(BOB, LEAF), "cap": link_id(R[0])}, CONTEXT_INVOCATION)
        ),
        "BROKEN_CHAIN",
    )

    # --- holder binding ---
    case(
        "stolen_token_own_key",
        "thief invokes Bob's capability with its own key",
        invoke([R, LEAF], MALLORY),
        "HOLDER_MISMATCH",
    )
    case(
        "stolen_token_claims_holder",
        "thief names Bob as issuer but signs with its own key",
        envelope([R, LEAF], signed(MALLORY, inv_map(BOB, LEAF), CONTEXT_INVOCATION)),
        "BAD_SIGNATURE",
    )

    # --- time ---
    case("link_expired", "the leaf expired", invoke([R, leaf_link(R, exp=NOW - 1)]), "EXPIRED")
    case(
        "link_not_yet_valid",
        "the leaf starts in the future",
        invoke([R, leaf_link(R, nbf=NOW + 10)]),
        "NOT_YET_VALID",
    )
    case(
        "root_expired_at_vault_time",
        "vault clock past the root's expiry",
        GOOD,
        "EXPIRED",
        now=NOW + 100_001,
    )
    case(
        "invocation_expired",
        "invocation presented after its exp",
        invoke([R, LEAF], iat=NOW - 100, exp=NOW - 1),
        "EXPIRED",
    )
    case(
        "invocation_from_future",
        "invocation issued 10 minutes ahead of the vault clock",
        invoke([R, LEAF], iat=NOW + 600, exp=NOW + 700),
        "NOT_YET_VALID",
    )
    case(
        "time_out_of_range",
        "expiry beyond 2**40 seconds",
        invoke([R, leaf_link(R, exp=2**50)]),
        "TIME_RANGE",
    )
    case(
        "time_inverted",
        "nbf after exp",
        invoke([R, leaf_link(R, nbf=NOW + 5, exp=NOW + 4)]),
        "TIME_RANGE",
    )
    case("time_negative", "negative not-before", invoke([R, leaf_link(R, nbf=-1)]), "TIME_RANGE")
    case(
        "invocation_lifetime_too_long",
        "invocation valid for an hour (max 300 s)",
        invoke([R, LEAF], exp=NOW + 3600),
        "TIME_RANGE",
    )

    # --- widening ---
    case(
        "widen_collections",
        "delegation adds a collection",
        widened(collections=["people", "secrets"]),
        "SCOPE_WIDENED",
    )
    case(
        "widen_collections_wildcard",
        "delegation of ['*'] under a named list",
        widened(collections=["*"]),
        "SCOPE_WIDENED",
    )
    wide_fields_root = signed(
        VAULT, link_map(VAULT, ALICE, {**ROOT_SCOPE, "fields": ["name"]}, label="root")
    )
    case(
        "widen_fields",
        "delegation adds a field",
        invoke([wide_fields_root, leaf_link(wide_fields_root)]),
        "SCOPE_WIDENED",
    )
    case("widen_ops", "delegation adds an operation", _widen_ops(), "SCOPE_WIDENED")
    case("widen_rows", "delegation raises the row limit", widened(rows=101), "SCOPE_WIDENED")
    case(
        "widen_time_window",
        "delegation opens the record-time window",
        _widen_time(),
        "SCOPE_WIDENED",
    )
    case(
        "widen_vaults",
        "delegation adds a vault",
        widened(vaults=sorted([VAULT.public, VAULT_B.public])),
        "SCOPE_WIDENED",
    )
    case(
        "widen_expiry",
        "delegation outlives its parent",
        invoke([R, leaf_link(R, exp=NOW + 200_000)]),
        "SCOPE_WIDENED",
    )
    case(
        "widen_not_before",
        "delegation starts before its parent",
        invoke([R, leaf_link(R, nbf=NOW - 2000)]),
        "SCOPE_WIDENED",
    )

    # --- prefix tricks ---
    pq = Query(collection="people_private", op="read", limit=5).encode()
    case(
        "collection_prefix",
        "scope 'people' used on 'people_private'",
        invoke([R, LEAF], query=pq),
        "NOT_PERMITTED",
        query=pq,
    )
    case(
        "collection_glob_in_scope",
        "a delegation naming 'people*'",
        widened(collections=["people*"]),
        "SCOPE_INVALID",
    )
    fq = Query(collection="people", op="read", select=("name_secret",), limit=5).encode()
    case(
        "field_prefix",
        "scope field 'name' used to read 'name_secret'",
        invoke([R, LEAF], query=fq),
        "NOT_PERMITTED",
        query=fq,
    )
    oq = pack_canonical({"v": 1, "coll": "people", "op": "readall"})
    case(
        "operation_prefix",
        "operation 'readall' (extends 'read')",
        invoke([R, LEAF], query=oq),
        "QUERY_INVALID",
        query=oq,
    )
    aq = Query(collection="people", op="stream", limit=5).encode()
    case(
        "operation_not_granted",
        "'stream' under a read/count capability",
        invoke([R, LEAF], query=aq),
        "NOT_PERMITTED",
        query=aq,
    )
    wq = Query(collection="people", op="count", where=(_filter("salary", "eq", 1),)).encode()
    case(
        "filter_on_hidden_field",
        "filtering on a field outside scope leaks it",
        invoke([R, LEAF], query=wq),
        "NOT_PERMITTED",
        query=wq,
    )

    # --- vault binding, replay, query binding, revocation ---
    case(
        "wrong_vault",
        "invocation for vault A presented at vault B",
        GOOD,
        "WRONG_VAULT",
        vault=VAULT_B.public,
        roots=(VAULT.public,),
    )
    case(
        "invocation_names_other_vault",
        "invocation addressed only to vault B",
        invoke([R, LEAF], vaults=[VAULT_B.public]),
        "WRONG_VAULT",
    )
    case("replayed", "invocation nonce already seen", GOOD, "REPLAYED", seen=(INV_NONCE,))
    swapped = Query(collection="people", op="read", select=("name", "age"), limit=10).encode()
    case(
        "query_swapped",
        "a different query sent with the signed invocation",
        GOOD,
        "QUERY_MISMATCH",
        query=swapped,
    )
    case("revoked_root", "root link revoked", GOOD, "REVOKED", revoked=(link_id(R[0]),))
    case("revoked_leaf", "leaf link revoked", GOOD, "REVOKED", revoked=(link_id(LEAF[0]),))
    mid_ok = signed(BOB, link_map(BOB, CAROL, LEAF_SCOPE, prf=link_id(LEAF[0]), label="mid"))
    case(
        "revoked_middle",
        "middle link of a three-link chain revoked",
        invoke([R, LEAF, mid_ok], CAROL),
        "REVOKED",
        revoked=(link_id(LEAF[0]),),
    )
    case(
        "ok_three_links",
        "three-link chain, nothing revoked",
        invoke([R, LEAF, mid_ok], CAROL),
        "ok",
    )

    # --- size, depth, nesting ---
    chain6 = [root_link()]
    holder = ALICE
    for i in range(5):
        chain6.append(
            signed(
                holder,
                link_map(holder, ALICE, ROOT_SCOPE, prf=link_id(chain6[-1][0]), label=f"deep{i}"),
            )
        )
    case("chain_too_deep", "six links (limit five)", invoke(chain6, ALICE), "TOO_DEEP")
    case(
        "too_large",
        "an envelope over 8 KB",
        envelope([R, [b"\x00" * MAX_ENVELOPE_SIZE, R[1]]], inv),
        "TOO_LARGE",
    )
    nested = with_scope_raw(
        lambda p: p.replace(b"\xa4time\x92\x00\xcf", b"\xa4time\x92\x91\x91\x91\x91\x00\xcf")
    )
    case("over_nested", "the time window nested five lists deep", nested, "TOO_DEEP")
    case("truncated", "the envelope cut short by 7 bytes", GOOD[:-7], "MALFORMED")
    case("empty", "zero bytes", b"", "MALFORMED")
    case(
        "not_a_map",
        "a msgpack array instead of the envelope map",
        pack_canonical([1, 2, 3]),
        "MALFORMED",
    )

    # --- non-canonical encodings ---
    dup = bytes([GOOD[0] + 1]) + GOOD[1:] + b"\xa1v\x01"
    case("duplicate_key", "envelope map with 'v' twice", dup, "MALFORMED")
    case(
        "float_value",
        "rows encoded as a float",
        with_scope_raw(lambda p: p.replace(b"\xa4rows2", b"\xa4rows\xcb" + _f64(50.0))),
        "MALFORMED",
    )
    case(
        "extension_type",
        "nonce as a msgpack extension type",
        with_scope_raw(lambda p: p.replace(b"\xa5nonce\xc4\x10", b"\xa5nonce\xd8\x01")),
        "MALFORMED",
    )
    case(
        "non_minimal_int",
        "rows as a 32-bit integer",
        with_scope_raw(lambda p: p.replace(b"\xa4rows2", b"\xa4rows\xce\x00\x00\x002")),
        "MALFORMED",
    )
    unsorted = msgpack.packb({"v": 1, "inv": inv, "chain": [R, LEAF]}, use_bin_type=True)
    case("unsorted_keys", "envelope keys out of canonical order", unsorted, "MALFORMED")
    case(
        "text_for_bytes",
        "a key as str instead of bin",
        with_scope_raw(lambda p: p.replace(b"\xa3aud\xc4\x20", b"\xa3aud\xd9\x20")),
        "MALFORMED",
    )

    # --- versions, algorithms, unknown keys ---
    v2 = signed(BOB, {**inv_map(BOB, LEAF), "v": 2}, CONTEXT_INVOCATION)
    case(
        "unknown_invocation_version",
        "invocation version 2",
        envelope([R, LEAF], v2),
        "UNSUPPORTED_VERSION",
    )
    case(
        "unknown_envelope_version",
        "envelope version 2",
        pack_canonical({"v": 2, "chain": [R, LEAF], "inv": inv}),
        "UNSUPPORTED_VERSION",
    )
    l2 = signed(
        ALICE, {**link_map(ALICE, BOB, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"), "v": 2}
    )
    case("unknown_link_version", "link version 2", invoke([R, l2]), "UNSUPPORTED_VERSION")
    alg = signed(
        ALICE, {**link_map(ALICE, BOB, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"), "alg": "ES256"}
    )
    case("unknown_algorithm", "link algorithm ES256", invoke([R, alg]), "UNSUPPORTED_ALGORITHM")
    case("unknown_scope_key", "scope with an extra 'admin' key", widened(admin=True), "UNKNOWN_KEY")
    extra = signed(
        ALICE, {**link_map(ALICE, BOB, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"), "ext": 1}
    )
    case("unknown_link_key", "link with an extra top-level key", invoke([R, extra]), "UNKNOWN_KEY")
    case(
        "unknown_envelope_key",
        "envelope with an extra key",
        pack_canonical({"v": 1, "chain": [R, LEAF], "inv": inv, "x": 0}),
        "UNKNOWN_KEY",
    )

    # --- context confusion, keys, signatures ---
    case(
        "link_as_invocation",
        "a capability link (payload + signature) presented as the invocation",
        envelope([R, LEAF], LEAF),
        "UNKNOWN_KEY",
    )
    cross = signed(BOB, inv_map(BOB, LEAF), CONTEXT_LINK)
    case(
        "link_signature_on_invocation",
        "an invocation payload signed in the capability-link context",
        envelope([R, LEAF], cross),
        "BAD_SIGNATURE",
    )
    inv_as_link = signed(BOB, inv_map(BOB, LEAF), CONTEXT_INVOCATION)
    case(
        "invocation_as_link",
        "an invocation presented as a chain link",
        invoke([R, inv_as_link]),
        "UNKNOWN_KEY",
    )
    s = int.from_bytes(inv[1][32:], "little") + _L
    case(
        "non_canonical_signature",
        "invocation signature with S + L",
        envelope([R, LEAF], [inv[0], inv[1][:32] + s.to_bytes(32, "little")]),
        "BAD_SIGNATURE",
    )
    small = sorted(SMALL_ORDER_KEYS)[4]
    so_leaf = signed(ALICE, link_map(ALICE, small, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"))
    case(
        "small_order_audience",
        "a delegation to a small-order public key",
        envelope([R, so_leaf], [pack_canonical(inv_map(small, so_leaf)), b"\x00" * 64]),
        "BAD_KEY",
    )
    so_root = [
        pack_canonical(link_map(sorted(SMALL_ORDER_KEYS)[2], ALICE, ROOT_SCOPE, label="root")),
        b"\x01" + b"\x00" * 63,
    ]
    case(
        "small_order_issuer",
        "root issued by the identity point",
        invoke([so_root], ALICE),
        "BAD_KEY",
        roots=(sorted(SMALL_ORDER_KEYS)[2],),
    )
    short_key = signed(
        ALICE,
        {
            **link_map(ALICE, BOB, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"),
            "aud": BOB.public[:31],
        },
    )
    case("wrong_key_length", "a 31-byte audience key", invoke([R, short_key]), "BAD_KEY")
    noncanon_key = (2**255 - 19 + 5).to_bytes(32, "little")
    nk = signed(ALICE, link_map(ALICE, noncanon_key, LEAF_SCOPE, prf=link_id(R[0]), label="leaf"))
    case("non_canonical_key", "an audience key with y >= p", invoke([R, nk]), "BAD_KEY")
    case(
        "wrong_signature_length",
        "a 63-byte invocation signature",
        envelope([R, LEAF], [inv[0], inv[1][:63]]),
        "BAD_SIGNATURE",
    )

    # --- integer limits, row and cost limits ---
    case("rows_overflow_u32", "rows = 2**32", widened(rows=2**32), "SCOPE_INVALID")
    case("rows_overflow_u64", "rows = 2**64 - 1", widened(rows=2**64 - 1), "SCOPE_INVALID")
    case("rows_negative", "rows = -1", widened(rows=-1), "SCOPE_INVALID")
    big = pack_canonical({"v": 1, "coll": "people", "op": "read", "limit": 2**64 - 1})
    case(
        "limit_overflow",
        "query limit 2**64 - 1",
        invoke([R, LEAF], query=big),
        "QUERY_INVALID",
        query=big,
    )
    over = Query(collection="people", op="read", select=("name",), limit=51).encode()
    case(
        "beyond_row_limit",
        "51 rows under a 50-row capability",
        invoke([R, LEAF], query=over),
        "ROW_LIMIT",
        query=over,
    )
    many = pack_canonical(
        Query(
            collection="people", op="count", where=(_filter("name", "in", *range(300)),)
        ).to_wire()
    )
    case(
        "beyond_cost_limit",
        "an 'in' filter with 300 values",
        invoke([R, LEAF], query=many),
        "COST_LIMIT",
        query=many,
    )
    return out


def _filter(field: str, op: str, *args: Any) -> Any:
    from psp._query import Filter

    return Filter(field=field, op=op, args=tuple(args))


def _f64(x: float) -> bytes:
    import struct

    return struct.pack(">d", x)


def _widen_ops() -> bytes:
    narrow_root = signed(
        VAULT, link_map(VAULT, ALICE, {**ROOT_SCOPE, "ops": ["count", "read"]}, label="root")
    )
    leaf = leaf_link(narrow_root, {**LEAF_SCOPE, "ops": ["aggregate", "count", "read"]})
    return invoke([narrow_root, leaf])


def _widen_time() -> bytes:
    narrow_root = signed(
        VAULT, link_map(VAULT, ALICE, {**ROOT_SCOPE, "time": [1000, 2000]}, label="root")
    )
    leaf = leaf_link(narrow_root, {**LEAF_SCOPE, "time": [500, 2000]})
    return invoke([narrow_root, leaf])


def render() -> str:
    doc = {
        "description": "PSP capability attack sample suite; see psp-README.md. Generated by tests/psp/gen_attack_vectors.py.",
        "keys": {
            name: {"seed": k.seed.hex(), "public": k.public.hex()}
            for name, k in (
                ("vault", VAULT),
                ("vault_b", VAULT_B),
                ("fleet_root", ROOT),
                ("alice", ALICE),
                ("bob", BOB),
                ("carol", CAROL),
                ("mallory", MALLORY),
            )
        },
        "cases": cases(),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT} ({len(json.loads(OUT.read_text())['cases'])} cases)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
