"""What the metrics cost a vault's hot path (issue 17; RFC-NOTES §3.1), side by side in one run.

Two vault processes over copies of one store, one with metrics (the vault's query counter,
latency histogram and denial counter observed on every request, the endpoint served and scraped
every round) and one without. One client, in this process, sends small signed queries (one row
each) over one TCP connection to each vault in turn, in batches, alternating which vault goes
first, so both see the same machine load. Reported: queries per second of each (median over the
rounds) and the throughput lost with metrics on. Goal: < 5 %.

Two pairs: ``served`` is ``ppn vault serve`` with and without ``--metrics``, as deployed (each
query also records its nonce in the store and an audit entry); ``lean`` is ``serve_vault`` with
the replay set in memory and no audit log, so a query costs only CPU and the metrics' share of it
is as large as it can be.

Run: ``.venv/bin/python -m benchmarks metrics``.
"""

from __future__ import annotations

import json
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

        async def run() -> tuple[list[float], list[float]]:
            on_client = await VaultClient.connect("127.0.0.1", on_port)
            off_client = await VaultClient.connect("127.0.0.1", off_port)

            async def batch(client: VaultClient, envelopes: list[bytes]) -> float:
                began = time.perf_counter()
                for env in envelopes:
                    await client.fetch(env, query)
                return BATCH / (time.perf_counter() - began)

            warm = sign(0)  # warm-up: caches, connections, bytecode
            await batch(on_client, warm)
            await batch(off_client, warm)
            rates_on, rates_off = [], []
            for r in range(ROUNDS):
                # Signed just before use (an invocation is valid for a short while, RFC-NOTES
                # §9.2); each vault keeps its own replay set, so one batch serves both.
                envelopes = sign((r + 1) * BATCH)
                if r % 2:
                    rates_on.append(await batch(on_client, envelopes))
                    rates_off.append(await batch(off_client, envelopes))
                else:
                    rates_off.append(await batch(off_client, envelopes))
                    rates_on.append(await batch(on_client, envelopes))
                await trio.to_thread.run_sync(_scraped_queries, metrics)  # a scrape a round
            await on_client.aclose()
            await off_client.aclose()
            return rates_on, rates_off

        rates_on, rates_off = trio.run(run)
        counted = _scraped_queries(metrics)
    finally:
        for proc in (on, off):
            proc.terminate()
            proc.wait()
    assert counted == total, (counted, total)  # the metrics saw every query
    on_rate, off_rate = statistics.median(rates_on), statistics.median(rates_off)
    loss = 1 - on_rate / off_rate
    ratios = sorted(a / b for a, b in zip(rates_on, rates_off, strict=True))
    print(f"  {kind}: {ROUNDS} rounds of {BATCH} one-row queries, one client")
    print(f"    metrics off: {off_rate:8,.0f} queries/s (median; min {min(rates_off):,.0f})")
    print(f"    metrics on:  {on_rate:8,.0f} queries/s (median; min {min(rates_on):,.0f})")
    print(
        f"    on / off: {on_rate / off_rate:.3f} (per-round ratios: median "
        f"{statistics.median(ratios):.3f}, p10 {ratios[len(ratios) // 10]:.3f})   throughput "
        f"lost {loss * 100:+.1f}%   goal < 5 %: {'met' if loss < 0.05 else 'NOT met'}"
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
