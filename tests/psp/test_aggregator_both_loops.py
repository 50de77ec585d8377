"""The aggregator under trio and under asyncio (issue 20): the same public client (trio's
OrchestrationClient) against an aggregator and its vaults served on either loop over loopback
TCP — an ordered merge across vaults, a count, a vault that is not there reported as
unreachable in best-effort mode, the allow-list, and a client that sends half a request closed
at the request deadline."""

from __future__ import annotations

import json
import socket
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import psp
from psp import Query
from psp.aggregation import (
    AllowList,
    Mode,
    OrchestrationClient,
    RequestLimits,
    VaultAddress,
    VaultStatus,
)
from tests._both_loops import LOOPS, run, served
from tests.psp._orchestration_support import HOLDER, cap_for, clock, make_vault

N_VAULTS = 3
PER_VAULT = 300


@pytest.fixture
def vaults(tmp_path: Path) -> list[psp.Vault]:
    return [
        make_vault(tmp_path / f"v{i}", i + 1, [{"n": i + N_VAULTS * j} for j in range(PER_VAULT)])
        for i in range(N_VAULTS)
    ]


def serve(loop: str, vaults: list[psp.Vault], **options: Any) -> Any:
    """The vaults and an aggregator on ``loop``, through the public embedding names; reports
    (aggregator port, vault addresses)."""

    async def trio_start(task_status: trio.TaskStatus[Any]) -> None:
        async with trio.open_nursery() as nursery:
            addresses = []
            for v in vaults:
                ls = await nursery.start(partial(psp.serve_vault, v, "127.0.0.1", 0, clock=clock))
                port = ls[0].socket.getsockname()[1]
                addresses.append(VaultAddress(vault=v.vault_id, host="127.0.0.1", port=port))
            agg = await nursery.start(
                partial(psp.aggregation.serve_orchestration, "127.0.0.1", 0, **options)
            )
            task_status.started((agg[0].socket.getsockname()[1], addresses))

    async def asyncio_start() -> tuple[Any, Any]:
        servers = [await psp.serve_vault_asyncio(v, "127.0.0.1", 0, clock=clock) for v in vaults]
        addresses = [
            VaultAddress(vault=v.vault_id, host="127.0.0.1", port=s.port)
            for v, s in zip(vaults, servers, strict=True)
        ]
        agg = await psp.aggregation.serve_orchestration_asyncio("127.0.0.1", 0, **options)

        async def aclose() -> None:
            await agg.close()
            for s in servers:
                await s.close()

        return (agg.port, addresses), aclose

    return served(loop, trio_start, asyncio_start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("loop", LOOPS)
def test_merge_count_and_unreachable(vaults: list[psp.Vault], loop: str) -> None:
    caps = [cap_for(v) for v in vaults]

    async def scenario(port: int, addresses: list[VaultAddress]) -> None:
        async with await OrchestrationClient.connect("127.0.0.1", port, window=2) as client:
            ordered = Query(collection="people", order=("n", False))
            result = await client.query(HOLDER, caps, addresses, ordered, clock=clock)
            assert [json.loads(r)["n"] for _, r in result.rows] == list(range(N_VAULTS * PER_VAULT))
            assert result.complete
            count = await client.query(
                HOLDER, caps, addresses, Query(collection="people", op="count"), clock=clock
            )
            assert json.loads(count.rows[0][1]) == {"count": N_VAULTS * PER_VAULT}
            # One vault is not there: best effort returns the others and says which failed.
            gone = [*addresses[:-1], VaultAddress(vault=addresses[-1].vault, host="127.0.0.1",
                                                  port=_free_port())]  # fmt: skip
            partial_result = await client.query(
                HOLDER, caps, gone, Query(collection="people"), mode=Mode.BEST_EFFORT, clock=clock
            )
            assert len(partial_result.rows) == (N_VAULTS - 1) * PER_VAULT
            statuses = {s.index: s.status for s in partial_result.statuses}
            assert sorted(statuses.values(), key=str) == sorted(
                [VaultStatus.OK] * (N_VAULTS - 1) + [VaultStatus.UNREACHABLE], key=str
            )

    with serve(loop, vaults) as (port, addresses):
        run("trio", partial(scenario, port, addresses))


@pytest.mark.parametrize("loop", LOOPS)
def test_allow_list_and_request_deadline(vaults: list[psp.Vault], loop: str) -> None:
    caps = [cap_for(v) for v in vaults]
    # Known before the servers start only by vault id: the allow-list is built from the
    # addresses once the vaults are up, so this test allows the first vault's id at any port
    # the list cannot match — every target is denied.
    allowed = AllowList.of([(vaults[0].vault_id, "192.0.2.1", 1)])
    limits = RequestLimits(request_deadline=0.5)

    async def scenario(port: int, addresses: list[VaultAddress]) -> None:
        async with await OrchestrationClient.connect("127.0.0.1", port) as client:
            result = await client.query(
                HOLDER, caps, addresses, Query(collection="people"), mode=Mode.BEST_EFFORT,
                clock=clock,
            )  # fmt: skip
            assert result.rows == []
            assert {s.status for s in result.statuses} == {VaultStatus.DENIED}
        # Half a frame, then silence: closed at the request deadline with a DEADLINE error.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x00\x00\x01\x00" + b"x" * 10)
        received = b""
        with trio.fail_after(20):
            while chunk := await stream.receive_some(4096):
                received += chunk
        assert b"arrive whole" in received
        await stream.aclose()

    with serve(loop, vaults, allowed=allowed, limits=limits) as (port, addresses):
        run("trio", partial(scenario, port, addresses))
