"""The vault server and client under trio and under asyncio (issue 20): each server loop with
each client loop over loopback TCP — rows in many batches within a small credit window, a
resumed query, an early cancel, a refused capability — and the listener limits both servers
share (ppn._listener_limits): a silent connection closed at its first-frame deadline, an
oversized pre-admission frame refused, the per-source cap."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import psp
from ppn import IdentityKey
from ppn._listener_limits import ListenerLimits
from psp import Capability, ErrorCode, Query, RowBatch, Scope, VaultError, delegate, mint
from psp._io_store import KEY_FILE, Store
from psp._io_vault import Vault, write_key_file
from tests._both_loops import LOOPS, run, served

NOW = 1_800_000_000
ROWS = 1500  # several 256-row batches
ALICE = IdentityKey.from_seed(b"a" * 32)
BOB = IdentityKey.from_seed(b"b" * 32)


def clock() -> int:
    return NOW


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    key = IdentityKey.from_seed(b"k" * 32)
    store = Store.create(tmp_path, name="t", vault_id=key.public, now=NOW)
    write_key_file(tmp_path / KEY_FILE, key)
    store.append_many("people", [{"n": i, "age": i % 50} for i in range(ROWS)], now=NOW)
    return Vault.open(tmp_path)


def cap_for(vault: Vault, **scope: Any) -> Capability:
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
    )


def serve(loop: str, vault: Vault, limits: ListenerLimits | None = None) -> Any:
    """The vault served on ``loop`` through the public embedding names."""

    async def trio_start(task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(psp.serve_vault, vault, "127.0.0.1", 0, clock=clock, limits=limits)
            )
            task_status.started(listeners[0].socket.getsockname()[1])

    async def asyncio_start() -> tuple[int, Callable[[], Any]]:
        server = await psp.serve_vault_asyncio(vault, "127.0.0.1", 0, clock=clock, limits=limits)
        return server.port, server.close

    return served(loop, trio_start, asyncio_start)


def client_class(loop: str) -> Any:
    return psp.VaultClient if loop == "trio" else psp.AsyncioVaultClient


@pytest.mark.parametrize("server_loop", LOOPS)
@pytest.mark.parametrize("client_loop", LOOPS)
def test_query_batches_resume_and_refusal(vault: Vault, server_loop: str, client_loop: str) -> None:
    cap = cap_for(vault, collections=("people",), rows=5000)
    other = cap_for(vault, collections=("nobody",))
    client_cls = client_class(client_loop)

    async def scenario(port: int) -> None:
        async with await client_cls.connect("127.0.0.1", port, window=2) as client:
            q = Query(collection="people", order=("n", False))
            result = await client.query(BOB, cap, q, clock=clock)
            assert result.end.count == ROWS
            assert [json.loads(r)["n"] for r in result.rows] == list(range(ROWS))
            first = await client.query(BOB, cap, Query(collection="people", limit=10), clock=clock)
            assert len(first.rows) == 10 and first.cursor is not None
            rest = await client.query(
                BOB,
                cap,
                Query(collection="people", as_of=first.cursor.as_of, offset=first.cursor.offset),
                clock=clock,
            )
            assert len(rest.rows) == ROWS - 10
            with pytest.raises(VaultError) as refused:
                await client.query(BOB, other, Query(collection="people"), clock=clock)
            assert refused.value.code is ErrorCode.NOT_PERMITTED
            # The connection stays usable after a refusal.
            count = await client.query(
                BOB, cap, Query(collection="people", op="count"), clock=clock
            )
            assert json.loads(count.rows[0]) == {"count": ROWS}

    with serve(server_loop, vault) as port:
        run(client_loop, partial(scenario, port))


@pytest.mark.parametrize("server_loop", LOOPS)
def test_trio_client_cancels_mid_stream(vault: Vault, server_loop: str) -> None:
    """A cancel while rows stream: the vault stops with CANCELLED and the connection serves the
    next request (the trio client has the explicit cancel)."""
    cap = cap_for(vault, collections=("people",), rows=5000)

    async def scenario(port: int) -> None:
        async with await psp.VaultClient.connect("127.0.0.1", port, window=1) as client:
            hello = await client.hello()
            q = Query(collection="people").encode()
            envelope = psp.invoke_for_vault(cap, BOB, hello.vault, q, now=NOW, nonce=b"c" * 16).raw
            response = await client.request(envelope, q)
            batches = 0
            async for event in response:
                batches += isinstance(event, RowBatch)
                if batches == 1:
                    await response.cancel()
                    break
            again = await client.query(BOB, cap, Query(collection="people", limit=3), clock=clock)
            assert len(again.rows) == 3

    with serve(server_loop, vault) as port:
        run("trio", partial(scenario, port))


@pytest.mark.parametrize("server_loop", LOOPS)
def test_audit_entries_on_both_loops(vault: Vault, server_loop: str) -> None:
    """Each answer's audit entry is on disk when its last frame arrives (RFC-NOTES §9.4.5), on
    either server loop: a multi-batch answer, a cancelled one, a refusal (counted, no entry), and
    a connection dropped mid-answer ('closed')."""
    from psp._io_audit import read_audit, read_denials

    cap = cap_for(vault, collections=("people",), rows=5000)
    other = cap_for(vault, collections=("nobody",))

    def on_disk() -> list[tuple[int, int]]:
        return [(e.rows, e.status) for e, _ in read_audit(vault.store.file)]

    async def scenario(port: int) -> None:
        async with await psp.VaultClient.connect("127.0.0.1", port, window=2) as client:
            result = await client.query(BOB, cap, Query(collection="people"), clock=clock)
            assert result.end is not None and on_disk() == [(ROWS, 0)]
            hello = await client.hello()
            q = Query(collection="people").encode()
            envelope = psp.invoke_for_vault(cap, BOB, hello.vault, q, now=NOW, nonce=b"c" * 16).raw
            response = await client.request(envelope, q)
            async for event in response:
                if isinstance(event, RowBatch):
                    await response.cancel()
                    break
            with pytest.raises(VaultError):
                await client.query(BOB, other, Query(collection="people"), clock=clock)
            entries = on_disk()
            assert len(entries) == 2 and entries[1][1] == ErrorCode.CANCELLED
            assert 0 < entries[1][0] < ROWS
        async with await psp.VaultClient.connect("127.0.0.1", port, window=1) as client:
            hello = await client.hello()
            envelope = psp.invoke_for_vault(cap, BOB, hello.vault, q, now=NOW, nonce=b"d" * 16).raw
            async for event in await client.request(envelope, q):
                if isinstance(event, RowBatch):
                    break  # leave with the answer unfinished: the connection closes
        with trio.fail_after(30):
            while len(on_disk()) < 3:
                await trio.sleep(0.05)
        rows, status = on_disk()[2]
        assert status == 1 and 0 < rows < ROWS  # what had left when the connection closed

    with serve(server_loop, vault) as port:
        run("trio", partial(scenario, port))
    vault.close()
    assert [(c, n) for c, n, _, _ in read_denials(vault.store.file)] == [(141, 1)]


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize("server_loop", LOOPS)
def test_listener_limits(vault: Vault, server_loop: str) -> None:
    limits = ListenerLimits(
        max_connections=50, per_source=2, first_frame_deadline=0.5, pre_auth_bytes=4096
    )
    with serve(server_loop, vault, limits) as port:
        # A peer that says nothing is closed at its first-frame deadline (after the hello).
        silent = socket.create_connection(("127.0.0.1", port))
        # A frame announcing more than pre_auth_bytes before admission: a protocol error.
        big = socket.create_connection(("127.0.0.1", port))
        big.sendall((1 << 20).to_bytes(4, "big") + b"x" * 10)
        answer = _read_until_closed(big)
        assert b"before admission" in answer
        big.close()
        # Per source: two held (silent and one of these), the other closed without an answer.
        hello = psp.ClientConnection().data_to_send()
        third = socket.create_connection(("127.0.0.1", port))
        fourth = socket.create_connection(("127.0.0.1", port))
        answered = []
        for s in (third, fourth):
            try:
                s.sendall(hello)
            except OSError:
                pass  # already closed by the cap
        for s in (third, fourth):
            try:
                answered.append(_read_until_closed(s) != b"")
            except ConnectionResetError:
                answered.append(False)
        assert sorted(answered) == [False, True], answered
        _read_until_closed(silent)  # returns only once the vault closed it
        for s in (silent, third, fourth):
            s.close()

        async def still_serving() -> None:
            # The closed sockets leave the per-source count once the server saw their EOF.
            cap = cap_for(vault, collections=("people",))
            for _ in range(100):
                try:
                    async with await psp.AsyncioVaultClient.connect("127.0.0.1", port) as client:
                        q = Query(collection="people", limit=1)
                        r = await client.query(BOB, cap, q, clock=clock)
                        assert len(r.rows) == 1
                        return
                except VaultError as exc:
                    assert exc.code is ErrorCode.UNAVAILABLE
                    await asyncio.sleep(0.05)
            raise AssertionError("the vault stopped serving after the limits tripped")

        asyncio.run(still_serving())
