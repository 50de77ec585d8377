"""The vault under asyncio vs under trio, side by side (issue 20): the same sans-IO cores and
the same store, each loop running both the server and its clients in one process.

- ``round trip``: one client, one small query after another (one row each);
- ``fan-out``: 64 clients at once, each running 8 queries of 100 rows.

Rounds alternate the loops; each figure is the median over rounds, and the ratio is
asyncio / trio (below 1: asyncio is faster). Run: ``.venv/bin/python -m benchmarks embedding``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

import psp
from ppn import IdentityKey

ROUNDS = 5
ROUND_TRIPS = 300
CLIENTS = 64
PER_CLIENT = 8
ROWS = 100
NOW = int(time.time())
HOLDER = IdentityKey.from_seed(b"h" * 32)


def _vault(directory: str) -> tuple[psp.Vault, psp.Capability]:
    vault = psp.Vault.create(directory)
    vault.store.append_many("r", [{"n": i, "k": i % 7} for i in range(2000)], now=NOW)
    scope = psp.Scope(vaults=(vault.vault_id,), collections=("r",), rows=1 << 20)
    cap = psp.mint(vault.key, audience=HOLDER.public, scope=scope,
                   not_before=0, expires=NOW + 3600, nonce=b"n" * 16)  # fmt: skip
    return vault, cap


async def _clients(
    connect: Callable[..., Awaitable[Any]],
    gather: Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[None]],
    port: int,
    cap: psp.Capability,
) -> tuple[float, float]:
    one = psp.Query(collection="r", limit=1)
    many = psp.Query(collection="r", limit=ROWS)
    async with await connect("127.0.0.1", port) as client:
        await client.query(HOLDER, cap, one)  # warm: the chain is verified once
        t0 = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            await client.query(HOLDER, cap, one)
        rtt = (time.perf_counter() - t0) / ROUND_TRIPS

    async def worker() -> None:
        async with await connect("127.0.0.1", port) as c:
            for _ in range(PER_CLIENT):
                r = await c.query(HOLDER, cap, many)
                assert len(r.rows) == ROWS

    t0 = time.perf_counter()
    await gather([worker for _ in range(CLIENTS)])
    return rtt, time.perf_counter() - t0


async def _trio_gather(fns: list[Callable[[], Awaitable[None]]]) -> None:
    async with trio.open_nursery() as nursery:
        for fn in fns:
            nursery.start_soon(fn)


async def _asyncio_gather(fns: list[Callable[[], Awaitable[None]]]) -> None:
    await asyncio.gather(*(fn() for fn in fns))


def trial_trio(vault: psp.Vault, cap: psp.Capability) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(psp.serve_vault, vault, "127.0.0.1", 0))
            port = listeners[0].socket.getsockname()[1]
            out = await _clients(psp.VaultClient.connect, _trio_gather, port, cap)
            nursery.cancel_scope.cancel()
        return out

    return trio.run(main)


def trial_asyncio(vault: psp.Vault, cap: psp.Capability) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        async with await psp.serve_vault_asyncio(vault, "127.0.0.1", 0) as server:
            return await _clients(psp.AsyncioVaultClient.connect, _asyncio_gather, server.port, cap)

    return asyncio.run(main())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vault, cap = _vault(tmp + "/v")
        results: dict[str, list[tuple[float, float]]] = {"trio": [], "asyncio": []}
        for r in range(ROUNDS):
            order = [("trio", trial_trio), ("asyncio", trial_asyncio)]
            for name, trial in order if r % 2 == 0 else order[::-1]:
                results[name].append(trial(vault, cap))
        vault.close()
    med = {
        name: (statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs))
        for name, runs in results.items()
    }
    (t_rtt, t_fan), (a_rtt, a_fan) = med["trio"], med["asyncio"]
    print(f"vault round trip (1 row)        trio {t_rtt * 1e6:8.0f} µs   asyncio "
          f"{a_rtt * 1e6:8.0f} µs   asyncio/trio {a_rtt / t_rtt:.2f}")  # fmt: skip
    print(f"fan-out {CLIENTS}x{PER_CLIENT} x {ROWS} rows    trio {t_fan * 1e3:8.0f} ms   "
          f"asyncio {a_fan * 1e3:8.0f} ms   asyncio/trio {a_fan / t_fan:.2f}")  # fmt: skip
    print(f"(median of {ROUNDS} rounds, loops alternated; server and clients in one process)")


if __name__ == "__main__":
    main()
