"""Serve a PSP vault and query it from the same asyncio program (README "Embedding")."""

import asyncio
import os
import sys
import time

import psp
from ppn import IdentityKey


async def main(directory: str) -> None:
    vault = psp.Vault.create(directory)
    vault.store.append_many("people", [{"name": "ada", "age": 36}], now=int(time.time()))
    me, now = IdentityKey.generate(), int(time.time())
    scope = psp.Scope(vaults=(vault.vault_id,), collections=("people",))
    cap = psp.mint(vault.key, audience=me.public, scope=scope,
                   not_before=now, expires=now + 60, nonce=os.urandom(16))  # fmt: skip
    async with await psp.serve_vault_asyncio(vault, "127.0.0.1", 0) as server:
        async with await psp.AsyncioVaultClient.connect("127.0.0.1", server.port) as client:
            result = await client.query(me, cap, psp.Query(collection="people"))
        print(b"".join(result.rows).decode())


asyncio.run(main(sys.argv[1]))
