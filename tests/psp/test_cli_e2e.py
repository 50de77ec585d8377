"""End to end through the ``ppn`` CLI: real processes, a real vault server on loopback TCP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PPN = (
    [sys.executable, "-m", "ppn"]
    if not (Path(sys.executable).parent / "ppn").exists()
    else [str(Path(sys.executable).parent / "ppn")]
)


def ppn(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PPN, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"ppn {' '.join(args)} -> {result.returncode}: {result.stderr}")
    return result


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    ppn("vault", "init", "--store", "v", "--name", "acme", cwd=tmp_path)
    (tmp_path / "people.jsonl").write_text(
        "".join(
            json.dumps({"name": f"p{i}", "age": i % 90, "city": ["Oslo", "Lima", "Rome"][i % 3]})
            + "\n"
            for i in range(2000)
        )
    )
    ppn("vault", "import", "--store", "v", "--collection", "people", "people.jsonl", cwd=tmp_path)
    proc = subprocess.Popen(
        [*PPN, "vault", "serve", "--store", "v", "--listen", "127.0.0.1:0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        assert match, line
        yield tmp_path, match.group(1)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_create_fill_serve_and_query_with_a_delegated_capability(served: tuple[Path, str]) -> None:
    d, addr = served
    alice = ppn("key", "new", "alice.key", cwd=d).stdout.strip()
    bob = ppn("key", "new", "bob.key", cwd=d).stdout.strip()
    ppn(
        "cap",
        "mint",
        "--store",
        "v",
        "--to",
        alice,
        "--collections",
        "people",
        "--rows",
        "1000",
        "--out",
        "alice.cap",
        cwd=d,
    )
    ppn(
        "cap",
        "delegate",
        "alice.cap",
        "--key",
        "alice.key",
        "--to",
        bob,
        "--fields",
        "age,city,name",
        "--ops",
        "aggregate,count,read",
        "--rows",
        "50",
        "--ttl",
        "1h",
        "--out",
        "bob.cap",
        cwd=d,
    )
    inspected = json.loads(ppn("cap", "inspect", "bob.cap", "--json", cwd=d).stdout)
    assert inspected["holder"] == bob and len(inspected["links"]) == 2

    base = [
        "query",
        "--key",
        "bob.key",
        "--cap",
        "bob.cap",
        "--vault",
        addr,
        "--collection",
        "people",
    ]
    rows = [
        json.loads(line)
        for line in ppn(
            *base,
            "--where",
            "age>=88",
            "--where",
            "city in Lima,Rome",
            "--select",
            "name,age",
            "--limit",
            "5",
            "--json",
            cwd=d,
        ).stdout.splitlines()
    ]
    assert len(rows) == 5 and all(
        r["age"] >= 88 and set(r) == {"_seq", "_ts", "name", "age"} for r in rows
    )
    table = ppn(*base, "--group-by", "city", "--sum", "age", cwd=d)
    assert re.search(r"^Oslo\s+\d+$", table.stdout, re.M) and "3 row(s)" in table.stderr
    assert json.loads(ppn(*base, "--count", "--json", cwd=d).stdout) == {"count": 2000}

    denied = ppn(*base, "--limit", "51", cwd=d, check=False)
    assert (
        denied.returncode == 42
        and "ROW_LIMIT (142)" in denied.stderr
        and "Traceback" not in denied.stderr
    )
    wrong_key = ppn(
        "query",
        "--key",
        "alice.key",
        "--cap",
        "bob.cap",
        "--vault",
        addr,
        "--collection",
        "people",
        "--count",
        cwd=d,
        check=False,
    )
    assert wrong_key.returncode == 41 and "HOLDER_MISMATCH" in wrong_key.stderr
    widen = ppn(
        "cap",
        "delegate",
        "bob.cap",
        "--key",
        "bob.key",
        "--to",
        alice,
        "--rows",
        "100",
        cwd=d,
        check=False,
    )
    assert widen.returncode == 41 and "SCOPE_WIDENED" in widen.stderr

    # resume through the CLI: the summary line names the cursor
    first = ppn(*base, "--order", "name", "--select", "name", "--limit", "50", "--json", cwd=d)
    cursor = re.search(r"--as-of (\d+) --offset (\d+)", first.stderr)
    assert cursor, first.stderr
    ppn(
        "vault",
        "append",
        "--store",
        "v",
        "--collection",
        "people",
        '{"name": "aaa", "age": 1}',
        cwd=d,
    )
    ppn("vault", "index", "--store", "v", "name", cwd=d)  # while the vault is being served
    second = ppn(
        *base,
        "--order",
        "name",
        "--select",
        "name",
        "--limit",
        "50",
        "--json",
        "--as-of",
        cursor[1],
        "--offset",
        cursor[2],
        cwd=d,
    )
    names = [json.loads(x)["name"] for x in first.stdout.splitlines() + second.stdout.splitlines()]
    assert names == sorted(names) and len(set(names)) == 100 and "aaa" not in names
    assert json.loads(ppn(*base, "--count", "--json", cwd=d).stdout) == {"count": 2001}

    ppn("cap", "revoke", "--store", "v", "bob.cap", cwd=d)
    revoked = ppn(*base, "--count", cwd=d, check=False)
    assert revoked.returncode == 41 and "REVOKED (116)" in revoked.stderr


def test_append_supersede_verify_and_tamper(tmp_path: Path) -> None:
    vid = ppn("vault", "init", "--store", "v", cwd=tmp_path).stdout.strip()
    assert len(vid) == 44
    assert (
        ppn(
            "vault",
            "append",
            "--store",
            "v",
            "--collection",
            "people",
            '{"name": "Ann", "age": 40}',
            cwd=tmp_path,
        ).stdout.strip()
        == "1"
    )
    assert (
        ppn(
            "vault",
            "append",
            "--store",
            "v",
            "--collection",
            "people",
            "--supersedes",
            "1",
            '{"name": "Ann", "age": 41}',
            cwd=tmp_path,
        ).stdout.strip()
        == "2"
    )
    bad = ppn(
        "vault",
        "append",
        "--store",
        "v",
        "--collection",
        "people",
        "[1]",
        cwd=tmp_path,
        check=False,
    )
    assert bad.returncode == 48
    assert "ok: 2 entries" in ppn("vault", "verify", "--store", "v", cwd=tmp_path).stdout
    import sqlite3

    db = sqlite3.connect(tmp_path / "v" / "vault.sqlite")
    db.execute("DROP TRIGGER entries_never_updated")
    db.execute("""UPDATE entries SET payload = '{"age":99,"name":"Ann"}' WHERE seq = 2""")
    db.commit()
    db.close()
    broken = ppn("vault", "verify", "--store", "v", "--json", cwd=tmp_path, check=False)
    assert broken.returncode == 45 and json.loads(broken.stdout)["first_broken"] == 2
    missing = ppn("vault", "verify", "--store", "nowhere", cwd=tmp_path, check=False)
    assert missing.returncode == 46 and "Traceback" not in missing.stderr


def test_unreachable_vault_exits_43(tmp_path: Path) -> None:
    ppn("vault", "init", "--store", "v", cwd=tmp_path)
    pub = ppn("key", "new", "k.key", cwd=tmp_path).stdout.strip()
    ppn("cap", "mint", "--store", "v", "--to", pub, "--out", "k.cap", cwd=tmp_path)
    started = time.monotonic()
    r = ppn(
        "query",
        "--key",
        "k.key",
        "--cap",
        "k.cap",
        "--vault",
        "127.0.0.1:1",
        "--collection",
        "c",
        "--count",
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 43 and "UNAVAILABLE (200)" in r.stderr
    assert time.monotonic() - started < 30
