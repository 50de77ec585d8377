"""The node agent under trio and under asyncio (issue 20): the genesis node's agent on one loop
(in a thread of its own) and a new member's agent on the other, or the same, over loopback TCP.
The member pulls the signed roster with its admission, replaces the admitter-signed entry with
its own and pushes it back; both sides end with the same roster."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from ppn import IdentityKey, WireGuardKeyPair, mesh
from ppn.mesh import node_address6
from tests._both_loops import LOOPS, served


class RecordingWireGuard:
    def __init__(self) -> None:
        self.reconciles = 0

    async def reconcile(self, roster: mesh.Roster) -> None:
        self.reconciles += 1  # no await: the same coroutine runs on either loop


def node(
    loop: str,
    agent: mesh.MeshAgent,
    wg: RecordingWireGuard,
    resolve: Callable[[str], Any],
    port: int = 0,
) -> Any:
    cls = mesh.MeshNode if loop == "trio" else mesh.AsyncioMeshNode
    return cls(agent, wireguard=wg, save=lambda roster: None, listen_host="127.0.0.1",
               listen_port=port, control_address=resolve)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("genesis_loop", LOOPS)
@pytest.mark.parametrize("member_loop", LOOPS)
def test_member_syncs_with_genesis(genesis_loop: str, member_loop: str) -> None:
    g_key, m_key = IdentityKey.generate(), IdentityKey.generate()
    now = int(time.time())
    g_roster = mesh.Roster.found(
        g_key, name="gen", wg_key=WireGuardKeyPair.generate().public, now=now
    )
    g_roster.admit(
        g_key, name="member", identity=m_key.public, wg_key=WireGuardKeyPair.generate().public,
        now=now, address="10.8.0.2",
    )  # fmt: skip
    m_roster = mesh.Roster(mesh=g_roster.mesh, network=g_roster.network)
    # The member's port is known before either agent runs: the genesis agent may dial it as
    # soon as the member has pushed its entry.
    ports: dict[str, int] = {"member": free_port()}
    where = {
        "10.8.0.1": "gen",
        node_address6(g_roster.mesh, g_key.public): "gen",
        "10.8.0.2": "member",
        node_address6(g_roster.mesh, m_key.public): "member",
    }

    def resolve(address: str) -> tuple[str, int]:
        return "127.0.0.1", ports[where[address]]

    g_wg, m_wg = RecordingWireGuard(), RecordingWireGuard()

    async def trio_start(task_status: trio.TaskStatus[int]) -> None:
        agent = mesh.MeshAgent(g_roster, identity=g_key, now=trio.current_time())
        async with trio.open_nursery() as nursery:
            task_status.started(await nursery.start(node("trio", agent, g_wg, resolve).run))

    async def asyncio_start() -> tuple[int, Callable[[], Any]]:
        loop = asyncio.get_running_loop()
        agent = mesh.MeshAgent(g_roster, identity=g_key, now=loop.time())
        started: asyncio.Future[int] = loop.create_future()
        task = asyncio.ensure_future(node("asyncio", agent, g_wg, resolve).run(started))

        async def aclose() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return await started, aclose

    def converged() -> bool:
        mine = m_roster.get(m_key.public)
        return mine is not None and mine.signer == m_key.public and m_roster.get(g_key.public)

    async def member_trio() -> None:
        agent = mesh.MeshAgent(m_roster, identity=m_key, now=trio.current_time(),
                               bootstrap=["10.8.0.1"])  # fmt: skip
        async with trio.open_nursery() as nursery:
            await nursery.start(node("trio", agent, m_wg, resolve, ports["member"]).run)
            with trio.fail_after(20):
                while not (converged() and g_has_member()):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def member_asyncio() -> None:
        loop = asyncio.get_running_loop()
        agent = mesh.MeshAgent(m_roster, identity=m_key, now=loop.time(), bootstrap=["10.8.0.1"])
        started: asyncio.Future[int] = loop.create_future()
        member = node("asyncio", agent, m_wg, resolve, ports["member"])
        task = asyncio.ensure_future(member.run(started))
        await started
        try:
            async with asyncio.timeout(20):
                while not (converged() and g_has_member()):
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def g_has_member() -> bool:
        # Read across threads: the genesis agent's roster only grows, and this only looks.
        record = g_roster.get(m_key.public)
        return record is not None and record.signer == m_key.public

    with served(genesis_loop, trio_start, asyncio_start) as port:
        ports["gen"] = port
        if member_loop == "trio":
            trio.run(member_trio)
        else:
            asyncio.run(member_asyncio())
        assert m_roster.digest() == g_roster.digest()
    assert m_wg.reconciles >= 1 and g_wg.reconciles >= 1


@pytest.mark.parametrize("loop", LOOPS)
def test_control_listener_caps_the_first_frame(loop: str) -> None:
    """Both agents' control listeners run behind the listener guard with CONTROL_LIMITS: a first
    frame announcing more than pre_auth_bytes is closed at once, not buffered until a timeout."""
    g_key = IdentityKey.generate()
    roster = mesh.Roster.found(
        g_key, name="gen", wg_key=WireGuardKeyPair.generate().public, now=int(time.time())
    )

    def resolve(address: str) -> tuple[str, int]:
        raise AssertionError("the node dials no one here")

    async def trio_start(task_status: trio.TaskStatus[int]) -> None:
        agent = mesh.MeshAgent(roster, identity=g_key, now=trio.current_time())
        async with trio.open_nursery() as nursery:
            task_status.started(await nursery.start(node("trio", agent, RecordingWireGuard(),
                                                         resolve).run))  # fmt: skip

    async def asyncio_start() -> tuple[int, Callable[[], Any]]:
        loop_ = asyncio.get_running_loop()
        agent = mesh.MeshAgent(roster, identity=g_key, now=loop_.time())
        started: asyncio.Future[int] = loop_.create_future()
        task = asyncio.ensure_future(node("asyncio", agent, RecordingWireGuard(), resolve)
                                     .run(started))  # fmt: skip

        async def aclose() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return await started, aclose

    with served(loop, trio_start, asyncio_start) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall((8 << 20).to_bytes(4, "big") + b"x" * 100)
            # The server's hello, then EOF (a socket timeout here fails the test).
            received = b""
            while chunk := s.recv(4096):
                received += chunk
            assert len(received) < 1024
