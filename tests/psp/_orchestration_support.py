"""Helpers for the aggregation tests: many small vaults in one trio process, caps, an aggregator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ppn import IdentityKey
from psp import Capability, Scope, mint
from psp._io_store import KEY_FILE, Store
from psp._io_vault import Vault, write_key_file
from psp._trio import serve_vault
from psp.aggregation import Fanout, VaultPool, handle_client
from psp.aggregation._plan import VaultAddress

NOW = 1_800_000_000
HOLDER = IdentityKey.from_seed(b"h" * 32)


def clock() -> int:
    return NOW


def make_vault(directory: Path, seed: int, records: Iterable[dict[str, Any]]) -> Vault:
    key = IdentityKey.from_seed(seed.to_bytes(2, "big") * 16)
    store = Store.create(directory, name=f"v{seed}", vault_id=key.public, now=NOW)
    write_key_file(directory / KEY_FILE, key)
    records = list(records)
    if records:
        store.append_many("people", records, now=NOW)
    store.close()
    return Vault.open(directory)


def cap_for(vault: Vault, *, rows: int = 10_000, **scope: Any) -> Capability:
    return mint(
        vault.key,
        audience=HOLDER.public,
        scope=Scope(vaults=(vault.vault_id,), rows=rows, **scope),
        not_before=0,
        expires=NOW + 3600,
        nonce=b"n" * 16,
    )


@dataclass
class Fleet:
    vaults: list[Vault]
    addresses: list[VaultAddress]
    caps: list[Capability]


async def serve_fleet(nursery: trio.Nursery, vaults: list[Vault]) -> Fleet:
    addresses = []
    for v in vaults:
        listeners = await nursery.start(partial(serve_vault, v, "127.0.0.1", 0, clock=clock))
        port = listeners[0].socket.getsockname()[1]
        addresses.append(VaultAddress(vault=v.vault_id, host="127.0.0.1", port=port))
    return Fleet(vaults=vaults, addresses=addresses, caps=[cap_for(v) for v in vaults])


async def start_aggregator(
    nursery: trio.Nursery,
    pool: VaultPool | None = None,
    *,
    fanout: Fanout = "epoll",
    row_budget: int | None = None,
) -> tuple[int, trio.CancelScope]:
    """Start an aggregator in its own cancel scope: cancelling it stops the server and every
    connection it had (a restart loses whatever it held)."""
    options: dict[str, Any] = {"fanout": fanout}
    if row_budget is not None:
        options["row_budget"] = row_budget
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            task_status.started(listeners[0].socket.getsockname()[1])
            own = pool or VaultPool()
            try:
                await trio.serve_listeners(partial(handle_client, pool=own, **options), listeners)
            finally:
                own.close()

    port = await nursery.start(run)
    return port, scope
