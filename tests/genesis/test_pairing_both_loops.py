"""The sponsor and the joiner under trio and under asyncio (issue 20): the pairing server on one
loop (in a thread of its own), the joiner on the other or the same, over loopback TCP, through
the public names (genesis.serve_windows / serve_windows_asyncio, genesis.join / join_asyncio).
An accepted join: both show the same SAS, the joiner gets its grant, the sponsor its member;
a SAS the joiner rejects fails both sides and spends the window."""

from __future__ import annotations

import asyncio
import socket
import time
from functools import partial
from typing import Any

import pytest
import trio

import genesis
from genesis import (
    ConfirmSas,
    Failed,
    FailureReason,
    Grant,
    JoinCode,
    Joined,
    SasReady,
    WindowBook,
    mesh_id_for,
)
from tests._both_loops import LOOPS, run, served
from tests.genesis.ceremony_kit import party, record

ALPHA = party("alpha")
MESH = mesh_id_for(ALPHA.identity)


class Sponsor:
    """The sponsor's application: shows the code, confirms the SAS with a grant."""

    def __init__(self) -> None:
        self.codes: list[JoinCode] = []
        self.sas: list[str] = []
        self.outcome: Any = None

    async def show_code(self, code: JoinCode) -> None:
        self.codes.append(code)

    async def decide(self, event: SasReady) -> ConfirmSas:
        self.sas.append(event.sas)
        grant = Grant(cidr="10.8.0.0/24", address="10.8.0.2", roster=(record(ALPHA, "10.8.0.1"),))
        return ConfirmSas(accept=True, grant=grant)

    async def joined(self, event: Joined) -> None:
        pass

    def wait_for_outcome(self) -> None:
        """The server ends on its own after a join or a spent window (read across threads)."""
        for _ in range(400):
            if self.outcome is not None:
                return
            time.sleep(0.05)
        raise AssertionError("the pairing server did not end")

    def options(self) -> dict[str, Any]:
        return dict(me=ALPHA, mesh_id=MESH, book=WindowBook(), decide=self.decide,
                    joined=self.joined, show_code=self.show_code)  # fmt: skip


def serve(loop: str, app: Sponsor) -> Any:
    async def trio_start(task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:

            async def serving() -> None:
                app.outcome = await genesis.serve_windows(listeners, **app.options())

            nursery.start_soon(serving)
            while not app.codes:
                await trio.sleep(0.01)
            task_status.started(port)

    async def asyncio_start() -> tuple[int, Any]:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        async def serving() -> None:
            app.outcome = await genesis.serve_windows_asyncio([listener], **app.options())

        task = asyncio.ensure_future(serving())
        while not app.codes and not task.done():
            await asyncio.sleep(0.01)

        async def aclose() -> None:
            try:
                await asyncio.wait_for(task, 20)
            except TimeoutError:
                pass

        return port, aclose

    return served(loop, trio_start, asyncio_start)


def join(loop: str, port: int, code: JoinCode, *, accept: bool) -> tuple[Any, list[str]]:
    me = party("beta")
    shown: list[str] = []

    async def decide(event: SasReady) -> ConfirmSas:
        shown.append(event.sas)
        return ConfirmSas(accept=accept)

    async def joined(event: Joined) -> None:
        pass

    fn = genesis.join if loop == "trio" else genesis.join_asyncio
    call = partial(fn, "127.0.0.1", port, me=me, code=code, endpoints=("127.0.0.1:51821",),
                   decide=decide, joined=joined)  # fmt: skip
    return run(loop, call), shown


@pytest.mark.parametrize("sponsor_loop", LOOPS)
@pytest.mark.parametrize("joiner_loop", LOOPS)
def test_accepted_join(sponsor_loop: str, joiner_loop: str) -> None:
    app = Sponsor()
    with serve(sponsor_loop, app) as port:
        result, shown = join(joiner_loop, port, app.codes[0], accept=True)
        app.wait_for_outcome()
    assert isinstance(result, Joined), result
    assert result.member.address == "10.8.0.2" and result.mesh_id == MESH
    assert shown == app.sas and len(shown) == 1
    assert app.outcome is not None and isinstance(app.outcome.joined, Joined)


@pytest.mark.parametrize("sponsor_loop", LOOPS)
@pytest.mark.parametrize("joiner_loop", LOOPS)
def test_rejected_sas_fails_both_sides(sponsor_loop: str, joiner_loop: str) -> None:
    app = Sponsor()
    with serve(sponsor_loop, app) as port:
        result, _ = join(joiner_loop, port, app.codes[0], accept=False)
        app.wait_for_outcome()
    assert isinstance(result, Failed) and result.reason is FailureReason.SAS_REJECTED
    assert app.outcome is not None and app.outcome.joined is None
    assert app.outcome.failure is not None  # the window was spent: the server stopped
