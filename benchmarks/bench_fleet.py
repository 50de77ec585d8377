"""Controller-side heartbeat handling: ours versus an upstream-style unsigned JSON heartbeat.

Ours (per heartbeat): canonical-msgpack decode of envelope and body (each re-encoded to check
canonical form), Ed25519 verification (PyNaCl/libsodium), membership, replay check and the node
table update, i.e. ``NodeTable.receive_heartbeat``. The peer is what the platform's own code does
today (ARCHITECTURE §5): ``json.loads`` of an unsigned heartbeat and a dict update, no
authentication. The ratio is the price of authenticated, replay-checked heartbeats. A breakdown
shows the Ed25519 verification alone, and signing (the vm-host side).

Then the price of durable VM records (issue 18): stop/start requests dispatched by a real
controller over loopback TCP to a vm-host that saves its records (atomic write + fsync) before
it answers, against one that keeps them in memory, alternating; medians per request.

Interleaved rounds so load from other processes hits both alike; medians per heartbeat.

    .venv/bin/python -m benchmarks fleet
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from ppn import IdentityKey, verify_signature, wire
from ppn.fleet import (
    Heartbeat,
    Member,
    NodeTable,
    StaticDirectory,
    VmRecord,
    VmSpec,
    VmState,
    derive_node_id,
    encode_heartbeat,
)

NODES = 3
BATCH = 200
ROUNDS = 15


def _fleet() -> tuple[StaticDirectory, list[IdentityKey], list[Heartbeat]]:
    keys = [IdentityKey.from_seed(bytes([i + 1]) * 32) for i in range(NODES)]
    members = [
        Member(
            node_id=derive_node_id(k.public),
            name=f"n{i}",
            identity=k.public,
            mesh_address=f"10.8.0.{i + 1}",
            roles=frozenset({"cloud"}) if i == 0 else frozenset(),
        )
        for i, k in enumerate(keys)
    ]
    vms = tuple(
        VmRecord(
            request_id=bytes([j]) * 16,
            spec=VmSpec(vm_type="generic", name=f"vm-{j}", ram_mb=1024, vcpus=2),
            state=VmState.RUNNING,
            detail="qemu pid 1234",
        )
        for j in range(4)
    )
    heartbeats = [
        Heartbeat(
            node_id=m.node_id,
            mesh_address=m.mesh_address,
            hostname=m.name,
            ram_total_mb=32768,
            ram_available_mb=20000,
            cpu_cores=8,
            load_milli=420,
            kvm=True,
            reserved=False,
            vms=vms,
            boot_id=b"B" * 16,
            seq=1,
        )
        for m in members
    ]
    return StaticDirectory(members), keys, heartbeats


def _median_us(fn: Callable[[], None], rounds: list[float]) -> None:
    start = time.perf_counter()
    fn()
    rounds.append((time.perf_counter() - start) / BATCH * 1e6)


def main() -> None:
    directory, keys, heartbeats = _fleet()
    total = BATCH * ROUNDS * 2
    signed = [
        encode_heartbeat(replace(heartbeats[i % NODES], seq=i + 1), keys[i % NODES])
        for i in range(total)
    ]
    plain = [
        json.dumps({**heartbeats[i % NODES].to_wire(), "boot_id": "42" * 16, "seq": i + 1,
                    "vms": [{**vm.to_wire(), "request_id": vm.request_id.hex(),
                             "action_id": vm.action_id.hex()}
                            for vm in heartbeats[i % NODES].vms]}).encode()
        for i in range(total)
    ]  # fmt: skip
    table = NodeTable(directory)
    upstream_table: dict[str, dict[str, object]] = {}
    ours: list[float] = []
    theirs: list[float] = []
    verify_only: list[float] = []
    sign_only: list[float] = []
    cursor = 0
    env = wire.unpack_canonical(signed[0])
    message = b"ppn fleet heartbeat v1\x00" + env["body"]
    for _ in range(ROUNDS):
        chunk = signed[cursor : cursor + BATCH]
        plain_chunk = plain[cursor : cursor + BATCH]
        cursor += BATCH

        def run_ours(chunk: list[bytes] = chunk) -> None:
            for payload in chunk:
                table.receive_heartbeat(payload, 1.0)
                while table.next_event() is not None:
                    pass

        def run_theirs(chunk: list[bytes] = plain_chunk) -> None:
            for payload in chunk:
                hb = json.loads(payload)
                upstream_table[hb["node_id"]] = {"hb": hb, "last_seen": 1.0}

        def run_verify() -> None:
            for _ in range(BATCH):
                verify_signature(env["key"], message, env["sig"])

        def run_sign() -> None:
            for i in range(BATCH):
                encode_heartbeat(heartbeats[i % NODES], keys[i % NODES])

        _median_us(run_ours, ours)
        _median_us(run_theirs, theirs)
        _median_us(run_verify, verify_only)
        _median_us(run_sign, sign_only)

    m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
    m_verify, m_sign = statistics.median(verify_only), statistics.median(sign_only)
    print(
        f"heartbeat payload: ours {len(signed[0])} B signed msgpack, upstream-style {len(plain[0])} B JSON"
    )
    print(
        f"ours     NodeTable.receive_heartbeat : {m_ours:8.1f} µs/heartbeat ({1e6 / m_ours:9.0f}/s)"
    )
    print(
        f"upstream json.loads + dict update    : {m_theirs:8.1f} µs/heartbeat ({1e6 / m_theirs:9.0f}/s)"
    )
    print(
        f"ratio ours / upstream                : {m_ours / m_theirs:8.1f}x (the price of authentication)"
    )
    print(
        f"  of which Ed25519 verify alone      : {m_verify:8.1f} µs ({m_verify / m_ours:.0%} of ours)"
    )
    print(f"vm-host side encode + sign           : {m_sign:8.1f} µs/heartbeat")
    budget = 10.0 * 1e6 / m_ours
    print(f"one controller core keeps up with ~{budget:,.0f} nodes heartbeating every 10 s")
    actions_main()


if __name__ == "__main__":
    main()


# --- the price of durable VM records (issue 18) ------------------------------------------------

ACTIONS = 40  # stop/start requests per setup, alternating between the two


def _action_rounds() -> tuple[list[float], list[float], str]:
    """Stop/start round trips through the controller to two vm-hosts on loopback TCP: one saves
    its VM records (atomic write + fsync) before answering, the other keeps them in memory."""
    import tempfile
    from pathlib import Path

    import trio

    from ppn.fleet import FleetController, FleetControllerConfig, VmHostConfig, VmHostService
    from ppn.fleet._io_host import HostFacts, ProvisionerResult
    from ppn.fleet._operator import ControlRequest
    from ppn.fleet._vm import SETTLED_STATES

    keys = [IdentityKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    net = "127.71.9"
    members = [
        Member(node_id=derive_node_id(k.public), name=name, identity=k.public,
               mesh_address=f"{net}.{i + 1}",
               roles=frozenset({"cloud"}) if i == 0 else frozenset())
        for i, (k, name) in enumerate(zip(keys, ("cloud", "durable", "memory"), strict=True))
    ]  # fmt: skip
    directory = StaticDirectory(members)
    durable: list[float] = []
    memory: list[float] = []
    where = tempfile.mkdtemp(prefix="ppn-bench-vms-")

    def facts() -> HostFacts:
        return HostFacts(hostname="h", ram_total_mb=65536, ram_available_mb=60000,
                         cpu_cores=64, load_milli=0, kvm=True)  # fmt: skip

    async def provision(spec: VmSpec, request_id: bytes, action: object) -> ProvisionerResult:
        return ProvisionerResult(ok=True, detail="")

    async def run() -> None:
        import socket

        with socket.socket() as s:
            s.bind((f"{net}.2", 0))
            spawn_port = s.getsockname()[1]
        controller = FleetController(
            FleetControllerConfig(identity=keys[0], directory=directory,
                                  listen_address=f"{net}.1", port=0, spawn_port=spawn_port)
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            port = await nursery.start(controller.run)
            hosts = {}
            for i, name in ((1, "durable"), (2, "memory")):
                path = str(Path(where) / "vms.bin") if name == "durable" else None
                host = VmHostService(
                    VmHostConfig(identity=keys[i], directory=directory,
                                 controller_address=f"{net}.1", controller_port=port,
                                 listen_address=f"{net}.{i + 1}", spawn_port=spawn_port,
                                 interval=0.05, facts=facts, provision=provision,
                                 vm_state_path=path)
                )  # fmt: skip
                await nursery.start(host.run)
                hosts[name] = host
            while len(controller.table.live_nodes()) < 2:
                await trio.sleep(0.01)
            for name in hosts:
                create = ControlRequest(op="create", vm_type="generic", ram_mb=64, name=f"vm-{name}",
                                        node=name)  # fmt: skip
                assert (await controller.create(create))["ok"]
            while len(controller.vm_list()["vms"]) < 2 or any(
                v["state"] != "running" for v in controller.vm_list()["vms"]
            ):
                await trio.sleep(0.01)
            for i in range(ACTIONS):
                op = "stop" if i % 2 == 0 else "start"
                for name, out in (("durable", durable), ("memory", memory)):
                    start = time.perf_counter()
                    reply = await controller.act(ControlRequest(op=op, name=f"vm-{name}"))
                    out.append((time.perf_counter() - start) * 1e3)
                    assert reply["ok"], reply
                    host = hosts[name]
                    while any(vm.state not in SETTLED_STATES for vm in host.vms.values()):
                        await trio.sleep(0.001)
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        import shutil

        shutil.rmtree(where, ignore_errors=True)
    return durable, memory, where


def actions_main() -> None:
    durable, memory, where = _action_rounds()
    m_d, m_m = statistics.median(durable), statistics.median(memory)
    print(f"VM stop/start dispatch, controller -> vm-host over loopback TCP, {ACTIONS} each:")
    print(f"  records saved before the answer (atomic write + fsync in {where}): {m_d:7.2f} ms")
    print(f"  records in memory only                                          : {m_m:7.2f} ms")
    print(f"  ratio saved / memory: {m_d / m_m:.2f}x (the price of surviving a restart)")
