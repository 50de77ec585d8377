"""The trio adapter: a served vault queried over loopback TCP, flow control, errors, resumption."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from ppn import IdentityKey
from psp import Capability, ErrorCode, Filter, Query, RowBatch, Scope, VaultError, delegate, mint
from psp._io_store import KEY_FILE, Store
from psp._io_vault import Vault, write_key_file
from psp._trio import VaultClient, serve_vault

NOW = 1_800_000_000


def clock() -> int:
    return NOW


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    key = IdentityKey.from_seed(b"k" * 32)
    store = Store.create(tmp_path, name="t", vault_id=key.public, now=NOW)
    write_key_file(tmp_path / KEY_FILE, key)
    store.append_many("people", [{"name": f"n{i:04}", "age": i % 50} for i in range(3000)], now=NOW)
    return Vault.open(tmp_path)


ALICE = IdentityKey.from_seed(b"a" * 32)
BOB = IdentityKey.from_seed(b"b" * 32)


def cap_for(vault: Vault, **scope: object) -> Capability:
    root = mint(
        vault.key,
        audience=ALICE.public,
        scope=Scope(vaults=(vault.vault_id,), rows=10_000),
        not_before=0,
        expires=NOW + 3600,
        nonce=b"r" * 16,
    )
    return delegate(
        root,
        ALICE,
        audience=BOB.public,
        scope=Scope(vaults=(vault.vault_id,), **scope),
        not_before=0,
        expires=NOW + 600,
        nonce=b"d" * 16,
    )  # type: ignore[arg-type]


@pytest.fixture
async def port(vault: Vault, nursery: trio.Nursery) -> AsyncIterator[int]:
    listeners = await nursery.start(partial(serve_vault, vault, "127.0.0.1", 0, clock=clock))
    yield listeners[0].socket.getsockname()[1]


async def test_query_resume_and_errors(vault: Vault, port: int) -> None:
    cap = cap_for(vault, collections=("people",), fields=("age", "name"), rows=2500)
    async with await VaultClient.connect("127.0.0.1", port) as client:
        q = Query(
            collection="people",
            where=(Filter(field="age", op="eq", args=(7,)),),
            select=("name",),
            limit=40,
        )
        first = await client.query(BOB, cap, q, clock=clock)
        assert len(first.rows) == 40 and first.end is not None and first.cursor is not None
        vault.store.append(
            "people", {"name": "late", "age": 7}, now=NOW
        )  # after as_of: invisible on resume
        rest = await client.query(
            BOB,
            cap,
            Query(
                collection="people",
                where=q.where,
                select=q.select,
                limit=40,
                as_of=first.cursor.as_of,
                offset=first.cursor.offset,
            ),
            clock=clock,
        )
        names = [json.loads(r)["name"] for r in first.rows + rest.rows]
        assert len(names) == 60 == len(set(names)) and "late" not in names and rest.cursor is None
        with pytest.raises(VaultError) as info:
            await client.query(
                BOB, cap, Query(collection="people", select=("secret",)), clock=clock
            )
        assert info.value.code is ErrorCode.NOT_PERMITTED and not info.value.code.retryable
        counted = await client.query(BOB, cap, Query(collection="people", op="count"), clock=clock)
        assert json.loads(counted.rows[0]) == {"count": 3001}


async def test_slow_reader_bounds_the_vault(vault: Vault, port: int) -> None:
    cap = cap_for(vault, rows=3000)
    async with await VaultClient.connect("127.0.0.1", port, window=2) as client:
        hello = await client.hello()
        from psp import invoke

        qb = Query(collection="people", limit=3000).encode()
        env = invoke(cap, BOB, vaults=[hello.vault], query_bytes=qb, now=NOW, nonce=b"s" * 16)
        response = await client.request(env.raw, qb)
        await response.next_event()  # header
        await trio.sleep(0.3)  # a slow reader: the vault may send only the 2 granted batches
        with trio.move_on_after(0.3):
            while True:  # take everything the vault pushed meanwhile, without granting credit
                client.conn.receive_data(bytes(await client._stream.receive_some(1 << 20)))
        assert 0 < client.conn.rows_received <= 2 * 256
        batches = 0
        async for event in response:
            batches += isinstance(event, RowBatch)
        assert batches >= 3000 // 256 and client.conn.rows_received == 3000


async def test_cancel_keeps_the_connection_usable(vault: Vault, port: int) -> None:
    cap = cap_for(vault, rows=3000)
    async with await VaultClient.connect("127.0.0.1", port, window=1) as client:
        hello = await client.hello()
        from psp import invoke

        qb = Query(collection="people", limit=3000).encode()
        env = invoke(cap, BOB, vaults=[hello.vault], query_bytes=qb, now=NOW, nonce=b"c" * 16)
        response = await client.request(env.raw, qb)
        await response.next_event()
        await response.cancel()
        again = await client.query(BOB, cap, Query(collection="people", op="count"), clock=clock)
        assert json.loads(again.rows[0])["count"] == 3000


async def test_revocation_by_another_writer_takes_effect(vault: Vault, port: int) -> None:
    cap = cap_for(vault)
    async with await VaultClient.connect("127.0.0.1", port) as client:
        await client.query(BOB, cap, Query(collection="people", op="count"), clock=clock)
        other = Store.open(vault.store.directory)
        other.revoke(cap.leaf.id, now=NOW)
        with pytest.raises(VaultError) as info:
            await client.query(BOB, cap, Query(collection="people", op="count"), clock=clock)
        assert info.value.code is ErrorCode.REVOKED


async def test_garbage_gets_a_connection_error_frame(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"\x00\x00\x00\x03abc")
    data = await stream.receive_some(1000)
    assert b"err" in data
    assert await stream.receive_some(1000) == b""


async def test_unreachable_vault_is_retryable() -> None:
    with pytest.raises(VaultError) as info:
        await VaultClient.connect("127.0.0.1", 1)
    assert info.value.code is ErrorCode.UNAVAILABLE and info.value.code.retryable


async def test_a_client_vanishing_mid_stream_does_not_hurt_others(vault: Vault, port: int) -> None:
    cap = cap_for(vault, rows=3000)
    from psp import invoke

    rude = await VaultClient.connect("127.0.0.1", port, window=1)
    hello = await rude.hello()
    qb = Query(collection="people", limit=3000).encode()
    env = invoke(cap, BOB, vaults=[hello.vault], query_bytes=qb, now=NOW, nonce=b"v" * 16)
    response = await rude.request(env.raw, qb)
    await response.next_event()
    await rude.aclose()  # gone with the vault waiting for credit
    async with await VaultClient.connect("127.0.0.1", port) as polite:
        counted = await polite.query(BOB, cap, Query(collection="people", op="count"), clock=clock)
        assert json.loads(counted.rows[0]) == {"count": 3000}


async def test_cancel_stops_the_vault_promptly(
    vault: Vault, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("psp._trio.BATCH_ROWS", 10)
    cap = cap_for(vault, rows=3000)
    from psp import invoke

    async with await VaultClient.connect("127.0.0.1", port, window=64) as client:
        hello = await client.hello()
        qb = Query(collection="people", limit=3000).encode()
        env = invoke(cap, BOB, vaults=[hello.vault], query_bytes=qb, now=NOW, nonce=b"p" * 16)
        response = await client.request(env.raw, qb)
        await response.next_event()
        await response.cancel()
        # no credit is granted after a cancel: at most the 64 granted batches arrived
        assert client.conn.rows_received <= 64 * 10
