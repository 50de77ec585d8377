"""The vault's audit log (RFC-NOTES §9.4.5): entries for answered requests, counters for refusals,
the hash chain that ``ppn vault verify`` checks, and the ordering (an entry is on disk before the
answer's end leaves).

In process: a trio vault on loopback TCP and a real SQLite store. Through the CLI: a ``ppn vault
serve`` process queried by ``ppn query`` over TCP, then ``ppn vault audit`` and ``ppn vault
verify``, and a direct SQLite edit of an audit row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from ppn import IdentityKey
from psp import Capability, ErrorCode, Filter, Query, Scope, VaultError, mint
from psp._audit import (
    GENESIS,
    STATUS_CLOSED,
    STATUS_END,
    AuditDraft,
    AuditEntry,
    audit_hash,
    check_audit_chain,
)
from psp._io_audit import read_audit, read_denials, verify_audit
from psp._io_store import KEY_FILE, Store
from psp._io_vault import Vault, write_key_file
from psp._trio import VaultClient, serve_vault

from ._vault_cli_kit import ppn, served_vault

NOW = 1_800_000_000
HOLDER = IdentityKey.from_seed(b"h" * 32)


def clock() -> int:
    return NOW


def _vault(tmp_path: Path) -> Vault:
    key = IdentityKey.from_seed(b"k" * 32)
    store = Store.create(tmp_path, name="t", vault_id=key.public, now=NOW)
    write_key_file(tmp_path / KEY_FILE, key)
    store.append_many("people", [{"name": f"n{i:04}", "age": i % 50} for i in range(3000)], now=NOW)
    store.close()
    return Vault.open(tmp_path)


def _cap(vault: Vault, rows: int = 10_000) -> Capability:
    return mint(
        vault.key,
        audience=HOLDER.public,
        scope=Scope(vaults=(vault.vault_id,), rows=rows),
        not_before=0,
        expires=NOW + 3600,
        nonce=b"r" * 16,
    )


def _entries(vault: Vault) -> list[AuditEntry]:
    """What a fresh connection (another process would see the same) finds on disk."""
    return [e for e, _ in read_audit(vault.store.file)]


# --- the core --------------------------------------------------------------------------------


def _entry(seq: int, rows: int = 3) -> AuditEntry:
    draft = AuditDraft(holder=b"h" * 32, cap=b"c" * 32, query=b"q" * 32, qid=b"n" * 16, as_of=9)
    return AuditEntry.of(draft, seq=seq, ts=NOW + seq, rows=rows, status=STATUS_END)


def test_chain_check_names_the_first_entry_that_differs() -> None:
    prev, rows = GENESIS, []
    for seq in (1, 2, 3):
        prev = audit_hash(prev, _entry(seq))
        rows.append(_entry(seq).row(prev))
    assert check_audit_chain(rows).first_broken is None
    assert check_audit_chain(rows).head == prev and check_audit_chain(rows).entries == 3
    tampered = list(rows)
    tampered[1] = _entry(2, rows=4).row(rows[1][-1])  # rows changed, hash kept
    report = check_audit_chain(tampered)
    assert report.first_broken == 2 and report.entries == 1 and "hash" in report.reason
    assert check_audit_chain([rows[0], rows[2]]).first_broken == 2  # a hole
    short = list(rows[0])
    short[2] = b"h" * 31
    assert "holder" in check_audit_chain([tuple(short)]).reason
    # every field is bound: changing any one changes the hash
    base = _entry(1)
    for change in (
        {"ts": base.ts + 1},
        {"holder": b"H" * 32},
        {"cap": b"C" * 32},
        {"query": b"Q" * 32},
        {"qid": b"N" * 16},
        {"as_of": 10},
        {"rows": 4},
        {"status": STATUS_CLOSED},
    ):
        other = AuditEntry(**{**base.__dict__, **change})
        assert audit_hash(GENESIS, other) != audit_hash(GENESIS, base), change


# --- a served vault, in process --------------------------------------------------------------


async def test_entry_is_on_disk_before_the_end_arrives(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    cap = _cap(vault)
    query = Query(collection="people", where=(Filter(field="age", op="eq", args=(7,)),), limit=30)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_vault, vault, "127.0.0.1", 0, clock=clock))
        port = listeners[0].socket.getsockname()[1]
        async with await VaultClient.connect("127.0.0.1", port) as client:
            for n in range(1, 4):
                result = await client.query(HOLDER, cap, query, clock=clock)
                # The end was received: the entry must already be readable from disk.
                entries = _entries(vault)
                assert len(entries) == n
                last = entries[-1]
                assert last.rows == len(result.rows) == 30
                assert last.holder == HOLDER.public and last.cap == cap.leaf.id
                assert last.query == hashlib.sha256(query.encode()).digest()
                assert last.qid == result.header.query_id and last.as_of == result.header.as_of
                assert last.status == STATUS_END and last.ts == NOW
            with pytest.raises(VaultError) as denied:  # over the row limit: refused, counted
                await client.query(HOLDER, _cap(vault, rows=10), query, clock=clock)
            assert denied.value.code == ErrorCode.ROW_LIMIT
        nursery.cancel_scope.cancel()
    vault.close()
    assert len(_entries(vault)) == 3  # a refusal is no entry
    assert [(c, n) for c, n, _, _ in read_denials(vault.store.file)] == [(142, 1)]
    assert verify_audit(vault.store.file).first_broken is None


async def test_many_clients_share_commits_and_lose_no_entry(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    cap = _cap(vault)
    query = Query(collection="people", op="count")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_vault, vault, "127.0.0.1", 0, clock=clock))
        port = listeners[0].socket.getsockname()[1]

        async def client_loop() -> None:
            async with await VaultClient.connect("127.0.0.1", port) as client:
                for _ in range(20):
                    await client.query(HOLDER, cap, query, clock=clock)

        async with trio.open_nursery() as clients:
            for _ in range(8):
                clients.start_soon(client_loop)
        nursery.cancel_scope.cancel()
    entries = _entries(vault)
    assert [e.seq for e in entries] == list(range(1, 161))
    assert len({e.qid for e in entries}) == 160
    assert verify_audit(vault.store.file).entries == 160
    vault.close()


async def test_an_answer_whose_entry_cannot_be_written_does_not_end(tmp_path: Path) -> None:
    """A store that refuses the audit write (here: locked by another writer past the busy
    timeout) closes the connection instead of sending the end; the entry is kept as 'closed'
    and written with the next commit."""
    vault = _vault(tmp_path)
    vault.audit._db.execute("PRAGMA busy_timeout=50")
    cap = _cap(vault)
    query = Query(collection="people", op="count")
    blocker = sqlite3.connect(vault.store.file, isolation_level=None)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_vault, vault, "127.0.0.1", 0, clock=clock))
        port = listeners[0].socket.getsockname()[1]
        blocker.execute("BEGIN IMMEDIATE")
        async with await VaultClient.connect("127.0.0.1", port) as client:
            with pytest.raises((VaultError, trio.BrokenResourceError)):
                await client.query(HOLDER, cap, query, clock=clock)
        blocker.execute("ROLLBACK")
        assert _entries(vault) == []
        async with await VaultClient.connect("127.0.0.1", port) as client:
            result = await client.query(HOLDER, cap, query, clock=clock)
        assert result.end is not None
        nursery.cancel_scope.cancel()
    entries = _entries(vault)
    assert [e.status for e in entries] == [STATUS_CLOSED, STATUS_END]
    assert verify_audit(vault.store.file).entries == 2
    vault.close()


# --- through the CLI, a vault process over TCP -----------------------------------------------


def test_cli_audit_shows_queries_and_verify_catches_a_tampered_row(tmp_path: Path) -> None:
    holder = ppn("key", "new", "h.key", cwd=tmp_path).stdout.strip()
    with served_vault(tmp_path, records=500) as addr:
        ppn(
            "cap",
            "mint",
            "--store",
            "v",
            "--to",
            holder,
            "--rows",
            "100",
            "--out",
            "h.cap",
            cwd=tmp_path,
        )
        leaf = json.loads(ppn("cap", "inspect", "h.cap", "--json", cwd=tmp_path).stdout)
        base = ["query", "--key", "h.key", "--cap", "h.cap", "--vault", addr, "--json"]
        read = ppn(*base, "--collection", "people", "--where", "age>=85", cwd=tmp_path)
        counted = ppn(*base, "--collection", "people", "--count", cwd=tmp_path)
        refused = ppn(*base, "--collection", "people", "--limit", "5000", cwd=tmp_path, check=False)
        assert refused.returncode == 42 and "ROW_LIMIT" in refused.stderr
        # Denial counts reach the store within 2 s (RFC-NOTES §9.4.5): wait for the condition.
        deadline = time.monotonic() + 60
        while True:
            audit = json.loads(ppn("vault", "audit", "--store", "v", "--json", cwd=tmp_path).stdout)
            if audit["denials"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    rows_read = len(read.stdout.splitlines())
    assert rows_read > 0 and json.loads(counted.stdout) == {"count": 500}
    entries = audit["entries"]
    assert [e["rows"] for e in entries] == [rows_read, 1]
    assert {e["holder"] for e in entries} == {holder}
    assert {e["cap"] for e in entries} == {leaf["links"][-1]["link_id"]}
    assert [e["status"] for e in entries] == ["end", "end"]
    count_query = Query(collection="people", op="count").encode()
    assert entries[1]["query"] == hashlib.sha256(count_query).hexdigest()
    assert [(d["name"], d["count"]) for d in audit["denials"]] == [("ROW_LIMIT", 1)]
    since = ppn(
        "vault", "audit", "--store", "v", "--since", str(entries[1]["ts"] + 1), cwd=tmp_path
    )
    assert "0 audit entries since" in since.stdout
    text = ppn("vault", "audit", "--store", "v", cwd=tmp_path).stdout
    assert "2 audit entries" in text and "refused 1 time(s) with ROW_LIMIT (142)" in text

    ok = ppn("vault", "verify", "--store", "v", cwd=tmp_path)
    assert "ok: 2 audit entries" in ok.stdout

    # Whoever holds the file can drop the trigger; the chain shows the edit.
    db = sqlite3.connect(tmp_path / "v" / "vault.sqlite", isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="WORM"):
        db.execute("UPDATE audit SET rows = 0 WHERE seq = 1")
    db.execute("DROP TRIGGER audit_never_updated")
    db.execute("UPDATE audit SET rows = 0 WHERE seq = 1")
    db.close()
    broken = ppn("vault", "verify", "--store", "v", cwd=tmp_path, check=False)
    assert broken.returncode == 45, broken
    assert (
        "broken: audit entry 1: hash does not match its contents and predecessor "
        "(0 audit entries before it verify)" in broken.stdout
    )
    report = json.loads(
        ppn("vault", "verify", "--store", "v", "--json", cwd=tmp_path, check=False).stdout
    )
    assert report["ok"] is False and report["audit"]["first_broken"] == 1
    assert report["first_broken"] is None  # the data chain is intact
