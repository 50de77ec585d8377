"""What the metrics cost a vault's hot path (issue 17; RFC-NOTES §3.1), side by side in one run.

Two vault processes over copies of one store, one with metrics (the vault's query counter,
latency histogram and denial counter observed on every request, the endpoint served and scraped
every round) and one without. One client, in this process, sends small signed queries (one row
each) over one TCP connection to each vault in turn, in batches, alternating which vault goes
first, so both see the same machine load. Reported: queries per second of each (median over the
rounds), and each vault process's CPU time per query (from /proc), whose ratio is the
throughput a CPU-bound vault loses with metrics on: the figure the goal (< 5 %) is judged on,
since on a shared build machine the wall clock mostly measures the neighbours.

Two pairs: ``served`` is ``ppn vault serve`` with and without ``--metrics``, as deployed (each
query also records its nonce in the store and an audit entry); ``lean`` is ``serve_vault`` with
the replay set in memory and no audit log, so a query costs only CPU and the metrics' share of it
is as large as it can be.

Run: ``.venv/bin/python -m benchmarks metrics``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

NOW = 1_800_000_000
ROUNDS = 30
BATCH = 300


_LEAN = r"""
import sys, trio
from functools import partial
from psp._io_store import Store
from psp._io_vault import Vault, read_key_file
from psp._trio import serve_vault
from psp._verifier import ReplaySet

async def main():
    vault = Vault(Store.open(sys.argv[1]), read_key_file(sys.argv[1] + "/vault.key"), audit=False)
    vault.verifier.replay = ReplaySet()
    observer = None
    async with trio.open_nursery() as n:
        if sys.argv[2] == "on":
            from ppn.cli._metrics import Metrics, VaultMetrics
            metrics = Metrics(1)
            observer = VaultMetrics(metrics.registry)
            address = await n.start(metrics.serve, ("127.0.0.1", 0))
            print(f"metrics {address[0]}:{address[1]}", file=sys.stderr, flush=True)
        listeners = await n.start(partial(serve_vault, observer=observer), vault, "127.0.0.1", 0)
        print(f"listening on 127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)

trio.run(main)
"""


def _start(store: Path, metrics: bool, lean: bool) -> tuple[subprocess.Popen[str], int, str | None]:
    if lean:
        argv = [sys.executable, "-c", _LEAN, str(store), "on" if metrics else "off"]
    else:
        argv = [sys.executable, "-m", "ppn", "--log-format", "json", "vault", "serve"]
        argv += ["--store", str(store), "--listen", "127.0.0.1:0"]
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    address = None
    while metrics and address is None:
        line = proc.stderr.readline()
        if lean:
            address = line.split()[1]
        elif (record := json.loads(line))["event"] == "metrics":
            address = str(record["address"])
    return proc, port, address


def _scraped_queries(address: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "psp_vault_queries_total" and sample.labels == {"outcome": "ok"}:
                return float(sample.value)
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _compare(template: Path, tmp: Path, lean: bool, query: bytes, sign: Any) -> None:
    import trio

    from psp._trio import VaultClient

    kind = "lean" if lean else "served"
    on_store, off_store = tmp / f"{kind}-on", tmp / f"{kind}-off"
    shutil.copytree(template, on_store)
    shutil.copytree(template, off_store)
    total = ROUNDS * BATCH + BATCH  # + a warm-up batch
    on, on_port, metrics = _start(on_store, True, lean)
    off, off_port, _ = _start(off_store, False, lean)
    assert metrics is not None
    try:

        async def run() -> tuple[list[float], list[float], float, float]:
            on_client = await VaultClient.connect("127.0.0.1", on_port)
            off_client = await VaultClient.connect("127.0.0.1", off_port)
            for env in sign(0):  # warm-up: caches, connections, bytecode
                await on_client.fetch(env, query)
                await off_client.fetch(env, query)
            cpu_on, cpu_off = _cpu_seconds(on.pid), _cpu_seconds(off.pid)
            rates_on, rates_off = [], []
            for r in range(ROUNDS):
                # Signed just before use (an invocation is valid for a short while, RFC-NOTES
                # §9.2); each vault keeps its own replay set, so one batch serves both. The two
                # vaults take turns query by query, so both see the same moment's load.
                spent = {True: 0.0, False: 0.0}
                for i, env in enumerate(sign((r + 1) * BATCH)):
                    for metrics_on in (i % 2 == 0, i % 2 == 1):
                        began = time.perf_counter()
                        await (on_client if metrics_on else off_client).fetch(env, query)
                        spent[metrics_on] += time.perf_counter() - began
                rates_on.append(BATCH / spent[True])
                rates_off.append(BATCH / spent[False])
                await trio.to_thread.run_sync(_scraped_queries, metrics)  # a scrape a round
            cpu_on = _cpu_seconds(on.pid) - cpu_on
            cpu_off = _cpu_seconds(off.pid) - cpu_off
            await on_client.aclose()
            await off_client.aclose()
            return rates_on, rates_off, cpu_on, cpu_off

        rates_on, rates_off, cpu_on, cpu_off = trio.run(run)
        counted = _scraped_queries(metrics)
    finally:
        for proc in (on, off):
            proc.terminate()
            proc.wait()
    assert counted == total, (counted, total)  # the metrics saw every query
    on_rate, off_rate = statistics.median(rates_on), statistics.median(rates_off)
    measured = ROUNDS * BATCH
    per_on, per_off = cpu_on / measured, cpu_off / measured
    cpu_loss = 1 - per_off / per_on  # the CPU-bound throughput lost: 1 - (1/per_on)/(1/per_off)
    print(f"  {kind}: {ROUNDS} rounds of {BATCH} one-row queries to each vault, in turns")
    print(
        f"    wall clock, one client:  off {off_rate:7,.0f} queries/s, on {on_rate:7,.0f} "
        f"queries/s (medians of the rounds); on/off {on_rate / off_rate:.3f}"
    )
    print(
        f"    vault CPU per query:     off {per_off * 1e6:7.1f} µs, on {per_on * 1e6:7.1f} µs; "
        f"throughput a CPU-bound vault loses with metrics on: {cpu_loss * 100:+.1f}%   "
        f"goal < 5 %: {'met' if cpu_loss < 0.05 else 'NOT met'}"
    )


def main() -> None:
    from ppn import IdentityKey
    from psp import Query, Scope, invoke, mint
    from psp._io_store import KEY_FILE, Store
    from psp._io_vault import write_key_file

    with tempfile.TemporaryDirectory() as tmp:
        vkey, holder = IdentityKey.from_seed(b"v" * 32), IdentityKey.from_seed(b"h" * 32)
        template = Path(tmp) / "template"
        store = Store.create(template, name="bench", vault_id=vkey.public, now=NOW)
        write_key_file(template / KEY_FILE, vkey)
        store.append_many(
            "people", [{"name": f"p{i}", "age": i % 90} for i in range(1000)], now=NOW
        )
        store.close()
        cap = mint(
            vkey,
            audience=holder.public,
            scope=Scope(vaults=(vkey.public,)),
            not_before=0,
            expires=NOW + 10**9,
            nonce=b"c" * 16,
        )
        query = Query(collection="people", limit=1).encode()

        def sign(first: int) -> list[bytes]:
            now = int(time.time())
            return [
                invoke(
                    cap,
                    holder,
                    vaults=[vkey.public],
                    query_bytes=query,
                    now=now,
                    nonce=i.to_bytes(16, "big"),
                ).raw
                for i in range(first, first + BATCH)
            ]

        print("vault query throughput, metrics on vs off, side by side:")
        for lean in (False, True):
            _compare(template, Path(tmp), lean, query, sign)
