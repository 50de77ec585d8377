"""The trio adapter: agents pushing, pulling every 30 s (autojump clock), over memory and TCP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from ppn.mesh._agent import MeshAgent
from ppn.mesh._ids import node_address6
from ppn.mesh._roster import Roster
from ppn.mesh._trio import MeshNode, pull_once
from tests.ppn._mesh_support import Fleet, identity, wg


class FakeWireGuard:
    def __init__(self) -> None:
        self.reconciles = 0
        self.members: set[str] = set()

    async def reconcile(self, roster: Roster) -> None:
        self.reconciles += 1
        self.members = {m.name for m in roster.view().members}


def platform() -> Fleet:
    fleet = Fleet()
    fleet.admit("relay", roles=("relay",), endpoints=("192.0.2.2:51820",))
    fleet.admit("cloud", endpoints=("198.51.100.3:51820",), now=1002)
    return fleet


class Cluster:
    """Agents for some members of a fleet, connected through in-memory streams."""

    def __init__(self, fleet: Fleet, names: list[str]) -> None:
        self.fleet = fleet
        self.nodes: dict[str, MeshNode] = {}
        self.by_address: dict[str, MeshNode] = {}
        self.wg: dict[str, FakeWireGuard] = {}
        self.saved: dict[str, int] = {}
        self.names = names

    def node(self, name: str) -> MeshNode:
        roster = self.fleet.roster.copy()
        agent = MeshAgent(roster, identity=self.fleet.keys[name], now=trio.current_time())
        self.wg[name] = FakeWireGuard()
        self.saved[name] = 0

        def save(_roster: Roster, name: str = name) -> None:
            self.saved[name] += 1

        node = MeshNode(
            agent, wireguard=self.wg[name], save=save, listen_host=None, connect=self.connect
        )
        address = node_address6(self.fleet.mesh, self.fleet.keys[name].public)
        self.nodes[name] = node
        self.by_address[address] = node
        return node

    async def connect(self, address: str) -> trio.abc.Stream:
        target = self.by_address.get(address)
        if target is None or target._nursery is None:
            raise OSError(f"{address} is offline")
        client, server = trio.testing.memory_stream_pair()
        target.accept_stream(server)
        return client


async def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)
    return trio.current_time() - start


def knows(node: MeshNode, key: Any) -> bool:
    return node.roster.view().member(key.public) is not None


async def test_an_admission_is_pushed_to_every_member_at_once(autojump_clock: Any) -> None:
    fleet = platform()
    cluster = Cluster(fleet, ["genesis", "relay", "cloud"])
    async with trio.open_nursery() as nursery:
        for name in ("genesis", "relay", "cloud"):
            await nursery.start(cluster.node(name).run)
        await trio.sleep(1)
        genesis = cluster.nodes["genesis"]
        delta = identity("delta")
        record = genesis.roster.admit(
            fleet.genesis, name="delta", identity=delta.public, wg_key=wg("delta").public, now=1500
        )
        genesis.merged_locally(_changed(record))
        took = await wait_until(
            lambda: all(knows(cluster.nodes[n], delta) for n in ("relay", "cloud")), 5
        )
        assert took < 1.0  # pushed, not waiting for the 30 s pull
        await trio.sleep(0.5)
        assert "delta" in cluster.wg["cloud"].members  # reconciled after the change
        assert cluster.saved["relay"] >= 1
        nursery.cancel_scope.cancel()


def _changed(record: Any) -> Any:
    from ppn.mesh._roster import MergeResult

    return MergeResult(changed=(record,))


async def test_anti_entropy_pull_every_30_seconds(autojump_clock: Any) -> None:
    fleet = platform()
    cluster = Cluster(fleet, ["genesis", "relay"])
    async with trio.open_nursery() as nursery:
        for name in ("genesis", "relay"):
            await nursery.start(cluster.node(name).run)
        started = trio.current_time()
        await trio.sleep(5)  # both have pulled once (genesis retries: relay started after it)
        genesis, relay = cluster.nodes["genesis"], cluster.nodes["relay"]
        assert genesis.stats.pulls_ok >= 1 and relay.stats.pulls_ok >= 1
        # A change the agent is not told about (a lost push): only anti-entropy repairs it.
        echo = identity("echo")
        genesis.roster.admit(
            fleet.genesis, name="echo", identity=echo.public, wg_key=wg("echo").public, now=1500
        )
        await trio.sleep_until(started + 29.5)
        assert not knows(relay, echo)
        await trio.sleep_until(started + 30.5)
        assert knows(relay, echo)
        assert relay.stats.pulls_ok >= 2 and genesis.stats.pulls_ok >= 1  # cloud is offline
        nursery.cancel_scope.cancel()


async def test_a_node_that_was_down_catches_up_when_it_starts(autojump_clock: Any) -> None:
    fleet = platform()
    cluster = Cluster(fleet, ["genesis", "cloud"])
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.node("genesis").run)
        genesis = cluster.nodes["genesis"]
        foxtrot = identity("foxtrot")
        record = genesis.roster.admit(
            fleet.genesis,
            name="foxtrot",
            identity=foxtrot.public,
            wg_key=wg("foxtrot").public,
            now=1600,
        )
        genesis.merged_locally(_changed(record))  # cloud is down: its push fails
        await trio.sleep(1)
        assert genesis.stats.pushes_failed >= 1
        cloud = cluster.node("cloud")
        await nursery.start(cloud.run)
        await wait_until(lambda: knows(cloud, foxtrot), 2)  # pulled on start
        nursery.cancel_scope.cancel()


async def test_bad_records_from_a_peer_are_reported_not_merged(autojump_clock: Any) -> None:
    fleet = platform()
    cluster = Cluster(fleet, ["genesis"])
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.node("genesis").run)
        genesis = cluster.nodes["genesis"]
        forger = Roster(mesh=fleet.mesh, network=fleet.roster.network)
        good = fleet.admit("golf", now=1700)
        from ppn.mesh._records import MemberRecord

        assert isinstance(good, MemberRecord)
        forged = MemberRecord(
            admission=good.admission,
            wg_key=good.wg_key,
            address="10.8.0.77",
            endpoints=(),
            roles=(),
            version=1,
            signer=good.signer,
            signature=good.signature,
        )
        object.__setattr__(forged, "checked", True)  # slip it past the local guard
        from ppn.mesh._control import Push, PushAcknowledged
        from ppn.mesh._trio import _client_operation

        forger.merge([forged])
        client, server = trio.testing.memory_stream_pair()
        genesis.accept_stream(server)

        async def connect() -> trio.abc.Stream:
            return client

        await _client_operation(connect, forger, Push(records=(forged,)), PushAcknowledged)
        await wait_until(lambda: bool(genesis.stats.rejected), 1)
        assert "did not verify" in genesis.stats.rejected[0].detail
        assert genesis.roster.get(good.identity) is None
        nursery.cancel_scope.cancel()


async def test_over_tcp_on_loopback() -> None:
    fleet = platform()
    ports: dict[str, int] = {}
    nodes = {}
    async with trio.open_nursery() as nursery:
        for name in ("genesis", "relay"):
            roster = fleet.roster.copy()
            agent = MeshAgent(roster, identity=fleet.keys[name], now=trio.current_time())
            address = node_address6(fleet.mesh, fleet.keys[name].public)
            node = MeshNode(
                agent,
                wireguard=FakeWireGuard(),
                save=lambda r: None,
                listen_host="127.0.0.1",
                listen_port=0,
                control_address=lambda a: ("127.0.0.1", ports.get(a, 1)),
            )
            ports[address] = await nursery.start(node.run)
            nodes[name] = node
        hotel = identity("hotel")
        record = nodes["relay"].roster.admit(
            fleet.keys["relay"],
            name="hotel",
            identity=hotel.public,
            wg_key=wg("hotel").public,
            now=1800,
        )
        nodes["relay"].merged_locally(_changed(record))
        await wait_until(lambda: knows(nodes["genesis"], hotel), 5)
        # And a standalone pull from outside sees the same digest.
        outsider = Roster(mesh=fleet.mesh, network=fleet.roster.network)
        events = await pull_once(
            "127.0.0.1", ports[node_address6(fleet.mesh, fleet.genesis.public)], outsider
        )
        assert events and outsider.digest() == nodes["genesis"].roster.digest()
        nursery.cancel_scope.cancel()


async def test_the_control_listener_follows_a_new_address() -> None:
    fleet = platform()
    roster = fleet.roster.copy()
    agent = MeshAgent(roster, identity=fleet.genesis, now=trio.current_time())
    node = MeshNode(
        agent,
        wireguard=FakeWireGuard(),
        save=lambda r: None,
        listen_host="127.0.0.1",
        listen_port=0,
        control_address=lambda a: ("127.0.0.1", 1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        node.listen_port = node.bound_port  # keep the port, move the address
        port = node.bound_port
        assert port
        await node.rebind("127.0.0.2")
        outsider = Roster(mesh=fleet.mesh, network=fleet.roster.network)
        await pull_once("127.0.0.2", port, outsider)
        assert outsider.digest() == roster.digest()
        try:
            await pull_once("127.0.0.1", port, outsider)
        except OSError:
            pass
        else:  # pragma: no cover - the old address must no longer answer
            raise AssertionError("the old listener still answers")
        nursery.cancel_scope.cancel()
