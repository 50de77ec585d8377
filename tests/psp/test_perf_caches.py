"""The hot-path caches never turn a refusal into an admission (or the reverse)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppn import IdentityKey
from ppn.wire import EncodingError, pack_canonical
from psp import ErrorCode, Query, QueryError, Scope, Verifier, admit, invoke, mint
from psp._messages import (
    Cancel,
    ClientHello,
    Credit,
    Cursor,
    End,
    Error,
    Event,
    Header,
    ReplicaMark,
    Request,
    RowBatch,
    ServerHello,
    encode_message,
)

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


_ids = st.integers(min_value=0, max_value=2**64 - 1)
_events = st.one_of(
    st.builds(
        RowBatch, request_id=_ids, rows=st.lists(st.binary(max_size=40), max_size=5).map(tuple)
    ),
    st.builds(
        Header,
        request_id=_ids,
        vault=st.binary(),
        query_id=st.binary(),
        as_of=_ids,
        replica=st.none() | st.builds(ReplicaMark, as_of=_ids, synced=_ids, primary_head=_ids),
    ),
    st.builds(
        End,
        request_id=_ids,
        count=_ids,
        digest=st.binary(),
        cursor=st.none() | st.builds(Cursor, as_of=_ids, offset=_ids),
        seal=st.none() | st.binary(),
    ),
    st.builds(Request, request_id=_ids, envelope=st.binary(), query=st.binary(), credit=_ids),
    st.builds(Credit, request_id=_ids, batches=_ids),
    st.builds(Cancel, request_id=_ids),
    st.builds(ClientHello, versions=st.lists(_ids, max_size=3).map(tuple)),
    st.builds(ServerHello, version=_ids, vault=st.binary()),
    st.builds(
        Error, request_id=_ids, code=st.sampled_from(ErrorCode), message=st.text(max_size=20)
    ),
)


def _generic(event: object) -> bytes:
    # What the message encoder did before its direct path: the generic canonical encoder over
    # the same map, which sorts the keys itself.
    fields = {k: v for k, v in vars(event).items()}
    names = {
        RowBatch: ("rows", {"request_id": "id", "rows": "rows"}),
        Request: ("req", {"request_id": "id", "envelope": "inv", "query": "q", "credit": "credit"}),
        Credit: ("credit", {"request_id": "id", "batches": "n"}),
        Cancel: ("cancel", {"request_id": "id"}),
        ServerHello: ("hello", {"version": "v", "vault": "vault"}),
    }
    if isinstance(event, End):
        m: dict[str, object] = {
            "t": "end",
            "id": event.request_id,
            "count": event.count,
            "digest": event.digest,
        }
        if event.cursor is not None:
            m["cursor"] = [event.cursor.as_of, event.cursor.offset]
        if event.seal is not None:
            m["seal"] = event.seal
    elif isinstance(event, Header):
        m = {"t": "head", "id": event.request_id, "vault": event.vault, "qid": event.query_id}
        m["as_of"] = event.as_of
        if event.replica is not None:
            r = event.replica
            m["replica"] = [r.as_of, r.synced, r.primary_head]
    elif isinstance(event, ClientHello):
        m = {"t": "hello", "v": list(event.versions)}
    elif isinstance(event, Error):
        m = {"t": "err", "id": event.request_id, "code": int(event.code), "msg": event.message}
    else:
        t, keys = names[type(event)]
        m = {
            "t": t,
            **{keys[k]: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()},
        }
    return pack_canonical(m)


@given(_events)
def test_the_direct_message_encoder_is_the_canonical_one(event: Event) -> None:
    assert encode_message(event) == _generic(event)


def test_values_outside_the_direct_path_still_go_through_the_canonical_encoder() -> None:
    with pytest.raises(EncodingError):
        encode_message(Cancel(request_id=2**64))
    assert encode_message(Credit(request_id=True, batches=1)) == pack_canonical(
        {"t": "credit", "id": True, "n": 1}
    )


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(["a", "é", "_seq", "_ts", "z", "ß\\n"]) | st.text(max_size=4),
        _json,
        max_size=5,
    )
)
def test_unprojected_rows_are_the_parsed_and_redumped_record(record: dict[str, object]) -> None:
    import json
    import tempfile

    from psp._io_store import Store

    # What the vault did before: parse the stored (key-sorted) record and dump it again.
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(tmp, name="t", vault_id=b"\x01" * 32, now=NOW)
        store.append("c", record, now=NOW)
        (row,) = store.execute(
            Query(collection="c"), Scope(vaults=(b"\x01" * 32,)), limit=10
        ).fetch(10)
        store.close()
    expected = json.dumps(
        {"_seq": 1, "_ts": NOW, **json.loads(json.dumps(record, sort_keys=True))},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert row == expected.encode()
