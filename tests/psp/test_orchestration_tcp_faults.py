"""Faults over real loopback TCP, on both fan-out paths of the aggregator (``fanout="epoll"``:
plain-TCP vaults served from one epoll set; ``"tasks"``: a task per vault): garbage, a hang,
death mid-stream, a refused port, a pooled connection gone stale, a big answer held back (on
epoll, handed to a task), and a client that goes away. (The same faults in virtual time, on
in-memory streams and so on tasks: test_orchestration_faults.py.)"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from psp import ErrorCode, Query, RowBatch
from psp._connection import ServerConnection
from psp._io_vault import Vault
from psp._messages import Header, Request
from psp._trio import handle_connection
from psp.aggregation import Fanout, OrchestrationClient, VaultPool
from psp.aggregation._connection import MergedRows
from psp.aggregation._merge import Mode, VaultStatus
from psp.aggregation._plan import VaultAddress, plan_targets

from ._orchestration_support import HOLDER, cap_for, clock, make_vault, start_aggregator

COUNT = Query(collection="people", op="count")


@pytest.fixture(params=["epoll", "tasks"])
def fanout(request: pytest.FixtureRequest) -> Fanout:
    value: Fanout = request.param
    return value


async def _listen(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


class Fleet:
    def __init__(self, nursery: trio.Nursery, tmp: Path) -> None:
        self.nursery, self.tmp = nursery, tmp
        self.addresses: list[VaultAddress] = []
        self.caps: list[Any] = []
        self.vaults: list[Vault] = []
        self.ended = trio.Event()
        self.held: list[socket.socket] = []  # blackhole listeners and what fills their queues

    async def add(self, kind: str, records: int = 10) -> None:
        i = len(self.vaults)
        vault = make_vault(
            self.tmp / str(i), 300 + i, [{"name": f"p{j}", "bio": "x" * 80} for j in range(records)]
        )
        self.vaults.append(vault)
        self.caps.append(cap_for(vault))

        async def good(stream: trio.SocketStream) -> None:
            try:
                await handle_connection(vault, stream, clock=clock)
            finally:
                self.ended.set()

        async def hang(stream: trio.SocketStream) -> None:
            # Greets like the vault, then never answers the request.
            conn = ServerConnection(vault_id=vault.vault_id)
            conn.receive_data(bytes(await stream.receive_some(65536)))
            await stream.send_all(conn.data_to_send())
            await trio.sleep_forever()

        async def silent(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()  # accepts, never greets

        async def garbage(stream: trio.SocketStream) -> None:
            await stream.send_all(b"\x00\x00\x00\x05hello, not PSP")
            await trio.sleep_forever()

        async def killed(stream: trio.SocketStream) -> None:
            conn = ServerConnection(vault_id=vault.vault_id)
            request = None
            while request is None:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                while (event := conn.next_event()) is not None:
                    if isinstance(event, Request):
                        request = event
            conn.send(
                Header(request_id=request.request_id, vault=vault.vault_id, query_id=b"q", as_of=3)
            )
            conn.send(RowBatch(request_id=request.request_id, rows=(b'{"count":99}',)))
            await stream.send_all(conn.data_to_send())
            await stream.aclose()

        if kind == "blackhole":
            # A listener whose accept queue is full: the kernel drops further SYNs, so a
            # connection to it never completes (like a host whose packets are dropped).
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            self.held.append(listener)
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                self.held.append(filler)
        elif kind == "refused":
            # A port nobody listens on: bind, note it, close.
            sock = trio.socket.socket()
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
        else:
            handler = {
                "good": good,
                "hang": hang,
                "silent": silent,
                "garbage": garbage,
                "killed": killed,
            }[kind]
            port = await _listen(self.nursery, handler)
        self.addresses.append(VaultAddress(vault=vault.vault_id, host="127.0.0.1", port=port))


@pytest.fixture
async def fleet(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Fleet]:
    the_fleet = Fleet(nursery, tmp_path)
    yield the_fleet
    for sock in the_fleet.held:
        sock.close()


async def test_a_vault_that_never_connects_is_unreachable_not_timed_out(
    nursery: trio.Nursery, fleet: Fleet, fanout: Fanout
) -> None:
    for kind in ("good", "blackhole", "silent", "hang"):
        await fleet.add(kind)
    port, _ = await start_aggregator(nursery, fanout=fanout)
    async with await OrchestrationClient.connect("127.0.0.1", port) as client:
        result = await client.query(
            HOLDER,
            fleet.caps,
            fleet.addresses,
            COUNT,
            mode=Mode.BEST_EFFORT,
            deadline=1.5,
            clock=clock,
        )
    assert [json.loads(r) for _, r in result.rows] == [{"count": 10}]
    # A vault that greeted and then went quiet is a timeout; no greeting within the deadline
    # (never connected, or connected to something silent) is unreachable, and the two read
    # alike (RFC-NOTES §10.7: a status does not tell a dropped SYN from a mute port).
    assert [s.status for s in result.statuses] == [
        VaultStatus.OK,
        VaultStatus.UNREACHABLE,
        VaultStatus.UNREACHABLE,
        VaultStatus.TIMEOUT,
    ]
    for i in (1, 2):
        assert result.statuses[i].code is ErrorCode.UNAVAILABLE
        assert result.statuses[i].message == f"no PSP vault answers at {fleet.addresses[i].address}"


async def test_faults_over_tcp_best_effort_and_strict(
    nursery: trio.Nursery, fleet: Fleet, fanout: Fanout
) -> None:
    kinds = ["good", "hang", "garbage", "killed", "refused", "good"]
    for kind in kinds:
        await fleet.add(kind)
    port, _ = await start_aggregator(nursery, fanout=fanout)
    async with await OrchestrationClient.connect("127.0.0.1", port) as client:
        result = await client.query(
            HOLDER,
            fleet.caps,
            fleet.addresses,
            COUNT,
            mode=Mode.BEST_EFFORT,
            deadline=1.5,
            clock=clock,
        )
        assert [json.loads(r) for _, r in result.rows] == [{"count": 20}]
        assert [s.status for s in result.statuses] == [
            VaultStatus.OK,
            VaultStatus.TIMEOUT,
            VaultStatus.ERROR,
            VaultStatus.UNREACHABLE,
            VaultStatus.UNREACHABLE,
            VaultStatus.OK,
        ]
        assert result.statuses[2].code is ErrorCode.PROTOCOL
        assert "mid-stream" in result.statuses[3].message
        # The same words on both paths, and no errno (RFC-NOTES §10.7).
        assert result.statuses[4].message == f"no PSP vault answers at {fleet.addresses[4].address}"
        assert result.statuses[2].message == f"not a PSP vault at {fleet.addresses[2].address}"
        with pytest.raises(Exception) as caught:
            await client.query(
                HOLDER, fleet.caps, fleet.addresses, COUNT, deadline=1.5, clock=clock
            )
        assert caught.value.result.cursor is None  # type: ignore[attr-defined]


async def test_a_stale_pooled_connection_is_replaced(
    nursery: trio.Nursery, fleet: Fleet, fanout: Fanout
) -> None:
    await fleet.add("good")
    pool = VaultPool()
    port, _ = await start_aggregator(nursery, pool, fanout=fanout)
    async with await OrchestrationClient.connect("127.0.0.1", port) as client:
        assert (
            await client.query(HOLDER, fleet.caps, fleet.addresses, COUNT, clock=clock)
        ).complete
        assert pool.idle == 1
        # The vault drops the idle connection (as a restarted vault would).
        for links in pool._idle.values():
            for link in links:
                # (epoll pools raw sockets; the task path, trio streams)
                assert link.raw is (fanout == "epoll")
                sock = link.sock if link.raw else link.stream.socket  # type: ignore[attr-defined]
                assert sock is not None
                sock.shutdown(socket.SHUT_RDWR)
        again = await client.query(HOLDER, fleet.caps, fleet.addresses, COUNT, clock=clock)
        assert again.complete and pool.connects == 2


async def test_big_answers_are_held_back(
    nursery: trio.Nursery, fleet: Fleet, fanout: Fanout
) -> None:
    for _ in range(3):
        await fleet.add("good", records=3000)
    port, _ = await start_aggregator(nursery, fanout=fanout, row_budget=64 << 10)
    query = Query(collection="people", op="read", order=("name", False), select=("name",))
    async with await OrchestrationClient.connect("127.0.0.1", port) as client:
        result = await client.query(HOLDER, fleet.caps, fleet.addresses, query, clock=clock)
        names = [json.loads(r)["name"] for _, r in result.rows]
        assert len(names) == 9000 and names == sorted(names) and result.complete, result.statuses
        # A client that stops reading: the vaults stop too, and going away ends them.
        client.window = 1
        _, targets = plan_targets(
            HOLDER,
            fleet.caps,
            fleet.addresses,
            Query(collection="people", op="read"),
            request_id=client.next_request_id(),
            now=clock(),
            rng=lambda n: bytes(range(n)),
        )
        events = client.events(targets, mode=Mode.BEST_EFFORT, deadline=30)
        assert isinstance(await events.__anext__(), MergedRows)
        fleet.ended = trio.Event()
        await trio.sleep(0.5)
        await events.aclose()
    with trio.fail_after(5):
        await fleet.ended.wait()  # the vault connections were closed when the client went away
