"""The asyncio PSP client (psp.AsyncioVaultClient) against a real vault (``ppn vault serve`` on
loopback): many row batches with a small credit window, a count, the vault's refusal with its
code, a capability for another vault refused before anything is sent, an unreachable vault."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import psp
from ppn import IdentityKey, decode_key
from psp import Capability, ErrorCode, Query, VaultError

PPN = [sys.executable, "-m", "ppn"]
RECORDS = 700  # more than two 256-row batches


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    tmp = tmp_path_factory.mktemp("aio-vault")
    store = tmp / "v"
    subprocess.run([*PPN, "vault", "init", "--store", str(store)], check=True, capture_output=True)
    data = tmp / "r.jsonl"
    data.write_text("".join(json.dumps({"n": i, "kind": i % 3}) + "\n" for i in range(RECORDS)))
    subprocess.run(
        [*PPN, "vault", "import", "--store", str(store), "--collection", "c", str(data)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [*PPN, "vault", "serve", "--store", str(store), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().rsplit(" ", 1)[-1].strip().rsplit(":", 1)
        yield host, int(port), store
    finally:
        proc.kill()
        proc.wait()


def _holder(tmp: Path, store: Path, *extra: str) -> tuple[IdentityKey, Capability]:
    key_file = tmp / "h.key"
    out = subprocess.run(
        [*PPN, "key", "new", str(key_file), "--json"], check=True, capture_output=True, text=True
    )
    cap_file = tmp / "h.cap"
    subprocess.run(
        [*PPN, "cap", "mint", "--store", str(store), "--to", json.loads(out.stdout)["public"],
         "--out", str(cap_file), *extra],
        check=True, capture_output=True,
    )  # fmt: skip
    key = IdentityKey.from_seed(decode_key(key_file.read_text().strip()))
    return key, Capability.from_text(cap_file.read_text())


def test_rows_in_batches_count_and_refusals(vault: tuple[str, int, Path], tmp_path: Path) -> None:
    host, port, store = vault
    key, cap = _holder(tmp_path, store, "--collections", "c", "--ops", "read,count")

    async def scenario() -> None:
        client = await psp.AsyncioVaultClient.connect(host, port, window=2)
        async with client:
            hello = await client.hello()
            assert hello.vault in cap.scope.vaults
            result = await client.query(key, cap, Query(collection="c", order=("n", False)))
            assert result.end is not None and result.end.count == RECORDS
            assert [json.loads(r)["n"] for r in result.rows] == list(range(RECORDS))
            # Streaming view of one request: header, several batches, end.
            q = Query(collection="c", op="read").encode()
            envelope = psp.invoke(
                cap, key, vaults=[hello.vault], query_bytes=q, now=int(time.time()), nonce=bytes(16)
            )
            kinds = [type(e).__name__ async for e in client.request(envelope.raw, q)]
            batches = kinds.count("RowBatch")
            assert kinds[0] == "Header" and kinds[-1] == "End" and batches >= 3
            counted = await client.query(key, cap, Query(collection="c", op="count"))
            assert [json.loads(r) for r in counted.rows] == [{"count": RECORDS}]
            with pytest.raises(VaultError) as refused:
                await client.query(key, cap, Query(collection="other", op="count"))
            assert refused.value.code is ErrorCode.NOT_PERMITTED
        # The capability names another vault: refused locally, before anything is signed.
        other = tmp_path / "other"
        subprocess.run(
            [*PPN, "vault", "init", "--store", str(other)], check=True, capture_output=True
        )
        (tmp_path / "h.key").unlink()
        key2, cap2 = _holder(tmp_path, other)
        with pytest.raises(VaultError) as wrong:
            await psp.query_vault_asyncio(host, port, key2, cap2, Query(collection="c", op="count"))
        assert wrong.value.code is ErrorCode.WRONG_VAULT
        with pytest.raises(VaultError) as down:
            await psp.query_vault_asyncio("127.0.0.1", 1, key, cap, Query(collection="c"))
        assert down.value.code is ErrorCode.UNAVAILABLE

    asyncio.run(scenario())
