"""PSP aggregation fan-out (issue 7 §4; RFC-NOTES §10): one count query to 100 and 1,000 vaults
on loopback through VM-Orchestration, side by side with the client fanning out to the same vaults
itself (concurrent trio tasks, pooled connections, no aggregator) in the same run.

Three processes: the vaults (all N in one trio process; each vault's own serving time and the
process's CPU are recorded), the aggregator (its CPU recorded), and the client (this one).
Timestamps are ``time.perf_counter`` (CLOCK_MONOTONIC, shared by processes on Linux).

Figures per round:
- ``e2e``: client sends the request → client has the complete answer.
- ``slowest``: the longest single vault's own time (authorizing the invocation and running the
  query, ``Vault.begin``).
- ``overhead above the slowest vault`` = e2e − slowest (the issue's definition). With every vault
  sharing one core here the vaults run one after another, so this includes their queueing; hence
- ``beyond the vault process's CPU`` = e2e − that process's CPU in the round: what the rest
  (aggregator, client, kernel) adds when the vaults themselves are the serialised part, and
- ``aggregator minus direct``: the same round's e2e through the aggregator minus the client's own
  fan-out (the named peer), paired round by round.
- aggregator CPU per vault = the aggregator process's CPU (user + system) in the round / N,
  beside the client's own CPU per vault when it fans out itself (same cores, same protocol).

Then the same with *stub* vaults that speak PSP but neither authorize nor read a store, which
separates what the aggregator costs from what the vaults cost.

The aggregator runs three times, each in its own process, taking turns round by round with the
direct fan-out (the order rotates each round): once per fan-out path
(``serve_orchestration(fanout=...)``): ``epoll`` (one task serves every vault of a request from an
epoll set) and ``tasks`` (a trio task per vault), both with the issue 14 protections on (the
listener guard, the allow-list naming the N vaults; RFC-NOTES §10.7), and ``epoll-open``: the
epoll path with them off (``handle_client`` on ``trio.serve_listeners``, no guard, any target;
the request charge, a few additions per target, cannot be switched off). So two A/Bs come from
one run: epoll against tasks, and protections on against off (goal: at most 10 % lost), each as
medians and as the median of the per-round ratio.

Goals (2-core box): overhead p50 ≤ 10 ms at 100 vaults, ≤ 150 ms at 1,000; aggregator CPU
≤ 100 µs per vault. Run: ``.venv/bin/python -m benchmarks psp_fanout``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any, cast

NOW = 1_800_000_000
RECORDS = 20
FANOUTS = ("epoll", "tasks")  # the aggregator's two fan-out paths, A/B in every run
# aggregator processes: name -> (fan-out, protections on); "epoll-open" is the on/off A/B
AGGREGATORS = {"epoll": ("epoll", True), "tasks": ("tasks", True), "epoll-open": ("epoll", False)}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _seed(i: int) -> bytes:
    return (i + 1).to_bytes(4, "big") * 8


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


# --- the vault process --------------------------------------------------------------------------


def _vault_process(n: int, stub: bool) -> None:
    import shutil

    import trio

    import psp._trio as vault_trio
    from ppn import IdentityKey
    from psp._io_store import KEY_FILE, Store
    from psp._io_vault import Vault, write_key_file

    _raise_fd_limit()
    timings: list[tuple[float, float]] = []
    original = Vault.begin

    def timed(self: Vault, request: Any, *, now: int) -> Any:
        # A vault's own time: authorizing the invocation and running the query (synchronous,
        # so no other vault of this process interleaves with it).
        start = time.perf_counter()
        try:
            return original(self, request, now=now)
        finally:
            timings.append((start, time.perf_counter()))

    Vault.begin = timed  # type: ignore[method-assign]
    tmp = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    vaults = []
    for i in range(0 if stub else n):
        key = IdentityKey.from_seed(_seed(i))
        d = os.path.join(tmp, str(i))
        store = Store.create(d, name=f"e{i}", vault_id=key.public, now=NOW)
        write_key_file(os.path.join(d, KEY_FILE), key)
        store.append_many("people", [{"name": f"p{j}", "age": j} for j in range(RECORDS)], now=NOW)
        store.close()
        vaults.append(Vault.open(d))

    async def stub_vault(vault_id: bytes, stream: trio.SocketStream) -> None:
        """Speaks PSP but neither authorizes nor reads a store: one count row at once."""
        from psp import End, Header, RowBatch, ServerConnection
        from psp._connection import ConnectionClosed
        from psp._messages import Request

        conn = ServerConnection(vault_id=vault_id)
        while True:
            data = await stream.receive_some(65536)
            conn.receive_data(bytes(data))
            while (event := conn.next_event()) is not None:
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, Request):
                    start = time.perf_counter()
                    rid = event.request_id
                    conn.send(Header(request_id=rid, vault=vault_id, query_id=b"q", as_of=RECORDS))
                    conn.send(RowBatch(request_id=rid, rows=(b'{"count":%d}' % RECORDS,)))
                    conn.send(End(request_id=rid, count=1, digest=conn.rows_digest))
                    timings.append((start, time.perf_counter()))
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
            if not data:
                return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ports = []
            for i in range(n):
                if stub:
                    handler = partial(stub_vault, IdentityKey.from_seed(_seed(i)).public)
                    serve = partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
                    listeners = await nursery.start(serve)
                else:
                    listeners = await nursery.start(
                        vault_trio.serve_vault, vaults[i], "127.0.0.1", 0
                    )
                ports.append(listeners[0].socket.getsockname()[1])
            print(json.dumps(ports), flush=True)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                print(json.dumps({"cpu": time.process_time(), "timings": timings}), flush=True)
                timings.clear()

    try:
        trio.run(main)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the aggregator process ---------------------------------------------------------------------


def _aggregator_process(fanout: str, allow_file: str | None) -> None:
    """Protections on with ``allow_file`` (the vaults, ``ID@HOST:PORT`` lines); off without."""
    import base64
    from pathlib import Path

    import trio

    from psp.aggregation import Fanout, VaultPool, handle_client, serve_orchestration
    from psp.aggregation._trio_server import AllowList

    _raise_fd_limit()

    async def serve_open(
        host: str, port: int, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners)
        handler = partial(handle_client, pool=VaultPool(), fanout=cast(Fanout, fanout))
        await trio.serve_listeners(handler, listeners)

    serve: Any = serve_open
    if allow_file is not None:
        entries = []
        for line in Path(allow_file).read_text().split():
            vault, _, address = line.partition("@")
            host, _, port = address.rpartition(":")
            entries.append((base64.b64decode(vault), host, int(port)))
        serve = partial(
            serve_orchestration, fanout=cast(Fanout, fanout), allowed=AllowList.of(entries)
        )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve, "127.0.0.1", 0)
            print("port", listeners[0].socket.getsockname()[1], flush=True)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                usage = resource.getrusage(resource.RUSAGE_SELF)
                print(f"{usage.ru_utime} {usage.ru_stime}", flush=True)

    trio.run(main)


# --- the client (this process) ------------------------------------------------------------------


class _Proc:
    def __init__(self, *args: str) -> None:
        prefix = ["-m", "benchmarks.bench_psp_fanout"]
        if args[0] == "--aggregator" and os.environ.get("FANOUT_AGG_SCRIPT"):
            prefix = [os.environ["FANOUT_AGG_SCRIPT"]]
        self.p = subprocess.Popen(
            [sys.executable, *prefix, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline()

    def ask(self) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write("?\n")
        self.p.stdin.flush()
        while (answer := self.line()).startswith("py-spy"):
            pass  # a profiler wrapping the process may print too
        return answer

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(timeout=30)


def _run(n: int, rounds: int, *, stub: bool = False) -> dict[str, Any]:
    import base64
    import secrets

    import trio

    from ppn import IdentityKey
    from psp import Query, Scope, mint
    from psp._trio import VaultClient
    from psp.aggregation import Mode, OrchestrationClient, VaultAddress, plan_targets

    _raise_fd_limit()
    vaults_proc = _Proc("--vaults", str(n), *(["--stub"] if stub else []))
    agg_procs: dict[str, _Proc] = {}
    allow = tempfile.NamedTemporaryFile("w", suffix=".txt")  # noqa: SIM115 (closed below)
    try:
        ports = json.loads(vaults_proc.line())
        keys = [IdentityKey.from_seed(_seed(i)) for i in range(n)]
        allow.write(
            "".join(
                f"{base64.b64encode(k.public).decode()}@127.0.0.1:{p}\n"
                for k, p in zip(keys, ports, strict=True)
            )
        )
        allow.flush()
        for name, (fanout, protected) in AGGREGATORS.items():
            extra = ["--allow", allow.name] if protected else []
            agg_procs[name] = _Proc("--aggregator", fanout, *extra)
        agg_ports = {}
        for fanout, agg_proc in agg_procs.items():
            while not (first := agg_proc.line()).startswith("port "):
                pass  # (a profiler wrapping the aggregator may print first)
            agg_ports[fanout] = int(first.split()[1])
        holder = IdentityKey.from_seed(b"H" * 32)
        addresses = [
            VaultAddress(vault=k.public, host="127.0.0.1", port=p)
            for k, p in zip(keys, ports, strict=True)
        ]
        now = int(time.time())
        caps = [
            mint(
                k,
                audience=holder.public,
                scope=Scope(vaults=(k.public,), rows=1000),
                not_before=0,
                expires=now + 3600,
                nonce=secrets.token_bytes(16),
            )
            for k in keys
        ]
        query = Query(collection="people", op="count")
        modes = (*AGGREGATORS, "direct")
        out: dict[str, Any] = {mode: [] for mode in modes}

        def vault_stats() -> tuple[float, list[tuple[float, float]]]:
            m = json.loads(vaults_proc.ask())
            return m["cpu"], [tuple(t) for t in m["timings"]]

        async def main() -> None:
            clients = {
                fanout: await OrchestrationClient.connect("127.0.0.1", port)
                for fanout, port in agg_ports.items()
            }
            # Connected at the first direct turn (a warm-up round), not here: a vault closes a
            # connection that sends no invocation within its first-frame deadline (§9.8), and
            # the aggregators' warm-up rounds come first.
            direct: list[VaultClient] = []
            try:
                for r in range(rounds + 2):  # the first two warm the pools
                    turn = r % len(modes)
                    for mode in modes[turn:] + modes[:turn]:
                        via = mode != "direct"
                        agg = mode if via else "epoll"  # (direct numbers its request there)
                        client, agg_proc = clients[agg], agg_procs[agg]
                        v_cpu0, _ = vault_stats()
                        a_user0, a_sys0 = map(float, agg_proc.ask().split())
                        _, targets = plan_targets(
                            holder,
                            caps,
                            addresses,
                            query,
                            request_id=client.next_request_id(),
                            now=int(time.time()),  # (a long run outlives one lifetime)
                            rng=secrets.token_bytes,
                        )
                        if not via and not direct:
                            direct += [await VaultClient.connect("127.0.0.1", p) for p in ports]
                        c_cpu0 = time.process_time()
                        t0 = time.perf_counter()
                        if via:
                            total = 0
                            failed: list[str] = []
                            async for event in client.events(
                                targets, mode=Mode.STRICT, deadline=30
                            ):
                                if hasattr(event, "complete"):
                                    assert event.complete, (mode, event, sorted(set(failed))[:5])  # type: ignore[union-attr]
                                elif hasattr(event, "status") and event.status.value != "ok":
                                    failed.append(f"{event.status.value} {event.message}")
                                elif hasattr(event, "rows") and isinstance(event.rows, tuple):
                                    total += sum(json.loads(row)["count"] for _, row in event.rows)
                            assert total == n * RECORDS, total
                        else:
                            counts: list[int] = []

                            async def one(c: VaultClient, t: Any, counts: list[int]) -> None:
                                res = await c.fetch(t.envelope, t.query)
                                counts.append(json.loads(res.rows[0])["count"])

                            async with trio.open_nursery() as nursery:
                                for c, t in zip(direct, targets, strict=True):
                                    nursery.start_soon(one, c, t, counts)
                            assert sum(counts) == n * RECORDS
                        t1 = time.perf_counter()
                        c_cpu1 = time.process_time()
                        v_cpu1, timings = vault_stats()
                        a_user1, a_sys1 = map(float, agg_proc.ask().split())
                        if r < 2:
                            continue
                        assert len(timings) == n, len(timings)
                        slowest = max(e - s for s, e in timings)
                        out[mode].append(
                            {
                                "e2e": t1 - t0,
                                "slowest": slowest,
                                "vault_cpu": v_cpu1 - v_cpu0,
                                "agg_cpu": a_user1 - a_user0 + a_sys1 - a_sys0,
                                "agg_sys": a_sys1 - a_sys0,
                                "client_cpu": c_cpu1 - c_cpu0,
                                "last_vault_end": max(e for _, e in timings) - t0,
                            }
                        )
            finally:
                for c in direct:
                    await c.aclose()
                for client in clients.values():
                    await client.aclose()

        trio.run(main)
        return out
    finally:
        vaults_proc.close()
        for agg_proc in agg_procs.values():
            agg_proc.close()
        allow.close()


def _report(n: int, out: dict[str, Any], goal_ms: float, *, stub: bool = False) -> None:
    def col(mode: str, key: str) -> list[float]:
        return [r[key] for r in out[mode]]

    def ms(xs: list[float]) -> str:
        return f"p50 {_pct(xs, 0.5) * 1e3:7.1f} ms  p99 {_pct(xs, 0.99) * 1e3:7.1f} ms"

    what = "stub vaults (PSP framing only)" if stub else f"vaults (a count over {RECORDS} records)"
    print(f"-- {n} {what}, {len(out['direct'])} rounds each")
    labels = {f: f"through the aggregator, {f}" for f in AGGREGATORS}
    labels["direct"] = "client fans out itself"
    for mode, label in labels.items():
        print(
            f"  {label:31} e2e {ms(col(mode, 'e2e'))}"
            f" | slowest vault {_pct(col(mode, 'slowest'), 0.5) * 1e3:5.2f} ms"
            f" | vault process CPU {_pct(col(mode, 'vault_cpu'), 0.5) * 1e3:6.1f} ms"
        )
    direct_cpu = statistics.median(r["client_cpu"] / n for r in out["direct"])
    cpu: dict[str, float] = {}
    for fanout in AGGREGATORS:
        via = out[fanout]
        over = [r["e2e"] - r["slowest"] for r in via]
        beyond = [r["e2e"] - r["vault_cpu"] for r in via]
        paired = [v["e2e"] - d["e2e"] for v, d in zip(via, out["direct"], strict=True)]
        print(
            f"  [{fanout}] overhead above the slowest vault {ms(over)}  (goal p50 ≤ {goal_ms:g} ms)"
        )
        print(
            f"  [{fanout}] e2e beyond the vault process's CPU (its vaults share one core) {ms(beyond)}"
        )
        print(f"  [{fanout}] aggregator minus direct fan-out, same round {ms(paired)}")
        cpu[fanout] = agg = statistics.median(r["agg_cpu"] / n for r in via)
        agg_sys = statistics.median(r["agg_sys"] / n for r in via)
        print(
            f"  [{fanout}] aggregator CPU per vault p50 {agg * 1e6:6.1f} µs"
            f" (goal ≤ 100; kernel {agg_sys * 1e6:.1f})"
            f" | client CPU per vault fanning out itself {direct_cpu * 1e6:6.1f} µs"
            f" | ratio {agg / direct_cpu:.2f}x"
        )
    for a, b in (FANOUTS, ("epoll", "epoll-open")):
        pairs = list(zip(out[a], out[b], strict=True))  # the same round: the same load on the box
        per_round = statistics.median(x["agg_cpu"] / y["agg_cpu"] for x, y in pairs)
        e2e = statistics.median(x["e2e"] / y["e2e"] for x, y in pairs)
        print(
            f"  A/B aggregator CPU per vault {a} {cpu[a] * 1e6:.1f} µs vs {b} {cpu[b] * 1e6:.1f} µs:"
            f" {a}/{b} {cpu[a] / cpu[b]:.2f} (median of per-round ratios {per_round:.2f});"
            f" e2e {a}/{b} per round {e2e:.2f} (median {_pct([x['e2e'] for x, _ in pairs], 0.5) * 1e3:.1f}"
            f" vs {_pct([y['e2e'] for _, y in pairs], 0.5) * 1e3:.1f} ms)"
        )


def main() -> None:
    for n, rounds, goal in ((100, 30, 10), (1000, 6, 150)):
        _report(n, _run(n, rounds), goal)
    # The same fan-out where the vaults cost next to nothing: what is left is the aggregator,
    # the client, the kernel and the shared cores.
    for n, rounds, goal in ((100, 30, 10), (1000, 8, 150)):
        _report(n, _run(n, rounds, stub=True), goal, stub=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--vaults":
        _vault_process(int(sys.argv[2]), stub="--stub" in sys.argv)
    elif len(sys.argv) > 2 and sys.argv[1] == "--aggregator":
        _aggregator_process(
            sys.argv[2], sys.argv[sys.argv.index("--allow") + 1] if "--allow" in sys.argv else None
        )
    else:
        main()
