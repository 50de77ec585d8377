"""Controller-side heartbeat handling: ours versus an upstream-style unsigned JSON heartbeat.

Ours (per heartbeat): canonical-msgpack decode of envelope and body (each re-encoded to check
canonical form), Ed25519 verification (PyNaCl/libsodium), membership, replay check and the node
table update, i.e. ``NodeTable.receive_heartbeat``. The peer is what the platform's own code does
today (ARCHITECTURE §5): ``json.loads`` of an unsigned heartbeat and a dict update, no
authentication. The ratio is the price of authenticated, replay-checked heartbeats. A breakdown
shows the Ed25519 verification alone, and signing (the vm-host side).

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
                    "vms": [{**vm.to_wire(), "request_id": vm.request_id.hex()}
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


if __name__ == "__main__":
    main()
