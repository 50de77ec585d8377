"""PSP core, side by side in one run (issue 6 §6; RFC-NOTES §9).

(a) warm authorization of an invocation at a vault (decode, chain and scope checks, one
    Ed25519 verify, replay set, query permit) versus a bare PyNaCl Ed25519 verify. Goal p50 ≤ 150 µs.
(b) one small query round trip through PSP (vault in another process, trio TCP on loopback)
    versus a bare length-prefixed msgpack echo over trio TCP, same process layout. Goal ≤ 1.5x.
(d) query throughput with the audit log (RFC-NOTES §9.4.5: every answer's entry committed with
    fsync before its end, group-committed) versus the same vault with the log off (what main
    did before it): one client in a loop, and 8 concurrent clients; two vault processes on two
    copies of one store, measured in alternating rounds.
(c) store append rate in batches (goal ≥ 20 000 entries/s) versus plain SQLite inserts with no
    triggers or chain, and an as_of-pinned filtered query over 100 000 entries.

Run: ``.venv/bin/python -m benchmarks psp``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOW = 1_800_000_000


def _pcts(samples: list[float]) -> str:
    s = sorted(samples)
    return f"min {s[0] * 1e6:6.1f}  p50 {statistics.median(s) * 1e6:7.1f}  p90 {s[int(len(s) * 0.9)] * 1e6:7.1f} µs"


def bench_authorization(n: int = 3000) -> None:
    from nacl.signing import VerifyKey

    from ppn import IdentityKey
    from psp import Query, Scope, Verifier, admit, delegate, invoke, mint

    vault, alice, bob = (IdentityKey.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    root = mint(
        vault,
        audience=alice.public,
        scope=Scope(vaults=(vault.public,), rows=1000),
        not_before=0,
        expires=NOW + 10**6,
        nonce=b"r" * 16,
    )
    cap = delegate(
        root,
        alice,
        audience=bob.public,
        scope=Scope(
            vaults=(vault.public,),
            collections=("people",),
            fields=("age", "name"),
            ops=("count", "read"),
            rows=100,
        ),
        not_before=0,
        expires=NOW + 10**5,
        nonce=b"d" * 16,
    )
    query = Query(collection="people", select=("name",), limit=10).encode()
    envelopes = [
        invoke(
            cap, bob, vaults=[vault.public], query_bytes=query, now=NOW, nonce=i.to_bytes(16, "big")
        ).raw
        for i in range(n + 1)
    ]
    verifier = Verifier(vault.public)
    admit(verifier, envelopes[-1], query, now=NOW)  # warm: the chain's link signatures are cached
    signature, message = bob.sign(b"x" * 200), b"x" * 200
    key = VerifyKey(bob.public)
    auth, bare = [], []
    for env in envelopes[:n]:
        t = time.perf_counter()
        admit(verifier, env, query, now=NOW)
        auth.append(time.perf_counter() - t)
        t = time.perf_counter()
        key.verify(message, signature)
        bare.append(time.perf_counter() - t)
    cold = []
    for env in envelopes[:300]:  # a fresh verifier each time: all three signatures checked
        fresh = Verifier(vault.public)
        t = time.perf_counter()
        admit(fresh, env, query, now=NOW)
        cold.append(time.perf_counter() - t)
    ratio = statistics.median(auth) / statistics.median(bare)
    print(
        f"(a) warm authorization, 2-link chain:  {_pcts(auth)}   [{len(envelopes[0])}-byte envelope]"
    )
    print(f"    cold (3 signatures, new verifier): {_pcts(cold)}")
    print(f"    bare Ed25519 verify (PyNaCl):      {_pcts(bare)}")
    print(
        f"    ratio authorization / bare verify: {ratio:.2f}x   goal p50 ≤ 150 µs: {'met' if statistics.median(auth) <= 150e-6 else 'NOT met'}"
    )


_SERVER = r"""
import sys, trio
from functools import partial
from ppn.wire import FrameDecoder, encode_frame
import msgpack
from psp._io_vault import Vault
from psp._trio import serve_vault

NOW = 1_800_000_000

async def echo(stream):
    dec = FrameDecoder(max_size=1 << 20)
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            dec.feed(data)
            while (frame := dec.next_frame()) is not None:
                value = msgpack.unpackb(frame, raw=False)
                await stream.send_all(encode_frame(msgpack.packb(value, use_bin_type=True), max_size=1 << 20))

async def main():
    vault = Vault.open(sys.argv[1])
    if sys.argv[2] == "noaudit":  # the audit log off: what the vault did before it (bench d)
        from psp._io_store import Store
        from psp._io_vault import read_key_file
        vault.close()
        vault = Vault(Store.open(sys.argv[1]), read_key_file(sys.argv[1] + "/vault.key"), audit=False)
    async with trio.open_nursery() as n:
        if sys.argv[2] in ("on", "noaudit"):
            psp = await n.start(partial(serve_vault, vault, "127.0.0.1", 0, clock=lambda: NOW))
        else:  # issue 14's protections off: no listener guard, replay set in memory, no slices
            from psp._trio import handle_connection
            from psp._verifier import ReplaySet
            vault.verifier.replay = ReplaySet()
            vault.store.slicing = False
            psp = await trio.open_tcp_listeners(0, host="127.0.0.1")
            n.start_soon(trio.serve_listeners, partial(handle_connection, vault, clock=lambda: NOW), psp)
        ech = await trio.open_tcp_listeners(0, host="127.0.0.1")
        n.start_soon(trio.serve_listeners, echo, ech)
        print(psp[0].socket.getsockname()[1], ech[0].socket.getsockname()[1], flush=True)

trio.run(main)
"""


def _bench_vault(directory: Path, n: int) -> tuple[bytes, list[bytes]]:
    """A vault of 1,000 people in ``directory``, a small query (the protocol, not a table scan)
    and ``n`` invocations of it, pre-signed."""
    from ppn import IdentityKey
    from psp import Query, Scope, invoke, mint
    from psp._io_store import KEY_FILE, Store
    from psp._io_vault import write_key_file

    vkey, holder = IdentityKey.from_seed(b"v" * 32), IdentityKey.from_seed(b"h" * 32)
    store = Store.create(directory, name="bench", vault_id=vkey.public, now=NOW)
    write_key_file(directory / KEY_FILE, vkey)
    store.append_many("people", [{"name": f"p{i}", "age": i % 90} for i in range(1000)], now=NOW)
    store.close()
    cap = mint(
        vkey,
        audience=holder.public,
        scope=Scope(vaults=(vkey.public,)),
        not_before=0,
        expires=NOW + 10**6,
        nonce=b"c" * 16,
    )
    query = Query(collection="people", limit=1).encode()
    envelopes = [
        invoke(
            cap,
            holder,
            vaults=[vkey.public],
            query_bytes=query,
            now=NOW,
            nonce=i.to_bytes(16, "big"),
        ).raw
        for i in range(n)
    ]
    return query, envelopes


def bench_round_trip(rounds: int = 1500) -> None:
    import msgpack
    import trio

    from ppn.wire import FrameDecoder, encode_frame
    from psp._trio import VaultClient

    with tempfile.TemporaryDirectory() as tmp:
        query, envelopes = _bench_vault(Path(tmp), rounds + 50)
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, tmp, "on"], stdout=subprocess.PIPE, text=True
        )
        server_off = subprocess.Popen(
            [sys.executable, "-c", _SERVER, tmp, "off"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None and server_off.stdout is not None
            psp_port, echo_port = (int(x) for x in server.stdout.readline().split())
            off_port = int(server_off.stdout.readline().split()[0])
            payload = msgpack.packb(
                {"t": "req", "id": 1, "inv": envelopes[0], "q": query, "credit": 8},
                use_bin_type=True,
            )

            async def run() -> tuple[list[float], list[float], list[float], int]:
                client = await VaultClient.connect("127.0.0.1", psp_port)
                client_off = await VaultClient.connect("127.0.0.1", off_port)
                echo = await trio.open_tcp_stream("127.0.0.1", echo_port)
                dec = FrameDecoder(max_size=1 << 20)
                frame = encode_frame(payload, max_size=1 << 20)

                async def echo_once() -> None:
                    await echo.send_all(frame)
                    while dec.next_frame() is None:
                        dec.feed(bytes(await echo.receive_some(65536)))

                psp_t, off_t, echo_t, rows = [], [], [], 0
                for i in range(rounds + 50):  # interleaved, so all see the same machine load
                    first, second = (client, client_off) if i % 2 else (client_off, client)
                    t = time.perf_counter()
                    result = await first.fetch(envelopes[i], query)
                    d1 = time.perf_counter() - t
                    t = time.perf_counter()
                    await second.fetch(envelopes[i], query)
                    d0 = time.perf_counter() - t
                    if first is client_off:
                        d1, d0 = d0, d1
                    t = time.perf_counter()
                    await echo_once()
                    d2 = time.perf_counter() - t
                    if i >= 50:  # warm-up
                        psp_t.append(d1)
                        off_t.append(d0)
                        echo_t.append(d2)
                        rows += len(result.rows)
                await client.aclose()
                await client_off.aclose()
                await echo.aclose()
                return psp_t, off_t, echo_t, rows

            psp_t, off_t, echo_t, rows = trio.run(run)
        finally:
            for proc in (server, server_off):
                proc.kill()
                proc.wait()
    ratio = statistics.median(psp_t) / statistics.median(echo_t)
    print(
        f"(b) PSP query round trip (1 row):      {_pcts(psp_t)}   [{rows / len(psp_t):.0f} row/query, invocation pre-signed]"
    )
    print(f"    bare msgpack echo, same size:      {_pcts(echo_t)}   [{len(payload)}-byte request]")
    lost = statistics.median(psp_t) / statistics.median(off_t) - 1
    print(
        f"    issue 14 protections off:          {_pcts(off_t)}   (no listener guard, replay "
        f"set in memory, no loop slices)"
    )
    print(
        f"    protections on vs off (p50):       {lost * 100:+.1f}%   goal ≤ +10%: "
        f"{'met' if lost <= 0.10 else 'NOT met'}"
    )
    print(
        f"    ratio PSP / echo:                  {ratio:.2f}x   goal ≤ 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}"
    )


def bench_audit(rounds: int = 6, per_round: int = 300, clients: int = 8) -> None:
    import shutil

    import trio

    from psp._io_store import Store
    from psp._trio import VaultClient

    with tempfile.TemporaryDirectory() as tmp:
        on_dir, off_dir = Path(tmp) / "on", Path(tmp) / "off"
        total = (rounds * (clients + 1) + 1) * 2 * per_round  # + the warm-up
        query, signed = _bench_vault(on_dir, total)
        envelopes = iter(signed)
        shutil.copytree(on_dir, off_dir)
        servers = {
            mode: subprocess.Popen(
                [sys.executable, "-c", _SERVER, str(d), mode], stdout=subprocess.PIPE, text=True
            )
            for mode, d in (("on", on_dir), ("noaudit", off_dir))
        }
        try:
            ports = {}
            for mode, proc in servers.items():
                assert proc.stdout is not None
                ports[mode] = int(proc.stdout.readline().split()[0])

            async def loop(port: int, n: int) -> None:
                async with await VaultClient.connect("127.0.0.1", port) as client:
                    for _ in range(n):
                        await client.fetch(next(envelopes), query)

            async def measure(port: int, k: int) -> float:
                t = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(k):
                        nursery.start_soon(loop, port, per_round)
                return k * per_round / (time.perf_counter() - t)

            async def run() -> dict[tuple[str, int], list[float]]:
                rates: dict[tuple[str, int], list[float]] = {}
                for mode in ports:  # warm-up: connections, page cache, link signature cache
                    await measure(ports[mode], 1)
                for r in range(rounds):  # alternating, so both see the same machine load
                    for k in (1, clients):
                        order = list(ports) if r % 2 else list(reversed(ports))
                        for mode in order:
                            rates.setdefault((mode, k), []).append(await measure(ports[mode], k))
                return rates

            rates = trio.run(run)
        finally:
            for proc in servers.values():
                proc.kill()
                proc.wait()
        audited = Store.open(on_dir)
        entries = audited.raw_connection().execute("SELECT count(*) FROM audit").fetchone()[0]
        audited.close()
    for k in (1, clients):
        on, off = statistics.median(rates[("on", k)]), statistics.median(rates[("noaudit", k)])
        label = "1 client in a loop" if k == 1 else f"{k} concurrent clients"
        print(
            f"(d) audit on, {label + ':':26} {on:8,.0f} queries/s   off (before the log): "
            f"{off:8,.0f} queries/s   ratio on/off {on / off:.2f}x"
        )
    print(f"    audit entries written by the 'on' vault: {entries:,} (one per answered query)")


def bench_store(total: int = 100_000, batch: int = 1000) -> None:
    import sqlite3

    from psp import Filter, Query, Scope
    from psp._io_store import Store

    records = [
        {"name": f"p{i}", "age": i % 90, "city": ("Oslo", "Lima", "Rome")[i % 3], "note": "x" * 40}
        for i in range(total)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.create(Path(tmp) / "v", name="bench", vault_id=b"\x01" * 32, now=NOW)
        t = time.perf_counter()
        for i in range(0, total, batch):
            store.append_many("people", records[i : i + batch], now=NOW + i // 10_000)
        worm = total / (time.perf_counter() - t)
        plain = sqlite3.connect(Path(tmp) / "plain.sqlite", isolation_level=None)
        plain.execute("PRAGMA journal_mode=WAL")
        plain.execute("PRAGMA synchronous=FULL")
        plain.execute(
            "CREATE TABLE t (seq INTEGER PRIMARY KEY, collection TEXT, ts INTEGER, payload TEXT)"
        )
        t = time.perf_counter()
        for i in range(0, total, batch):
            plain.execute("BEGIN")
            plain.executemany(
                "INSERT INTO t (collection, ts, payload) VALUES ('people', ?, ?)",
                [(NOW, json.dumps(r)) for r in records[i : i + batch]],
            )
            plain.execute("COMMIT")
        bare = total / (time.perf_counter() - t)
        print(
            f"(c) WORM append, batches of {batch}:    {worm:9,.0f} entries/s   goal ≥ 20 000: {'met' if worm >= 20_000 else 'NOT met'}"
        )
        print(
            f"    plain SQLite insert (no chain/triggers): {bare:9,.0f} entries/s   ratio WORM/plain {worm / bare:.2f}x"
        )
        scope = Scope(vaults=(b"\x01" * 32,))
        cases = [
            (
                "count city=Oslo as_of=latest",
                Query(
                    collection="people",
                    op="count",
                    where=(Filter(field="city", op="eq", args=("Oslo",)),),
                ),
            ),
            (
                "read age=7 limit 100 as_of=50000",
                Query(
                    collection="people",
                    where=(Filter(field="age", op="eq", args=(7,)),),
                    limit=100,
                    as_of=50_000,
                ),
            ),
            (
                "sum age group by city",
                Query(
                    collection="people",
                    op="aggregate",
                    agg=__import__("psp").Aggregate(fn="sum", field="age", group="city"),
                ),
            ),
        ]
        for label, q in cases:
            times = []
            for _ in range(5):
                t = time.perf_counter()
                cur = store.execute(q, scope, limit=q.limit or 100)
                n = len(cur.fetch(100_000))
                times.append(time.perf_counter() - t)
            print(
                f"    query over {total:,} entries, {label}: {statistics.median(times) * 1e3:7.1f} ms ({n} rows)"
            )
        lookup = Query(
            collection="people",
            where=(Filter(field="name", op="eq", args=("p4242",)),),
            as_of=50_000,
        )
        for label in ("unindexed", "indexed"):
            if label == "indexed":
                t = time.perf_counter()
                store.create_index("name")
                print(
                    f"    ppn vault index name (100,000 entries): {(time.perf_counter() - t) * 1e3:.0f} ms"
                )
            times = []
            for _ in range(5):
                t = time.perf_counter()
                n = len(store.execute(lookup, scope, limit=100).fetch(100))
                times.append(time.perf_counter() - t)
            print(
                f"    query over {total:,} entries, name=p4242 as_of=50000 ({label}): {statistics.median(times) * 1e3:7.2f} ms ({n} rows)"
            )
        t = time.perf_counter()
        ok = store.verify().ok
        print(
            f"    verify whole chain: {(time.perf_counter() - t) * 1e3:.0f} ms ({'ok' if ok else 'BROKEN'})"
        )


def main() -> None:
    bench_authorization()
    bench_round_trip()
    bench_audit()
    bench_store()


if __name__ == "__main__":
    main()
