"""Real processes for the aggregator's hostile tests (issue 14): a ``ppn vault serve`` and a
``ppn orchestration serve`` on loopback, a legitimate aggregated query, and hostile clients that
send half a request. Also run as a script to measure an aggregator before and after a change:
``python -m tests.psp._aggregator_attack [SERVE FLAGS…]`` (prints RSS and latencies)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from ppn.wire import encode_frame
from psp import Query
from psp.aggregation import OrchestrationClient
from psp.aggregation._connection import (
    AggregateRequest,
    OrchestrationHello,
    Target,
    encode_orchestration,
)
from psp.aggregation._merge import Mode
from psp.aggregation._plan import VaultAddress

from ._orchestration_support import HOLDER, cap_for, make_vault

PPN = [sys.executable, "-m", "ppn"]
COUNT = Query(collection="people", op="count")
RECORDS = 50


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match.group(1))


@contextlib.contextmanager
def serve(argv: list[str], cwd: Path, name: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start ``ppn ARGV`` (it prints 'listening on HOST:PORT' first); stop it by its pid."""
    err = open(cwd / f"{name}.stderr", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([*PPN, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, (cwd / f"{name}.stderr").read_text())
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        err.close()


@dataclass
class Lab:
    tmp: Path
    vault: VaultAddress
    cap_text: str
    aggregator: subprocess.Popen[str]
    port: int

    @property
    def vault_line(self) -> str:
        return f"{base64.b64encode(self.vault.vault).decode()}@127.0.0.1:{self.vault.port}"

    def query(self, *, deadline: float = 30.0) -> float:
        """One legitimate count through the aggregator; its latency in seconds."""
        from psp import Capability

        cap = Capability.from_text(self.cap_text)

        async def run() -> float:
            t = time.perf_counter()
            with trio.fail_after(deadline):
                async with await OrchestrationClient.connect("127.0.0.1", self.port) as client:
                    result = await client.query(HOLDER, [cap], [self.vault], COUNT)
            assert result.complete and result.rows, result
            return time.perf_counter() - t

        return trio.run(run)

    def latency_ms(self, n: int = 15) -> float:
        return statistics.median(self.query() for _ in range(n)) * 1000


@contextlib.contextmanager
def lab(tmp: Path, *serve_flags: str, allow: bool = True) -> Iterator[Lab]:
    """A vault process and an aggregator process. ``allow``: pass the vault as ``--vaults``."""
    vault = make_vault(tmp / "v", 7, [{"name": f"p{i}"} for i in range(RECORDS)])
    cap_text = cap_for(vault).to_text()
    vault_id = vault.vault_id
    vault.close()
    with serve(["vault", "serve", "--store", "v", "--listen", "127.0.0.1:0"], tmp, "vault") as (
        _,
        vport,
    ):
        address = VaultAddress(vault=vault_id, host="127.0.0.1", port=vport)
        line = f"{base64.b64encode(vault_id).decode()}@127.0.0.1:{vport}"
        flags = list(serve_flags)
        if allow:
            (tmp / "allowed.txt").write_text(line + "\n")
            flags += ["--vaults", "allowed.txt"]
        argv = ["orchestration", "serve", "--listen", "127.0.0.1:0", *flags]
        with serve(argv, tmp, "aggregator") as (agg, port):
            yield Lab(tmp=tmp, vault=address, cap_text=cap_text, aggregator=agg, port=port)


def half_request(address: str, n: int = 4096, *, request_id: int = 1) -> Iterator[bytes]:
    """Hello, ``agg n``, then ``n - 1`` targets with the largest envelope and query the wire
    allows (the last target never comes)."""
    yield encode_frame(encode_orchestration(OrchestrationHello()), max_size=1 << 20)
    yield encode_frame(
        encode_orchestration(
            AggregateRequest(
                request_id=request_id,
                targets=n,
                mode=Mode.BEST_EFFORT,
                deadline_ms=300_000,
                vault_deadline_ms=300_000,
            )
        ),
        max_size=1 << 20,
    )
    envelope, query = secrets.token_bytes(8192), secrets.token_bytes(4096)
    for i in range(n - 1):
        target = Target(
            request_id=request_id,
            index=i,
            vault=i.to_bytes(32, "big"),
            address=address,
            envelope=envelope,
            query=query,
        )
        yield encode_frame(encode_orchestration(target), max_size=1 << 20)


def send_half_requests(port: int, address: str, count: int = 10) -> list[socket.socket]:
    """``count`` connections, each sending a half request; returns them still open (those the
    aggregator has not closed yet). Stops writing to one as soon as the aggregator stops it."""
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        chunk = bytearray()
        try:
            for frame in half_request(address):
                chunk += frame
                if len(chunk) >= 1 << 20:
                    s.sendall(chunk)
                    chunk.clear()
            s.sendall(chunk)
        except OSError:
            pass  # closed by the aggregator: what a bounded one does
        held.append(s)
    return held


def main(flags: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp, lab(Path(tmp), *flags, allow=False) as lab_:
        pid = lab_.aggregator.pid
        idle_rss = rss_kib(pid)
        unloaded = lab_.latency_ms()
        t = time.perf_counter()
        held = send_half_requests(lab_.port, f"127.0.0.1:{lab_.vault.port}")
        sent = time.perf_counter() - t
        time.sleep(1)
        attacked_rss = rss_kib(pid)
        try:
            loaded = f"{lab_.latency_ms():.1f} ms"
        except Exception as exc:
            loaded = f"failed: {exc!r}"
        print(
            f"flags {flags}: RSS idle {idle_rss / 1024:.0f} MiB, with 10 half-sent agg n=4096 "
            f"{attacked_rss / 1024:.0f} MiB (sent in {sent:.1f} s); legit count p50 unloaded "
            f"{unloaded:.1f} ms, under attack {loaded}"
        )
        for s in held:
            s.close()


if __name__ == "__main__":
    main(sys.argv[1:])
