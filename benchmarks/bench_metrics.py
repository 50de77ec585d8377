"""What the metrics cost a vault's hot path (issue 17; RFC-NOTES §3.1), side by side in one run.

Two ``ppn vault serve`` processes over copies of one store, one with ``--metrics`` (the vault's
query counter, latency histogram and denial counter observed on every request, the endpoint
served and scraped every round) and one without. One client, in this process, sends small
pre-signed queries (one row each) over one TCP connection to each vault in turn, in batches,
alternating which vault goes first, so both see the same machine load. Reported: queries per
second of each (median over the rounds) and the throughput lost with metrics on. Goal: < 5 %.

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

NOW = 1_800_000_000
ROUNDS = 30
BATCH = 300


def _start(store: Path, metrics: bool) -> tuple[subprocess.Popen[str], int, str | None]:
    argv = [sys.executable, "-m", "ppn", "--log-format", "json", "vault", "serve"]
    argv += ["--store", str(store), "--listen", "127.0.0.1:0"]
    if metrics:
        argv += ["--metrics", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    address = None
    while metrics and address is None:
        record = json.loads(proc.stderr.readline())
        if record["event"] == "metrics":
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


def main() -> None:
    import trio

    from ppn import IdentityKey
    from psp import Query, Scope, invoke, mint
    from psp._io_store import KEY_FILE, Store
    from psp._io_vault import write_key_file
    from psp._trio import VaultClient

    with tempfile.TemporaryDirectory() as tmp:
        vkey, holder = IdentityKey.from_seed(b"v" * 32), IdentityKey.from_seed(b"h" * 32)
        on_store, off_store = Path(tmp) / "on", Path(tmp) / "off"
        store = Store.create(on_store, name="bench", vault_id=vkey.public, now=NOW)
        write_key_file(on_store / KEY_FILE, vkey)
        store.append_many(
            "people", [{"name": f"p{i}", "age": i % 90} for i in range(1000)], now=NOW
        )
        store.close()
        shutil.copytree(on_store, off_store)
        cap = mint(
            vkey,
            audience=holder.public,
            scope=Scope(vaults=(vkey.public,)),
            not_before=0,
            expires=NOW + 10**9,
            nonce=b"c" * 16,
        )
        query = Query(collection="people", limit=1).encode()
        now = int(time.time())
        total = ROUNDS * BATCH + BATCH  # + a warm-up batch
        envelopes = [
            invoke(
                cap,
                holder,
                vaults=[vkey.public],
                query_bytes=query,
                now=now,
                nonce=i.to_bytes(16, "big"),
            ).raw
            for i in range(total)
        ]
        on, on_port, metrics = _start(on_store, True)
        off, off_port, _ = _start(off_store, False)
        assert metrics is not None
        try:

            async def run() -> tuple[list[float], list[float]]:
                on_client = await VaultClient.connect("127.0.0.1", on_port)
                off_client = await VaultClient.connect("127.0.0.1", off_port)

                async def batch(client: VaultClient, start: int) -> float:
                    began = time.perf_counter()
                    for env in envelopes[start : start + BATCH]:
                        await client.fetch(env, query)
                    return BATCH / (time.perf_counter() - began)

                await batch(on_client, 0)  # warm-up: caches, connections, bytecode
                await batch(off_client, 0)
                rates_on, rates_off = [], []
                for r in range(ROUNDS):
                    start = BATCH * (r + 1)
                    if r % 2:
                        rates_on.append(await batch(on_client, start))
                        rates_off.append(await batch(off_client, start))
                    else:
                        rates_off.append(await batch(off_client, start))
                        rates_on.append(await batch(on_client, start))
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
    print(f"vault query throughput, one client, {ROUNDS} rounds of {BATCH} one-row queries:")
    print(f"    metrics off:  {off_rate:8,.0f} queries/s (median; min {min(rates_off):,.0f})")
    print(
        f"    metrics on:   {on_rate:8,.0f} queries/s (median; min {min(rates_on):,.0f})  [{counted:.0f} counted]"
    )
    print(
        f"    on / off: {on_rate / off_rate:.3f}   throughput lost {loss * 100:+.1f}%   "
        f"goal < 5 %: {'met' if loss < 0.05 else 'NOT met'}"
    )
