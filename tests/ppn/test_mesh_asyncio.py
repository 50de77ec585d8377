"""The asyncio node agent (ppn.mesh.AsyncioMeshNode): two agents on one event loop, over
loopback TCP. The new member bootstraps from the genesis node's mesh address, pulls the signed
roster with its admission, replaces the admitter-signed entry with its own and pushes it back;
both save and reconcile; a stopped agent closes its listener."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ppn import IdentityKey, WireGuardKeyPair, mesh
from ppn.mesh._asyncio import pull_once
from ppn.mesh._ids import node_address6


class RecordingWireGuard:
    def __init__(self) -> None:
        self.reconciles = 0

    async def reconcile(self, roster: mesh.Roster) -> None:
        self.reconciles += 1


async def _scenario() -> None:
    loop = asyncio.get_running_loop()
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
    ports: dict[str, int] = {}
    where = {
        "10.8.0.1": "gen",
        node_address6(g_roster.mesh, g_key.public): "gen",
        "10.8.0.2": "member",
        node_address6(g_roster.mesh, m_key.public): "member",
    }

    def control_address(address: str) -> tuple[str, int]:
        return "127.0.0.1", ports[where[address]]

    saved = {"gen": 0, "member": 0}

    def saver(name: str) -> Callable[[mesh.Roster], None]:
        def save(roster: mesh.Roster) -> None:
            saved[name] += 1

        return save

    wg = {"gen": RecordingWireGuard(), "member": RecordingWireGuard()}
    nodes = {}
    for name, key, roster, bootstrap in (
        ("gen", g_key, g_roster, []),
        ("member", m_key, m_roster, ["10.8.0.1"]),
    ):
        agent = mesh.MeshAgent(roster, identity=key, now=loop.time(), bootstrap=bootstrap)
        nodes[name] = mesh.AsyncioMeshNode(
            agent,
            wireguard=wg[name],
            save=saver(name),
            listen_host="127.0.0.1",
            listen_port=0,
            control_address=control_address,
        )
    # The genesis node must listen before the member's first (immediate) pull.
    tasks = {}
    for name in ("gen", "member"):
        started: asyncio.Future[int] = loop.create_future()
        tasks[name] = asyncio.create_task(nodes[name].run(started))
        ports[name] = await started
        assert ports[name] > 0

    async def converged() -> None:
        while True:
            record = g_roster.get(m_key.public)
            if record is not None and record.signer == m_key.public and m_roster.get(g_key.public):
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(converged(), 10)
    assert m_roster.digest() == g_roster.digest()
    assert nodes["member"].stats.pulls_ok >= 1 and nodes["member"].stats.pushes_ok >= 1
    assert nodes["gen"].stats.served >= 2
    assert saved["member"] >= 1 and saved["gen"] >= 1
    assert wg["member"].reconciles >= 1 and wg["gen"].reconciles >= 1

    # A one-shot pull sees the same roster: nothing to change.
    events = await pull_once("127.0.0.1", ports["gen"], m_roster)
    assert any(isinstance(e, mesh.SyncComplete) for e in events)

    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    try:
        await asyncio.open_connection("127.0.0.1", ports["gen"])
    except OSError:
        pass
    else:
        raise AssertionError("the stopped agent still listens")


def test_asyncio_agents_sync_roster_over_tcp() -> None:
    asyncio.run(_scenario())
