"""The trio services with trio's autojump clock: heartbeats every 10 s, eviction on the timer,
placement, dispatch and the provisioner's result in the next heartbeat. Connections are
in-memory streams routed to the right service by (address, port)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from ppn.fleet import (
    FleetController,
    FleetControllerConfig,
    StaticDirectory,
    VmAction,
    VmHostConfig,
    VmHostService,
    VmSpec,
)
from ppn.fleet._io_host import HostFacts, ProvisionerResult, run_provisioner
from ppn.fleet._operator import ControlRequest

from ._fleet_support import fleet_directory, make_key, make_member

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class FakeNet:
    """(address, port) -> handler; connect() opens an in-memory stream pair to it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.routes: dict[tuple[str, int], Handler] = {}
        self.down: set[str] = set()
        self.connections: list[tuple[str, int, float]] = []

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        self.connections.append((address, port, trio.current_time()))
        if address in self.down or (address, port) not in self.routes:
            raise OSError(113, "No route to host")
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.routes[(address, port)], theirs)
        return ours


def facts(avail: int, *, kvm: bool = False) -> Callable[[], HostFacts]:
    return lambda: HostFacts(
        hostname="h",
        ram_total_mb=avail * 2,
        ram_available_mb=avail,
        cpu_cores=2,
        load_milli=10,
        kvm=kvm,
    )


def setup(net: FakeNet, directory: StaticDirectory) -> FleetController:
    controller = FleetController(
        FleetControllerConfig(identity=make_key(1), directory=directory, connect=net.connect)
    )
    net.routes[("10.8.0.1", 9203)] = controller.serve_heartbeat_stream
    net.nursery.start_soon(controller.eviction_timer)
    return controller


def host(net: FakeNet, n: int, avail: int, **kw: object) -> VmHostService:
    counter = iter(range(1, 10**6))
    config = VmHostConfig(
        identity=make_key(n),
        directory=fleet_directory(),
        connect=net.connect,
        facts=facts(avail),
        boot_id=b"B" * 16,
        sequence=lambda: next(counter),
        **kw,  # type: ignore[arg-type]
    )
    service = VmHostService(config)
    net.routes[(service.member.mesh_address, 9220)] = service.serve_spawn_stream
    return service


async def test_heartbeats_every_10_s_and_eviction_on_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        net = FakeNet(nursery)
        controller = setup(net, fleet_directory())
        a = host(net, 2, 4096)
        t0 = trio.current_time()
        a_scope = trio.CancelScope()
        nursery.start_soon(_run_in, a_scope, a.heartbeat_loop)
        await trio.sleep(35)
        a_scope.cancel()
        # a sent at t0, +10, +20, +30, then stopped (a node gone silent).
        sends = [round(t - t0, 6) for (addr, port, t) in net.connections if port == 9203]
        assert sends == [0, 10, 20, 30]
        assert a.heartbeats_sent == 4 and a.heartbeats_missed == 0
        assert [r.name for r in controller.table.live_nodes()] == ["a"]
        # Nobody asks the table anything; the timer alone must evict at exactly t0 + 60.
        await trio.sleep_until(t0 + 59.999)
        assert [r.name for r in controller.table.live_nodes()] == ["a"]
        await trio.sleep_until(t0 + 60.001)
        assert controller.table.live_nodes() == []
        (evicted,) = controller.table.evicted_nodes()
        assert evicted.name == "a"
        assert evicted.silent_for == pytest.approx(30.0, abs=1e-6)
        nursery.cancel_scope.cancel()


async def _run_in(scope: trio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()


async def test_missed_sends_are_logged_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        net = FakeNet(nursery)
        controller = setup(net, fleet_directory())
        a = host(net, 2, 4096)
        net.down.add("10.8.0.1")  # the controller is unreachable at first
        nursery.start_soon(a.heartbeat_loop)
        await trio.sleep(25)
        assert a.heartbeats_missed == 3 and a.heartbeats_sent == 0
        assert "heartbeat not delivered" in caplog.text
        net.down.clear()
        await trio.sleep(10)
        assert a.heartbeats_sent == 1
        assert [r.name for r in controller.table.live_nodes()] == ["a"]
        nursery.cancel_scope.cancel()


async def test_place_dispatch_and_provisioner_result_in_next_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    launched: list[tuple[VmSpec, bytes]] = []

    async def provision(spec: VmSpec, request_id: bytes, action: VmAction) -> ProvisionerResult:
        launched.append((spec, request_id))
        await trio.sleep(3)  # booting a VM takes a while
        return ProvisionerResult(ok=True, detail="qemu pid 4242")

    async with trio.open_nursery() as nursery:
        net = FakeNet(nursery)
        controller = setup(net, fleet_directory())
        hosts = [
            host(net, 2, 4096, provision=provision),
            host(net, 3, 16384, provision=provision),
            host(net, 4, 65536, provision=provision, reserved=True),
        ]
        for h in hosts:
            nursery.start_soon(h.heartbeat_loop)
        await trio.sleep(1)
        ask = ControlRequest(op="place", vm_type="generic", ram_mb=2048, vcpus=2)
        advice = await controller.handle_control(ask)
        assert advice["ok"] and advice["node"] == "b"  # most RAM among non-reserved
        assert {n["name"] for n in advice["nodes"]} == {"a", "b", "c"}
        result = await controller.handle_control(
            ControlRequest(
                op="create", vm_type="generic", ram_mb=2048, vcpus=2, node="b", name="web-1"
            )
        )
        assert result["ok"], result
        assert result["node"] == "b" and result["vm"]["name"] == "web-1"
        await trio.sleep(0.1)
        assert [s.name for s, _ in launched] == ["web-1"]
        assert launched[0][1].hex() == result["request_id"]
        status = controller.status()
        b = next(n for n in status["nodes"] if n["name"] == "b")
        assert b["vms"] == []  # not reported until b's next heartbeat
        await trio.sleep(10)
        status = controller.status()
        b = next(n for n in status["nodes"] if n["name"] == "b")
        assert [(vm["name"], vm["state"], vm["detail"]) for vm in b["vms"]] == [
            ("web-1", "running", "qemu pid 4242")
        ]
        # A duplicate name is refused by the vm-host; the controller says so.
        again = await controller.handle_control(
            ControlRequest(op="create", vm_type="generic", ram_mb=512, node="b", name="web-1")
        )
        assert (
            not again["ok"]
            and again["error"] == "dispatch"
            and "already exists" in again["message"]
        )
        # Totebox without a node: refused before anything is dispatched.
        tote = await controller.handle_control(
            ControlRequest(op="place", vm_type="totebox", ram_mb=512)
        )
        assert not tote["ok"] and "must name its node" in tote["message"]
        nursery.cancel_scope.cancel()


async def test_dispatch_to_an_unreachable_node_fails_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        net = FakeNet(nursery)
        controller = setup(net, fleet_directory())
        a = host(net, 2, 4096)
        nursery.start_soon(a.heartbeat_loop)
        await trio.sleep(1)
        net.down.add(a.member.mesh_address)
        result = await controller.create(
            ControlRequest(op="create", vm_type="generic", ram_mb=512, node="a")
        )
        assert not result["ok"] and result["error"] == "dispatch"
        # A node that has no provisioner refuses spawns.
        net.down.clear()
        result = await controller.create(
            ControlRequest(op="create", vm_type="generic", ram_mb=512, node="a")
        )
        assert not result["ok"] and "no provisioner" in result["message"]
        nursery.cancel_scope.cancel()


async def test_spawn_from_a_non_controller_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member that is not the controller cannot make a vm-host launch anything."""
    launched: list[VmSpec] = []

    async def provision(spec: VmSpec, request_id: bytes, action: VmAction) -> ProvisionerResult:
        launched.append(spec)
        return ProvisionerResult(ok=True, detail="")

    impostor_dir = StaticDirectory(
        [make_member(2, "a", roles=frozenset({"cloud"})), make_member(3, "b")]
    )
    async with trio.open_nursery() as nursery:
        net = FakeNet(nursery)
        b = host(net, 3, 8192, provision=provision)  # b trusts the real directory: cloud is 1
        rogue = FleetController(
            FleetControllerConfig(identity=make_key(2), directory=impostor_dir, connect=net.connect)
        )
        net.routes[("10.8.0.2", 9203)] = rogue.serve_heartbeat_stream
        b.config.controller_address = "10.8.0.2"
        nursery.start_soon(b.heartbeat_loop)
        await trio.sleep(1)
        result = await rogue.create(
            ControlRequest(op="create", vm_type="generic", ram_mb=512, node="b")
        )
        assert not result["ok"] and launched == []
        nursery.cancel_scope.cancel()


async def test_real_provisioner_gets_the_spec(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = tmp_path / "prov.py"
    script.write_text(
        "import json, os, sys\n"
        f"spec = json.load(sys.stdin)\nspec['env_name'] = os.environ['PPN_VM_NAME']\n"
        f"open({str(out)!r}, 'w').write(json.dumps(spec))\nprint('started ok')\n"
    )
    spec = VmSpec(vm_type="generic", name="db-1", ram_mb=256, vcpus=1)
    result = await run_provisioner([sys.executable, str(script)], spec, b"\x01" * 16, timeout=30)
    assert result.ok and result.detail == "started ok"
    seen = json.loads(out.read_text())
    assert seen == {
        **spec.to_wire(),
        "request_id": "01" * 16,
        "action": "create",
        "keep_data": False,
        "env_name": "db-1",
    }
    failing = await run_provisioner(
        [sys.executable, "-c", "import sys; sys.exit('no disk')"], spec, b"\x02" * 16, timeout=30
    )
    assert not failing.ok and "exited 1" in failing.detail and "no disk" in failing.detail
    missing = await run_provisioner([str(tmp_path / "nope")], spec, b"\x03" * 16, timeout=30)
    assert not missing.ok and "could not start" in missing.detail


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x05abc",
        b"\x00\x00\x00\x02\xc1\xc1",
        b"",
        b"\x00\x00\x00\x01",
    ],
)
async def test_hostile_bytes_never_take_a_service_down(
    autojump_clock: trio.testing.MockClock, garbage: bytes
) -> None:
    """Oversized headers, truncation, invalid msgpack, silence: each connection just ends."""
    async with trio.open_nursery() as nursery:
        net = FakeNet(nursery)
        controller = setup(net, fleet_directory())
        a = host(net, 2, 4096)
        handlers = [
            controller.serve_heartbeat_stream,
            controller._serve_control,
            a.serve_spawn_stream,
        ]
        for handler in handlers:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(handler, theirs)
            if garbage:
                await ours.send_all(garbage)
            else:
                await ours.send_eof()
            await trio.sleep(60)  # past every per-connection timeout
            await ours.aclose()
        # The services still work afterwards.
        assert await a.send_heartbeat()
        assert [r.name for r in controller.table.live_nodes()] == ["a"]
        nursery.cancel_scope.cancel()
