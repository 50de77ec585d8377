"""``ppn vault follow`` as a role like the others (issues 17 and 19; RFC-NOTES §1.5, §3.1):
JSON log lines on stderr, a Prometheus endpoint scraped over TCP from a real follower while its
real primary (``ppn vault serve``) is killed and restarted, and a busy address reported as one
sentence with exit 43, not an exception-group traceback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..test_observability import scrape, value
from .test_replica_processes import PPN, _head, _ppn, _Proc, _wait_for

ENTRIES = 300


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, list[_Proc]]]:
    procs: list[_Proc] = []
    _ppn(tmp_path, "vault", "init", "--store", "primary")
    lines = "".join(json.dumps({"i": i}) + "\n" for i in range(ENTRIES))
    (tmp_path / "rows.jsonl").write_text(lines)
    _ppn(tmp_path, "vault", "import", "--store", "primary", "--collection", "people", "rows.jsonl")
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


def _follow(*extra: str) -> tuple[str, ...]:
    return (
        *("vault", "follow", "--cap", "follower.cap", "--key", "follower.key"),
        *("--store", "replica", "--poll", "0.2", *extra),
    )


def _records(lines: list[str]) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(r, dict) and "level" in r and "event" in r for r in records)
    return records


def test_follower_metrics_and_json_logs(site: tuple[Path, list[_Proc]]) -> None:
    d, procs = site
    primary = _Proc(d, "vault", "serve", "--store", "primary", "--listen", "127.0.0.1:0")
    procs.append(primary)
    address = primary.address()
    follower = _Proc(
        d,
        "--log-format",
        "json",
        *_follow("--from", address, "--serve", "127.0.0.1:0", "--metrics", "127.0.0.1:0"),
    )
    procs.append(follower)
    follower.address(r'"event": "listening".*"address": "(127\.0\.0\.1:\d+)"')
    _wait_for("the metrics endpoint", lambda: any('"event": "metrics"' in x for x in follower.err))
    metrics = next(r["address"] for r in _records(follower.err) if r["event"] == "metrics")

    def caught_up(total: int) -> bool:
        s = scrape(metrics)
        return value(s, "psp_replica_head") == total and value(s, "psp_replica_lag_entries") == 0

    _wait_for("the replica to catch up", lambda: caught_up(ENTRIES))
    s = scrape(metrics)
    assert value(s, "psp_replica_entries_replicated_total") == ENTRIES
    assert value(s, "psp_replica_primary_head") == ENTRIES
    assert value(s, "psp_replica_connected") == 1
    assert value(s, "psp_replica_reconnects_total") == 0
    assert value(s, "psp_replica_verify_failures_total") == 0
    assert 0 <= value(s, "psp_replica_lag_seconds") < 60
    assert ("psp_replica_verify_failures_total", frozenset()) in s
    # With --serve, the replica's listener and queries are observed like a vault's.
    assert value(s, "ppn_listener_max_connections", listener="vault") > 0
    assert ("psp_vault_queries_total", frozenset({("outcome", "ok")})) in s

    # The primary dies: the follower counts the lost connection, stays up, and its lag in
    # seconds grows; restarted with one more entry, the replica takes it.
    primary.stop(signal.SIGKILL)
    _wait_for("a reconnect", lambda: value(scrape(metrics), "psp_replica_reconnects_total") >= 1)
    s = scrape(metrics)
    assert value(s, "psp_replica_connected") == 0
    _ppn(d, "vault", "append", "--store", "primary", "--collection", "people", '{"late": 1}')
    port = address.rsplit(":", 1)[1]
    primary = _Proc(d, "vault", "serve", "--store", "primary", "--listen", f"127.0.0.1:{port}")
    procs.append(primary)
    primary.address()
    _wait_for("the replica to take the new entry", lambda: caught_up(ENTRIES + 1))
    s = scrape(metrics)
    assert value(s, "psp_replica_entries_replicated_total") == ENTRIES + 1
    assert value(s, "psp_replica_connected") == 1
    assert _head(d / "replica") == ENTRIES + 1

    # SIGTERM (systemd's stop) is a clean stop: exit 0 and one log line.
    assert follower.stop(signal.SIGTERM) == 0
    _wait_for("the last log line", lambda: any('"event": "stopping"' in x for x in follower.err))
    # Every stderr line is a JSON log record; the follower's own events are among them.
    events = [r["event"] for r in _records(follower.err)]
    assert {"following", "listening", "metrics", "disconnected"} <= set(events), events
    assert events.count("stopping") == 1


def test_a_busy_address_is_one_sentence(site: tuple[Path, list[_Proc]]) -> None:
    d, procs = site
    primary = _Proc(d, "vault", "serve", "--store", "primary", "--listen", "127.0.0.1:0")
    procs.append(primary)
    address = primary.address()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for flag in ("--serve", "--metrics"):
            result = subprocess.run(
                [*PPN, *_follow("--from", address, flag, busy)],
                cwd=d,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 43, (flag, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith("ppn: cannot serve") and "in use" in last, result.stderr
