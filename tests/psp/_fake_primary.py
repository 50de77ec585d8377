"""A fake primary for test_replica_processes.py, run as its own process:
``python -m tests.psp._fake_primary STORE MODE``. It serves a copy of a real primary's store
through the real ``serve_vault`` (listener guard and all) and prints ``listening on HOST:PORT``,
but corrupts its replicate answers:

- ``tamper``: the second entry of an answer is another record (the seal is the real key's, over
  the real chain head), as a man in the middle would send it;
- ``impostor``: the answers are sealed by another key than the vault id its hello claims;
- ``flood``: an answer holds far more entries than the follower asked for.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import trio

from ppn import IdentityKey
from psp._chain import canonical_json
from psp._io_replica import ReplicationCursor
from psp._io_vault import Vault
from psp._messages import Request
from psp._replication import decode_entry, encode_entry
from psp._trio import serve_vault


def _tampered(fetch: Any) -> Any:
    done = [False]

    def fetch_tampered(n: int, max_bytes: int = 512 * 1024) -> list[bytes]:
        rows = list(fetch(n, max_bytes))
        if not done[0] and len(rows) > 1:
            e = decode_entry(rows[1])
            forged = canonical_json({"forged": True})
            rows[1] = encode_entry(e.seq, e.ts, e.supersedes, e.collection, forged)
            done[0] = True
        return rows

    return fetch_tampered


def main() -> None:
    store, mode = sys.argv[1], sys.argv[2]
    vault = Vault.open(store)
    real_begin = vault.begin

    def begin(request: Request, *, now: int) -> Any:
        started = real_begin(request, now=now)
        if isinstance(started, tuple) and isinstance(started[1], ReplicationCursor):
            cursor = started[1]
            if mode == "tamper":
                cursor.fetch = _tampered(cursor.fetch)  # type: ignore[method-assign]
            elif mode == "impostor":
                cursor._key = IdentityKey.generate()
            elif mode == "flood":
                # Unstarted, the adapter restarts it on a worker, with this limit.
                cursor._limit = 1_000_000
                cursor.release()
        return started

    vault.begin = begin  # type: ignore[method-assign]

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_vault, vault, "127.0.0.1", 0))
            print(f"listening on 127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)

    trio.run(run)


if __name__ == "__main__":
    main()
