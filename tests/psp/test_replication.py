"""Replication (RFC-NOTES §9.5.1): the follower's check (core), the replicate query and its
permission, the primary's sealed answer on a real store, and a follow over real TCP in-process.
The multi-process scenario (kill -9 of the primary, a fake primary) is test_replica_processes.py."""

from __future__ import annotations

import json
import secrets
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn import IdentityKey
from psp import (
    ClientConnection,
    End,
    ErrorCode,
    Header,
    QueryError,
    ReplicaChain,
    ReplicaMark,
    ReplicateQuery,
    ReplicationError,
    RowDigest,
    Scope,
    ServerConnection,
    mint,
)
from psp._chain import GENESIS, canonical_json, entry_hash
from psp._io_replica import create_replica, write_batch
from psp._io_store import ReplicaStoreError, Store
from psp._io_vault import Vault
from psp._messages import Request
from psp._replication import (
    CONTEXT_SEAL,
    MAX_ANSWER_BYTES,
    MAX_ENTRIES,
    MAX_ROW,
    decode_entry,
    decode_request_query,
    encode_entry,
    permit_replicate,
    seal_message,
)
from psp._scope import MAX_TIME
from psp._trio import serve_vault
from psp._trio_replica import FollowerError, ReplicaFollower

PRIMARY = IdentityKey.from_seed(b"p" * 32)
HOLDER = IdentityKey.from_seed(b"h" * 32)
NOW = 1_800_000_000


def _entries(n: int, start: int = 1, prev: bytes = GENESIS) -> tuple[list[bytes], bytes]:
    """Rows of entries start..start+n-1 as a primary sends them, and the hash they reach."""
    rows = []
    for seq in range(start, start + n):
        payload = canonical_json({"i": seq, "name": f"n{seq}"})
        prev = entry_hash(prev, seq=seq, ts=NOW, supersedes=None, collection="c", payload=payload)
        rows.append(encode_entry(seq, NOW, None, "c", payload))
    return rows, prev


def _seal(seq: int, head: bytes, key: IdentityKey = PRIMARY) -> bytes:
    return key.sign(CONTEXT_SEAL + seal_message(PRIMARY.public, seq, head))


# --- the follower's check ----------------------------------------------------------------------


def test_a_sealed_answer_that_continues_the_chain_is_accepted() -> None:
    chain = ReplicaChain(vault_id=PRIMARY.public)
    rows, head = _entries(5)
    batch = chain.check(rows, seal=_seal(5, head), primary_head=9, asked=10)
    assert [e.seq for e, _ in batch.entries] == [1, 2, 3, 4, 5]
    assert (batch.seq, batch.head, batch.primary_head) == (5, head, 9)
    chain.advance(batch)
    more, head2 = _entries(2, start=6, prev=head)
    assert chain.check(more, seal=_seal(7, head2), primary_head=7, asked=10).head == head2


def test_an_empty_answer_is_sealed_over_the_followers_own_head() -> None:
    _, head = _entries(3)
    chain = ReplicaChain(vault_id=PRIMARY.public, seq=3, head=head)
    assert chain.check([], seal=_seal(3, head), primary_head=3, asked=10).entries == ()
    with pytest.raises(ReplicationError):
        chain.check([], seal=_seal(3, GENESIS), primary_head=3, asked=10)


def _tamper_payload(row: bytes) -> bytes:
    return row.replace(b'"n2"', b'"n9"')


@pytest.mark.parametrize(
    "forge",
    [
        "payload",  # an entry changed after the primary sealed the chain
        "seal_by_other_key",  # a fake primary sealing with its own key
        "no_seal",
        "gap",  # an entry left out
        "duplicate",  # an entry sent twice
        "not_canonical",
        "beyond_as_of",
        "too_many",
    ],
)
def test_a_forged_answer_is_refused_whole(forge: str) -> None:
    chain = ReplicaChain(vault_id=PRIMARY.public)
    rows, head = _entries(4)
    seal: bytes | None = _seal(4, head)
    primary_head, asked = 4, 10
    if forge == "payload":
        rows[1] = _tamper_payload(rows[1])
    elif forge == "seal_by_other_key":
        seal = _seal(4, head, IdentityKey.from_seed(b"x" * 32))
    elif forge == "no_seal":
        seal = None
    elif forge == "gap":
        del rows[2]
    elif forge == "duplicate":
        rows.insert(2, rows[1])
    elif forge == "not_canonical":
        rows[0] = encode_entry(1, NOW, None, "c", b'{"name": "n1", "i": 1}')
    elif forge == "beyond_as_of":
        primary_head = 3
    else:
        asked = 3
    with pytest.raises(ReplicationError):
        chain.check(rows, seal=seal, primary_head=primary_head, asked=asked)
    assert (chain.seq, chain.head) == (0, GENESIS)  # nothing advanced


def test_the_primarys_revocations_lead_an_answer_under_the_seal() -> None:
    from psp._replication import encode_revocation

    links = [bytes([i]) * 32 for i in (1, 2)]
    rows, head = _entries(2)
    revs = [encode_revocation(3, links[0]), encode_revocation(4, links[1])]
    message = seal_message(PRIMARY.public, 2, head, 4, b"".join(links))
    seal = PRIMARY.sign(CONTEXT_SEAL + message)
    chain = ReplicaChain(vault_id=PRIMARY.public, revocations=2)
    batch = chain.check(revs + rows, seal=seal, primary_head=2, asked=2)
    assert batch.revoked == tuple(links) and batch.revocations == 4 and batch.seq == 2
    chain.advance(batch)
    assert chain.query().revocations == 4
    for forged in (
        rows,  # a revocation dropped on the way: the replica would keep honouring the link
        revs[:1] + rows,
        [revs[0], encode_revocation(4, b"\x09" * 32), *rows],  # another link revoked
        revs[::-1] + rows,  # out of order
    ):
        with pytest.raises(ReplicationError):
            ReplicaChain(vault_id=PRIMARY.public, revocations=2).check(
                forged, seal=seal, primary_head=2, asked=2
            )


# --- the query and its permission --------------------------------------------------------------


def test_replicate_query_round_trip_and_strict_decoding() -> None:
    q = ReplicateQuery(after=7, prev=b"\x01" * 32, max_entries=100)
    assert decode_request_query(q.encode()) == q
    q = ReplicateQuery(after=7, prev=b"\x01" * 32, revocations=3)
    assert decode_request_query(q.encode()) == q
    assert decode_request_query(ReplicateQuery(after=0, prev=GENESIS).encode()).max_entries == (
        MAX_ENTRIES
    )
    from ppn.wire import pack_canonical

    for bad in (
        {"v": 1, "op": "replicate", "after": 0, "prev": GENESIS, "max": MAX_ENTRIES},
        {"v": 1, "op": "replicate", "after": 0, "prev": b"short"},
        {"v": 1, "op": "replicate", "after": -1, "prev": GENESIS},
        {"v": 1, "op": "replicate", "after": 0, "prev": GENESIS, "coll": "c"},
        {"v": 1, "op": "replicate", "prev": GENESIS},
        {"v": 1, "op": "replicate", "after": 0, "prev": GENESIS, "revs": 0},
    ):
        with pytest.raises(QueryError) as info:
            decode_request_query(pack_canonical(bad))
        assert info.value.code is ErrorCode.QUERY_INVALID


def test_replicate_needs_the_operation_over_the_whole_vault() -> None:
    q = ReplicateQuery(after=0, prev=GENESIS)
    whole = Scope(vaults=(PRIMARY.public,), ops=("replicate",))
    assert permit_replicate(q, whole) == MAX_ENTRIES
    assert permit_replicate(q, Scope(vaults=(PRIMARY.public,), ops=("replicate",), rows=50)) == 50
    for scope in (
        Scope(vaults=(PRIMARY.public,)),  # the default scope does not grant it
        Scope(vaults=(PRIMARY.public,), ops=("replicate",), collections=("c",)),
        Scope(vaults=(PRIMARY.public,), ops=("replicate",), fields=("name",)),
        Scope(vaults=(PRIMARY.public,), ops=("replicate",), time=(1, MAX_TIME)),
    ):
        with pytest.raises(QueryError) as info:
            permit_replicate(q, scope)
        assert info.value.code is ErrorCode.NOT_PERMITTED


# --- the wire's version-2 fields ---------------------------------------------------------------


def test_version_2_fields_are_never_sent_to_a_version_1_client() -> None:
    for versions, expect in (((1,), None), ((1, 2), b"s" * 64)):
        client = ClientConnection(versions=versions)
        server = ServerConnection(vault_id=PRIMARY.public)
        client.send(Request(request_id=1, envelope=b"e", query=b"q", credit=1))
        server.receive_data(client.data_to_send())
        while server.next_event() is not None:
            pass
        mark = ReplicaMark(as_of=3, synced=NOW, primary_head=5)
        server.send(
            Header(request_id=1, vault=PRIMARY.public, query_id=b"n" * 16, as_of=3, replica=mark)
        )
        server.send(End(request_id=1, count=0, digest=RowDigest().digest(), seal=b"s" * 64))
        client.receive_data(server.data_to_send())
        events = []
        while (event := client.next_event()) is not None:
            events.append(event)
        header, end = events[-2], events[-1]
        assert isinstance(header, Header) and isinstance(end, End)
        assert end.seal == expect
        assert header.replica == (None if expect is None else mark)


# --- the primary's answer and the replica store, on real SQLite ---------------------------------


def _primary(tmp_path: Path, n: int) -> Vault:
    vault = Vault.create(tmp_path / "primary", PRIMARY)
    vault.store.append_many("c", [{"i": i} for i in range(n)], now=NOW)
    return vault


def _cap(ops: tuple[str, ...] = ("replicate",)) -> object:
    scope = Scope(vaults=(PRIMARY.public,), ops=ops)
    return mint(
        PRIMARY, audience=HOLDER.public, scope=scope, not_before=0, expires=2**39, nonce=b"n" * 16
    )


def _ask(vault: Vault, query: ReplicateQuery, cap: object = None) -> tuple[object, object]:
    from psp import invoke_for_vault

    q = query.encode()
    env = invoke_for_vault(
        cap or _cap(), HOLDER, PRIMARY.public, q, now=NOW, nonce=secrets.token_bytes(16)
    )
    return vault.begin(Request(request_id=1, envelope=env.raw, query=q), now=NOW), q


def test_the_primary_answers_from_the_followers_head_and_refuses_a_diverged_one(
    tmp_path: Path,
) -> None:
    vault = _primary(tmp_path, 10)
    seq3 = bytes(
        vault.store.raw_connection().execute("SELECT hash FROM entries WHERE seq = 3").fetchone()[0]
    )
    started, _ = _ask(vault, ReplicateQuery(after=3, prev=seq3, max_entries=4))
    assert isinstance(started, tuple)
    header, cursor = started
    rows = cursor.fetch(256)
    assert cursor.done and header.as_of == 10 and len(rows) == 4
    chain = ReplicaChain(vault_id=PRIMARY.public, seq=3, head=seq3)
    batch = chain.check(rows, seal=cursor.seal, primary_head=header.as_of, asked=4)
    assert batch.seq == 7
    for query, code in (
        (ReplicateQuery(after=3, prev=GENESIS), ErrorCode.DIVERGED),
        (ReplicateQuery(after=11, prev=GENESIS), ErrorCode.AS_OF_AHEAD),
    ):
        refused, _ = _ask(vault, query)
        assert getattr(refused, "code", None) is code
    refused, _ = _ask(vault, ReplicateQuery(after=0, prev=GENESIS), _cap(("read",)))
    assert getattr(refused, "code", None) is ErrorCode.NOT_PERMITTED
    vault.close()


def test_a_replica_store_takes_verified_batches_only_and_refuses_appends(tmp_path: Path) -> None:
    replica = create_replica(tmp_path / "r", vault_id=PRIMARY.public, name="r", now=NOW)
    chain = ReplicaChain(vault_id=PRIMARY.public)
    rows, head = _entries(3)
    write_batch(replica, chain.check(rows, seal=_seal(3, head), primary_head=3, asked=3), now=NOW)
    assert replica.head() == (3, head) and replica.verify().ok
    with pytest.raises(ReplicaStoreError):
        replica.append("c", {"x": 1}, now=NOW)
    replica.close()
    served = Vault.open(tmp_path / "r")  # no key: a replica's vault
    assert served.key is None and served.vault_id == PRIMARY.public
    started, _ = _ask(served, ReplicateQuery(after=0, prev=GENESIS))
    assert getattr(started, "code", None) is ErrorCode.NOT_PERMITTED  # a replica cannot seal
    served.close()


# --- follow over real TCP, in-process --------------------------------------------------------------


def test_follow_catches_up_then_keeps_up_and_serves_reads_marked_as_replica(tmp_path: Path) -> None:
    vault = _primary(tmp_path, 9000)  # three answers: 4096 + 4096 + 808
    cap = _cap(("count", "replicate"))
    revoked_cap = mint(
        PRIMARY,
        audience=HOLDER.public,
        scope=Scope(vaults=(PRIMARY.public,), ops=("count",)),
        not_before=0,
        expires=2**39,
        nonce=b"r" * 16,
    )
    statuses = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_vault, vault, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            follower = ReplicaFollower(
                tmp_path / "replica",
                host="127.0.0.1",
                port=port,
                key=HOLDER,
                capability=cap,  # type: ignore[arg-type]
                poll=0.05,
                report=statuses.append,
            )
            status = await follower.run(once=True)
            assert status.seq == 9000 and status.written == 9000
            nursery.start_soon(follower.run)
            vault.store.append("c", {"late": True}, now=NOW)
            assert vault.store.revoke(revoked_cap.leaf.id, now=NOW)
            with trio.fail_after(30):
                while follower.chain is None or follower.chain.seq < 9001:
                    await trio.sleep(0.02)
                while follower.chain.revocations < 1:
                    await trio.sleep(0.02)
            follower.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    replica = Store.open(tmp_path / "replica")
    assert replica.head() == vault.store.head()
    assert replica.verify().ok
    assert [s.written for s in statuses][:3] == [4096, 8192, 9000]
    replica.close()

    # Served, the replica answers under the primary's id and says it is a replica.
    served = Vault.open(tmp_path / "replica")
    from psp import Query, invoke_for_vault

    q = Query(collection="c", op="count").encode()
    env = invoke_for_vault(cap, HOLDER, PRIMARY.public, q, now=NOW, nonce=b"q" * 16)  # type: ignore[arg-type]
    started = served.begin(Request(request_id=1, envelope=env.raw, query=q), now=NOW)
    assert isinstance(started, tuple)
    header, cursor = started
    if not cursor.started:  # outran its slice on this loaded box: run it whole
        cursor.start(served.store.raw_connection())
    assert json.loads(cursor.fetch(10)[0]) == {"count": 9001}
    assert header.replica is not None and header.replica.as_of == 9001
    assert header.replica.primary_head == 9001 and header.replica.synced > 0
    # The primary's revocation reached the replica: the revoked capability is refused there.
    env = invoke_for_vault(revoked_cap, HOLDER, PRIMARY.public, q, now=NOW, nonce=b"z" * 16)
    refused = served.begin(Request(request_id=2, envelope=env.raw, query=q), now=NOW)
    assert getattr(refused, "code", None) is ErrorCode.REVOKED
    served.close()
    vault.close()


def test_follow_refuses_a_primary_the_capability_does_not_name(tmp_path: Path) -> None:
    other = Vault.create(tmp_path / "other", IdentityKey.from_seed(b"o" * 32))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_vault, other, "127.0.0.1", 0)
            follower = ReplicaFollower(
                tmp_path / "replica",
                host="127.0.0.1",
                port=listeners[0].socket.getsockname()[1],
                key=HOLDER,
                capability=_cap(),  # type: ignore[arg-type]
            )
            with pytest.raises(FollowerError) as info:
                await follower.run(once=True)
            assert info.value.code is ErrorCode.WRONG_VAULT
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert not (tmp_path / "replica").exists()  # nothing created for a wrong primary
    other.close()


# --- a hostile peer on either side -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64)
    | st.lists(
        st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.binary(max_size=5))
        | st.lists(st.integers(0, 9), max_size=2),
        max_size=6,
    ).map(lambda v: msgpack.packb(v, use_bin_type=True))
)
def test_any_row_decodes_or_is_a_replication_error(row: bytes) -> None:
    try:
        entry = decode_entry(row)
    except ReplicationError:
        return
    assert encode_entry(*entry) == row  # what decodes is exactly its canonical encoding


def test_an_answer_stops_at_its_byte_bound(tmp_path: Path) -> None:
    vault = Vault.create(tmp_path / "primary", PRIMARY)
    big = "x" * (200 * 1024)
    vault.store.append_many("c", [{"i": i, "pad": big} for i in range(60)], now=NOW)
    started, _ = _ask(vault, ReplicateQuery(after=0, prev=GENESIS))
    assert isinstance(started, tuple)
    header, cursor = started
    if not cursor.started:
        cursor.start(vault.store.raw_connection())
    rows: list[bytes] = []
    while not cursor.done:
        batch = cursor.fetch(256)
        assert sum(len(r) for r in batch) <= 512 * 1024 + 210 * 1024  # one frame's worth
        rows += batch
    total = sum(len(r) for r in rows)
    assert MAX_ANSWER_BYTES <= total <= MAX_ANSWER_BYTES + MAX_ROW
    assert len(rows) < 60 and header.as_of == 60
    batch = ReplicaChain(vault_id=PRIMARY.public).check(
        rows, seal=cursor.seal, primary_head=header.as_of, asked=MAX_ENTRIES
    )
    assert batch.seq == len(rows)  # the follower asks again from there
    vault.close()


def test_a_refused_replicate_request_does_not_admit_the_connection(tmp_path: Path) -> None:
    """Replication goes through the vault's listener guard like any request: a replicate
    invocation the vault refuses leaves the connection unadmitted, so a frame beyond the
    pre-admission bound still closes it (RFC-NOTES §9.8)."""
    from ppn._trio_listener import ListenerLimits
    from ppn.wire import encode_frame
    from psp import invoke_for_vault
    from psp._messages import ClientHello, Error, decode_message, encode_message

    vault = _primary(tmp_path, 3)
    q = ReplicateQuery(after=0, prev=GENESIS).encode()
    env = invoke_for_vault(_cap(("read",)), HOLDER, PRIMARY.public, q, now=NOW, nonce=b"r" * 16)
    frames = [
        encode_frame(encode_message(ClientHello()), max_size=1 << 20),
        encode_frame(
            encode_message(Request(request_id=1, envelope=env.raw, query=q)), max_size=1 << 20
        ),
    ]

    async def main() -> list[object]:
        limits = ListenerLimits(pre_auth_bytes=16 * 1024)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_vault, vault, "127.0.0.1", 0, limits=limits, clock=lambda: NOW)
            )
            stream = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
            await stream.send_all(b"".join(frames))
            events: list[object] = []
            data = b""

            async def read_until(done: Any) -> None:
                nonlocal data
                with trio.fail_after(30):
                    while not done():
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        data += chunk
                        while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big"):
                            n = int.from_bytes(data[:4], "big")
                            events.append(decode_message(data[4 : 4 + n], from_server=True))
                            data = data[4 + n :]

            # The refusal first, then a frame header beyond the pre-admission bound.
            await read_until(lambda: any(isinstance(e, Error) for e in events))
            await stream.send_all((1 << 19).to_bytes(4, "big") + b"\0" * 1000)
            await read_until(lambda: False)  # until the vault closes the connection
            nursery.cancel_scope.cancel()
        return events

    events = trio.run(main)
    errors = [e for e in events if isinstance(e, Error)]
    assert [e.code for e in errors] == [ErrorCode.NOT_PERMITTED, ErrorCode.PROTOCOL]
    assert errors[1].request_id == 0 and "before admission" in errors[1].message
    vault.close()


@pytest.mark.parametrize("server_loop", ["trio", "asyncio"])
def test_a_primary_on_either_loop_serves_replicate(tmp_path: Path, server_loop: str) -> None:
    """The asyncio vault server answers replicate too (its end carries the seal)."""
    import psp
    from tests._both_loops import served

    vault = _primary(tmp_path, 5000)
    vault.store.revoke(b"\x07" * 32, now=NOW)

    async def trio_start(task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(psp.serve_vault, vault, "127.0.0.1", 0, clock=lambda: NOW)
            )
            task_status.started(listeners[0].socket.getsockname()[1])

    async def asyncio_start() -> tuple[int, Any]:
        server = await psp.serve_vault_asyncio(vault, "127.0.0.1", 0, clock=lambda: NOW)
        return server.port, server.close

    with served(server_loop, trio_start, asyncio_start) as port:
        follower = ReplicaFollower(
            tmp_path / "replica",
            host="127.0.0.1",
            port=port,
            key=HOLDER,
            capability=_cap(),  # type: ignore[arg-type]
            clock=lambda: NOW,
        )
        status = trio.run(partial(follower.run, once=True))
        follower.close()
    assert status.seq == 5000
    replica = Store.open(tmp_path / "replica")
    assert replica.head() == vault.store.head() and replica.verify().ok
    assert replica.new_revocations() == [b"\x07" * 32]
    replica.close()
    vault.close()


# --- the command's surface -----------------------------------------------------------------------


def test_follow_command_help_and_refusals_before_any_connection(tmp_path: Path) -> None:
    import subprocess
    import sys

    ppn = [str(Path(sys.executable).parent / "ppn")]
    shown = subprocess.run([*ppn, "vault", "follow", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    for word in ("--from", "--cap", "--serve", "--once", "--json", "replicate", "exit statuses"):
        assert word in shown.stdout
    (tmp_path / "holder.key").write_text("not a key\n")
    other = IdentityKey.from_seed(b"z" * 32)
    from psp._io_vault import write_key_file

    write_key_file(tmp_path / "other.key", other)
    (tmp_path / "f.cap").write_text(_cap().to_text())  # type: ignore[attr-defined]
    follow = [*ppn, "vault", "follow", "--from", "127.0.0.1:1", "--store", str(tmp_path / "r")]
    for key, status, words in (
        ("holder.key", 47, "not a PSP key file"),
        ("other.key", 41, "HOLDER_MISMATCH"),
    ):
        result = subprocess.run(
            [*follow, "--cap", str(tmp_path / "f.cap"), "--key", str(tmp_path / key)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == status and words in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()
