"""A replica as real processes on loopback, driven through the ``ppn`` CLI (RFC-NOTES §9.5.1):
``ppn vault serve`` (the primary) and ``ppn vault follow --serve`` (the replica). Appends on the
primary while following; the primary killed with SIGKILL in the middle of a catch-up and
restarted; the replica converges with no gap and no duplicate (same chain head, same entries).
Then fake primaries (tests/psp/_fake_primary.py, own processes) send a tampered entry, an
impostor's seal and an oversized answer: each is refused (exit 45) and nothing is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PPN = (
    [sys.executable, "-m", "ppn"]
    if not (Path(sys.executable).parent / "ppn").exists()
    else [str(Path(sys.executable).parent / "ppn")]
)
ROOT = Path(__file__).resolve().parents[2]
BACKLOG = 60_000  # entries the replica catches up on while the primary is killed
DEADLINE = 180.0  # generous: CI runs on a loaded box


def _ppn(d: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PPN, *args], cwd=d, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def _wait_for(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _entries(store: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{store / 'vault.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT seq, collection, ts, supersedes, payload, hash FROM entries ORDER BY seq"
        ).fetchall()
    finally:
        db.close()


def _head(store: Path) -> int:
    if not (store / "vault.sqlite").exists():
        return 0
    db = sqlite3.connect(f"file:{store / 'vault.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # the replica's schema is being created
    finally:
        db.close()


class _Proc:
    """A ``ppn`` process whose stdout and stderr lines are collected by threads."""

    def __init__(self, d: Path, *args: str, argv: list[str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            argv or [*PPN, *args],
            cwd=d,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def address(self, pattern: str = r"listening on (127\.0\.0\.1:\d+)") -> str:
        found: list[str] = []

        def seen() -> bool:
            for line in self.out + self.err:
                if m := re.search(pattern, line):
                    found.append(m.group(1))
                    return True
            assert self.proc.poll() is None, (self.out, self.err)
            return False

        _wait_for(f"{pattern} from {self.proc.args}", seen, 60)
        return found[0]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=60)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, list[_Proc]]]:
    procs: list[_Proc] = []
    _ppn(tmp_path, "vault", "init", "--store", "primary")
    lines = "".join(json.dumps({"i": i, "name": f"p{i}"}) + "\n" for i in range(BACKLOG))
    (tmp_path / "backlog.jsonl").write_text(lines)
    _ppn(
        tmp_path, "vault", "import", "--store", "primary", "--collection", "people", "backlog.jsonl"
    )
    holder = _ppn(tmp_path, "key", "new", "follower.key").stdout.strip()
    _ppn(
        tmp_path,
        *("cap", "mint", "--store", "primary", "--to", holder),
        *("--ops", "count,read,replicate", "--out", "follower.cap"),
    )
    try:
        yield tmp_path, procs
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


def test_replica_converges_after_the_primary_is_killed_mid_stream(
    site: tuple[Path, list[_Proc]],
) -> None:
    d, procs = site
    primary = _Proc(d, "vault", "serve", "--store", "primary", "--listen", "127.0.0.1:0")
    procs.append(primary)
    address = primary.address()
    follower = _Proc(
        d,
        *("vault", "follow", "--from", address, "--cap", "follower.cap", "--key", "follower.key"),
        *("--store", "replica", "--serve", "127.0.0.1:0", "--poll", "0.2", "--json"),
    )
    procs.append(follower)
    replica_address = follower.address(r"replica of \S+ listening on (127\.0\.0\.1:\d+)")

    # Mid-stream: the replica has some answers of the backlog, not all of it.
    _wait_for("the first answers", lambda: _head(d / "replica") >= 4096)
    primary.stop(signal.SIGKILL)
    at_kill = _head(d / "replica")
    assert 0 < at_kill < BACKLOG, "the catch-up was not under way when the primary died"

    # The primary's store moves on while it is down, and once it is back.
    _ppn(d, "vault", "append", "--store", "primary", "--collection", "people", '{"late": 1}')
    _wait_for("the follower to notice", lambda: any('"disconnected"' in x for x in follower.out))
    port = address.rsplit(":", 1)[1]
    primary = _Proc(d, "vault", "serve", "--store", "primary", "--listen", f"127.0.0.1:{port}")
    procs.append(primary)
    primary.address()
    for i in range(3):  # appends while following
        _ppn(d, "vault", "append", "--store", "primary", "--collection", "people", f'{{"n": {i}}}')
        time.sleep(0.3)
    _ppn(
        d,
        "vault",
        "append",
        "--store",
        "primary",
        "--collection",
        "people",
        '{"n": 0, "fixed": true}',
        "--supersedes",
        str(BACKLOG + 2),
    )
    total = BACKLOG + 5
    _wait_for("the replica to converge", lambda: _head(d / "replica") == total)

    # No gap, no duplicate: the same entries, hashes and chain head on both sides.
    assert _entries(d / "replica") == _entries(d / "primary")
    heads = [
        json.loads(_ppn(d, "vault", "verify", "--store", s, "--json").stdout)
        for s in ("primary", "replica")
    ]
    # (Each side's audit log is its own: the primary audited the follower's requests.)
    chains = [(h["ok"], h["entries"], h["head"]) for h in heads]
    assert chains[0] == chains[1] == (True, total, chains[0][2])
    assert heads[0]["audit"]["entries"] > 0 and heads[1]["audit"]["ok"]
    assert any(json.loads(x).get("event") == "caught_up" for x in follower.out)

    # It serves reads, marked as a replica's, under the primary's capability...
    query = _ppn(
        d,
        *("query", "--key", "follower.key", "--cap", "follower.cap", "--vault", replica_address),
        *("--collection", "people", "--count", "--json"),
    )
    assert json.loads(query.stdout) == {"count": total - 1}  # one entry superseded
    assert f"from a replica at entry {total}" in query.stderr
    # A revocation at the primary reaches the replica: the revoked capability is refused there.
    reader = _ppn(d, "key", "new", "reader.key").stdout.strip()
    cap_text = _ppn(
        d, *("cap", "mint", "--store", "primary", "--to", reader, "--ops", "count")
    ).stdout.strip()
    read = ("query", "--key", "reader.key", "--cap", cap_text, "--vault", replica_address)
    _ppn(d, *read, "--collection", "people", "--count")
    _ppn(d, "cap", "revoke", "--store", "primary", cap_text)

    def refused_at_replica() -> bool:
        result = _ppn(d, *read, "--collection", "people", "--count", check=False)
        return result.returncode == 41 and "REVOKED" in result.stderr

    _wait_for("the revocation at the replica", refused_at_replica)
    # ... and refuses appends with its own status.
    refused = _ppn(
        d, "vault", "append", "--store", "replica", "--collection", "people", "{}", check=False
    )
    assert refused.returncode == 55 and "replica" in refused.stderr
    assert _head(d / "replica") == total

    # Ctrl-C: 130, one line, no traceback.
    assert follower.stop(signal.SIGINT) == 130
    assert "Traceback" not in "".join(follower.err)


@pytest.mark.parametrize("mode", ["tamper", "impostor", "flood"])
def test_a_fake_primary_writes_nothing(site: tuple[Path, list[_Proc]], mode: str) -> None:
    d, procs = site
    # A replica synced with the real primary, then the primary moves on while stopped.
    primary = _Proc(d, "vault", "serve", "--store", "primary", "--listen", "127.0.0.1:0")
    procs.append(primary)
    follow = (
        *("vault", "follow", "--cap", "follower.cap", "--key", "follower.key"),
        *("--store", "replica", "--once", "--json"),
    )
    _ppn(d, *follow, "--from", primary.address())
    primary.stop()
    synced = _entries(d / "replica")
    assert len(synced) == BACKLOG
    extra = "".join(json.dumps({"more": i}) + "\n" for i in range(12_000))
    (d / "more.jsonl").write_text(extra)
    _ppn(d, "vault", "import", "--store", "primary", "--collection", "people", "more.jsonl")

    # The fake serves a copy of the primary's store (its key included, for tamper and flood).
    shutil.copytree(d / "primary", d / "fake")
    fake = _Proc(d, argv=[sys.executable, "-m", "tests.psp._fake_primary", "fake", mode])
    procs.append(fake)
    result = _ppn(d, *follow, "--from", fake.address(), check=False)
    assert result.returncode == 45, (result.stdout, result.stderr)
    assert "nothing of it was written" in result.stderr
    why = "exceeds what was asked" if mode == "flood" else "seal over the answer does not verify"
    assert why in result.stderr
    assert "Traceback" not in result.stderr
    assert _entries(d / "replica") == synced
