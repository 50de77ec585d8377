"""The join ceremony's cost: CPU per side in-process, and ``ppn join`` start-to-SAS wall time.

1. In-process, per side: one complete ceremony with the two sans-IO cores wired in memory
   (frames, canonical msgpack, CPace, commitment, key confirmation, SAS, sealed bundles),
   timing each side's calls separately. Side by side with the peer, python-spake2 0.9 (the
   PAKE magic-wormhole uses), one side's start + finish, in interleaved rounds.
2. Loopback, wall clock: from starting ``ppn join`` (a fresh interpreter) to its SAS line on
   stdout, against a sponsor already waiting; side by side with a bare ``python -c pass``
   start, so the ratio says what the ceremony adds to interpreter start.
3. On a LAN of two network namespaces (root only): ``ppn join CODE`` finding the sponsor by
   mDNS against ``ppn join CODE --sponsor HOST:PORT``, start to SAS, interleaved in one run
   (RFC-NOTES §5.12: discovery may add at most ~300 ms).

    .venv/bin/python -m benchmarks ceremony
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spake2 import SPAKE2_A, SPAKE2_B

from genesis import (
    AcceptWindow,
    ConfirmSas,
    Grant,
    Joiner,
    MemberRecord,
    PartyInfo,
    Sponsor,
    make_code,
    mesh_id_for,
)
from ppn import IdentityKey, WireGuardKeyPair

GOAL_CPU_MS = 5.0
GOAL_WALL_S = 1.0
GOAL_DISCOVERY_S = 0.3


def _party(name: str) -> PartyInfo:
    return PartyInfo(
        name=name, identity=IdentityKey.generate().public, wg=WireGuardKeyPair.generate().public
    )


ALPHA, BETA = _party("alpha"), _party("beta")
ROSTER = (
    MemberRecord(
        name="alpha",
        identity=ALPHA.identity,
        wg=ALPHA.wg,
        address="10.8.0.1",
        endpoints=("192.0.2.1:51820",),
        roles=("genesis",),
    ),
)


def ceremony_per_side() -> tuple[float, float]:
    """One full ceremony; returns (sponsor seconds, joiner seconds)."""
    spent = {"s": 0.0, "j": 0.0}

    def timed(side: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            spent[side] += time.perf_counter() - start

    code = make_code(1, secrets.token_bytes(5))
    sponsor = timed(
        "s",
        lambda: Sponsor(
            me=ALPHA, mesh_id=mesh_id_for(ALPHA.identity), nonce=secrets.token_bytes(16), now=0
        ),
    )
    joiner = timed(
        "j",
        lambda: Joiner(
            me=BETA, code=code, nonce=secrets.token_bytes(16), now=0, endpoints=("192.0.2.2:51820",)
        ),
    )

    def pump() -> None:
        while True:
            to_s = timed("j", joiner.data_to_send)
            if to_s:
                timed("s", sponsor.receive_data, to_s, 0)
            to_j = timed("s", sponsor.data_to_send)
            if to_j:
                timed("j", joiner.receive_data, to_j, 0)
            if not to_s and not to_j:
                return

    pump()
    timed("s", sponsor.next_event)
    timed("s", sponsor.send, AcceptWindow(code=code), 0)
    pump()
    s_sas, j_sas = timed("s", sponsor.next_event), timed("j", joiner.next_event)
    assert s_sas.sas == j_sas.sas
    timed("j", joiner.send, ConfirmSas(accept=True), 0)
    grant = Grant(cidr="10.8.0.0/24", address="10.8.0.2", roster=ROSTER)
    timed("s", sponsor.send, ConfirmSas(accept=True, grant=grant), 0)
    pump()
    assert timed("s", sponsor.next_event) is not None and timed("j", joiner.next_event) is not None
    return spent["s"], spent["j"]


def spake2_per_side() -> float:
    a, b = SPAKE2_A(b"1-K3QF-M2XD"), SPAKE2_B(b"1-K3QF-M2XD")
    start = time.perf_counter()
    msg_a = a.start()
    elapsed = time.perf_counter() - start
    msg_b = b.start()
    start = time.perf_counter()
    key_a = a.finish(msg_b)
    elapsed += time.perf_counter() - start
    assert key_a == b.finish(msg_a)
    return elapsed


def _start_sponsor(base: Path, n: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppn",
            "genesis",
            "--state",
            str(base / f"s{n}"),
            "--name",
            "alpha",
            "--listen",
            "127.0.0.1:0",
            "--events",
            "json",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def join_to_sas_wall(base: Path, n: int) -> float:
    sponsor, code = _start_sponsor(base, n)
    try:
        start = time.perf_counter()
        joiner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ppn",
                "join",
                code["code"],
                "--sponsor",
                code["address"],
                "--state",
                str(base / f"j{n}"),
                "--name",
                "beta",
                "--events",
                "json",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert joiner.stdout is not None
        line = joiner.stdout.readline()
        elapsed = time.perf_counter() - start
        assert json.loads(line)["event"] == "sas"
        joiner.kill()
        joiner.wait()
        return elapsed
    finally:
        sponsor.kill()
        sponsor.wait()


def bare_interpreter_wall() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def discovery_vs_sponsor(samples: int = 7) -> tuple[list[float], list[float]] | None:
    """Start -> SAS for the two ways a joiner finds its sponsor, on a two-namespace LAN."""
    from interop.join_discovery import lan, ppn, read_event, start
    from interop.netns import Lab, netns_unavailable_reason

    if netns_unavailable_reason(need_wireguard=False) is not None:
        return None
    found: list[float] = []
    direct: list[float] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        (sp_host, _), (jo_host, _) = lan(lab, ["bsp", "bjo"])
        for n in range(2 * samples):
            deadline = time.monotonic() + 60
            sponsor = start(
                sp_host,
                ppn("genesis", "--state", f"{tmp}/s{n}", "--name", "alpha", "--events", "json"),
            )
            code = read_event(sponsor.stdout, deadline)
            time.sleep(1.5)  # the announcement is out (mDNS probing takes about a second)
            by_mdns = n % 2 == 0
            where = [] if by_mdns else ["--sponsor", code["address"]]
            argv = ppn("join", code["code"], *where, "--state", f"{tmp}/j{n}", "--name", "beta")
            begin = time.perf_counter()
            joiner = start(jo_host, [*argv, "--events", "json"])
            event = read_event(joiner.stdout, deadline)
            elapsed = time.perf_counter() - begin
            assert event["event"] == "sas", event
            (found if by_mdns else direct).append(elapsed)
            for proc in (joiner, sponsor):
                proc.kill()
                proc.wait()
    return found, direct


def main() -> None:
    for _ in range(5):
        ceremony_per_side()
        spake2_per_side()
    rounds, per_round = 15, 20
    sponsor_ms: list[float] = []
    joiner_ms: list[float] = []
    spake_ms: list[float] = []
    for _ in range(rounds):
        s_total = j_total = 0.0
        for _ in range(per_round):
            s, j = ceremony_per_side()
            s_total += s
            j_total += j
        sponsor_ms.append(s_total / per_round * 1e3)
        joiner_ms.append(j_total / per_round * 1e3)
        spake_ms.append(statistics.mean(spake2_per_side() for _ in range(2)) * 1e3)
    s_med, j_med, p_med = (statistics.median(v) for v in (sponsor_ms, joiner_ms, spake_ms))
    print(f"ceremony CPU per side, in-process (median of {rounds} interleaved rounds)")
    print(f"  sponsor, whole ceremony:            {s_med:7.3f} ms")
    print(f"  joiner,  whole ceremony:            {j_med:7.3f} ms")
    print(
        f"  spake2 0.9, one side start+finish:  {p_med:7.3f} ms   (PAKE only, no framing/SAS/bundles)"
    )
    print(f"  ratio spake2 side / our worst side: {p_med / max(s_med, j_med):.1f}x")
    worst = max(s_med, j_med)
    print(f"  goal <= {GOAL_CPU_MS} ms per side: {'met' if worst <= GOAL_CPU_MS else 'MISSED'}")

    samples = 7
    join_s: list[float] = []
    bare_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-ceremony-") as tmp:
        for n in range(samples):
            join_s.append(join_to_sas_wall(Path(tmp), n))
            bare_s.append(bare_interpreter_wall())
    j_wall, b_wall = statistics.median(join_s), statistics.median(bare_s)
    print(f"'ppn join' start to SAS on stdout, loopback (median of {samples}, interleaved)")
    print(f"  ppn join -> SAS line:     {j_wall * 1e3:7.1f} ms")
    print(f"  python -c pass:           {b_wall * 1e3:7.1f} ms")
    print(f"  ratio join-to-SAS / bare interpreter start: {j_wall / b_wall:.1f}x")
    print(f"  goal <= {GOAL_WALL_S} s: {'met' if j_wall <= GOAL_WALL_S else 'MISSED'}")
    sys.stdout.flush()

    lan_result = discovery_vs_sponsor()
    if lan_result is None:
        print("discovery vs --sponsor: skipped (needs root and network namespaces)")
        return
    by_mdns, by_address = (statistics.median(v) for v in lan_result)
    print(
        f"'ppn join' start to SAS on a 2-namespace LAN (median of {len(lan_result[0])}, interleaved)"
    )
    print(f"  ppn join CODE            (mDNS discovery): {by_mdns * 1e3:7.1f} ms")
    print(f"  ppn join CODE --sponsor HOST:PORT:         {by_address * 1e3:7.1f} ms")
    added = by_mdns - by_address
    print(
        f"  discovery adds {added * 1e3:.0f} ms; goal <= {GOAL_DISCOVERY_S * 1e3:.0f} ms: "
        f"{'met' if added <= GOAL_DISCOVERY_S else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
