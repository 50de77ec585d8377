"""Serve a PSP vault and query it from the same trio program (README "Embedding")."""

import os
import sys
import time

import trio

import psp
from ppn import IdentityKey


async def main(directory: str) -> None:
    vault = psp.Vault.create(directory)
    vault.store.append_many("people", [{"name": "ada", "age": 36}], now=int(time.time()))
    me, now = IdentityKey.generate(), int(time.time())
    scope = psp.Scope(vaults=(vault.vault_id,), collections=("people",))
    cap = psp.mint(vault.key, audience=me.public, scope=scope,
                   not_before=now, expires=now + 60, nonce=os.urandom(16))  # fmt: skip
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(psp.serve_vault, vault, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        async with await psp.VaultClient.connect("127.0.0.1", port) as client:
            result = await client.query(me, cap, psp.Query(collection="people"))
        print(b"".join(result.rows).decode())
        nursery.cancel_scope.cancel()


trio.run(main, sys.argv[1])
