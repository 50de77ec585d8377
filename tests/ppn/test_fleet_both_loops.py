"""The fleet controller and the vm-host under trio and under asyncio (issue 20), over real TCP on
loopback (each member's mesh address is its own 127.0.0.N) and the operator's Unix socket: the
host's heartbeats make it live in the controller's status, a create is dispatched to it and
provisioned, the VM's state comes back in the next heartbeat, and a forged heartbeat is refused
without taking the controller down."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ppn import IdentityKey, wire
from ppn.fleet import (
    AsyncioFleetController,
    AsyncioVmHostService,
    FleetController,
    FleetControllerConfig,
    Member,
    StaticDirectory,
    VmHostConfig,
    VmHostService,
    derive_node_id,
)
from ppn.fleet._io_host import HostFacts, ProvisionerResult, load_vm_file
from ppn.fleet._operator import ControlRequest, encode_control_request
from tests._both_loops import LOOPS, served

INTERVAL = 0.2


def key(n: int) -> IdentityKey:
    return IdentityKey.from_seed(bytes([n]) * 32)


def directory() -> StaticDirectory:
    def member(n: int, name: str, roles: frozenset[str] = frozenset()) -> Member:
        return Member(node_id=derive_node_id(key(n).public), name=name, identity=key(n).public,
                      mesh_address=f"127.0.0.{n}", roles=roles)  # fmt: skip

    return StaticDirectory([member(1, "cloud", frozenset({"cloud"})), member(2, "a")])


def facts() -> HostFacts:
    return HostFacts(hostname="a", ram_total_mb=8192, ram_available_mb=4096, cpu_cores=4,
                     load_milli=100, kvm=True)  # fmt: skip


async def provision(spec: Any, request_id: bytes, action: Any) -> ProvisionerResult:
    # A plain coroutine with no awaits: it runs on either loop.
    return ProvisionerResult(ok=True, detail=f"{spec.name} up")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def services(tmp: Path) -> tuple[FleetControllerConfig, VmHostConfig]:
    spawn_port = free_port("127.0.0.2")
    controller = FleetControllerConfig(
        identity=key(1), directory=directory(), listen_address="127.0.0.1", port=0,
        control_path=str(tmp / "fleet.sock"), spawn_port=spawn_port, eviction_timeout=30,
    )  # fmt: skip
    host = VmHostConfig(
        identity=key(2), directory=directory(), controller_address="127.0.0.1",
        controller_port=0, listen_address="127.0.0.2", spawn_port=spawn_port,
        interval=INTERVAL, facts=facts, provision=provision,
        vm_state_path=str(tmp / "a-vms.bin"),
    )  # fmt: skip
    return controller, host


def serve(loop: str, tmp: Path) -> Any:
    controller_config, host_config = services(tmp)

    async def trio_start(task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(FleetController(controller_config).run)
            host_config.controller_port = port
            await nursery.start(VmHostService(host_config).run)
            task_status.started(port)

    async def asyncio_start() -> tuple[int, Callable[[], Any]]:
        controller = AsyncioFleetController(controller_config)
        port = await controller.start()
        host_config.controller_port = port
        host = AsyncioVmHostService(host_config)
        await host.start()

        async def aclose() -> None:
            await host.close()
            await controller.close()

        return port, aclose

    return served(loop, trio_start, asyncio_start)


def operator(path: Path, request: ControlRequest) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(path))
        body = wire.pack_canonical(encode_control_request(request))
        s.sendall(wire.encode_frame(body, max_size=len(body)))
        decoder = wire.FrameDecoder(max_size=1 << 20)
        while (frame := decoder.next_frame()) is None:
            chunk = s.recv(65536)
            assert chunk, "the controller closed the operator connection without a reply"
            decoder.feed(chunk)
    reply = wire.unpack_canonical(frame)
    assert isinstance(reply, dict)
    return reply


def wait_for(check: Callable[[], Any], what: str) -> Any:
    for _ in range(200):
        value = check()
        if value:
            return value
        time.sleep(INTERVAL / 2)
    raise AssertionError(f"never: {what}")


def live_nodes(sock: Path) -> dict[str, Any]:
    status = operator(sock, ControlRequest(op="status"))
    return {n["name"]: n for n in status["nodes"] if n.get("live", True)}


@pytest.mark.parametrize("loop", LOOPS)
def test_heartbeats_dispatch_and_provisioning(tmp_path: Path, loop: str) -> None:
    sock = tmp_path / "fleet.sock"
    with serve(loop, tmp_path) as port:
        wait_for(lambda: "a" in live_nodes(sock), "node a live in the status")
        created = operator(
            sock, ControlRequest(op="create", vm_type="totebox", ram_mb=512, name="t1", node="a")
        )
        assert created["ok"], created
        assert created["node"] == "a"

        def vm_running() -> bool:
            vms = live_nodes(sock)["a"].get("vms", [])
            return any(v.get("name") == "t1" and v.get("state") == "running" for v in vms)

        wait_for(vm_running, "the VM's running state in a heartbeat")
        # A heartbeat signed by a key that is not in the directory: refused, and serving goes on.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(wire.encode_frame(b"\x80", max_size=16))
            assert s.recv(4096), "no reply to a bad heartbeat"
        assert "a" in live_nodes(sock)


@pytest.mark.parametrize("loop", LOOPS)
def test_vm_lifecycle_and_saved_records(tmp_path: Path, loop: str) -> None:
    """Stop, start and delete (issue 18) on either loop: dispatched, run, reported, saved."""
    sock = tmp_path / "fleet.sock"

    def state(name: str) -> str | None:
        vms = operator(sock, ControlRequest(op="list"))["vms"]
        return next((v["state"] for v in vms if v["name"] == name), None)

    with serve(loop, tmp_path):
        wait_for(lambda: "a" in live_nodes(sock), "node a live in the status")
        create = ControlRequest(op="create", vm_type="generic", ram_mb=256, name="w1", node="a")
        assert operator(sock, create)["ok"]
        wait_for(lambda: state("w1") == "running", "w1 running")
        for op, settled in (("stop", "stopped"), ("start", "running")):
            reply = operator(sock, ControlRequest(op=op, name="w1"))
            assert reply["ok"] and reply["node"] == "a", reply
            wait_for(lambda s=settled: state("w1") == s, f"w1 {settled}")  # type: ignore[misc]
        saved = load_vm_file(tmp_path / "a-vms.bin")
        assert [(v.record.spec.name, v.record.state.value) for v in saved] == [("w1", "running")]
        assert operator(sock, ControlRequest(op="delete", name="w1"))["ok"]
        wait_for(lambda: state("w1") is None, "w1 gone")
        wait_for(lambda: load_vm_file(tmp_path / "a-vms.bin") == [], "w1 gone from the file")


def test_asyncio_services_stop_cleanly(tmp_path: Path) -> None:
    controller_config, host_config = services(tmp_path)

    async def main() -> None:
        controller = AsyncioFleetController(controller_config)
        host_config.controller_port = await controller.start()
        host = AsyncioVmHostService(host_config)
        await host.start()
        await asyncio.sleep(INTERVAL * 3)
        assert host.heartbeats_sent >= 1
        await host.close()
        await controller.close()

    asyncio.run(main())
    assert not (tmp_path / "fleet.sock").exists()
