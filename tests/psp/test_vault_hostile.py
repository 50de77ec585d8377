"""Issue 14, the vault under attack: real ``ppn vault serve`` processes on loopback.

Each test is one finding. Bounds are structural (a legitimate query succeeds, RSS stays under a
bound, the log has few lines), with generous deadlines: the machine may be loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ppn import IdentityKey
from psp import Capability, ErrorCode, Filter, Query, Scope, VaultError, mint
from psp._capability import invoke_for_vault
from psp._io_store import DB_FILE, KEY_FILE, Store
from psp._io_vault import write_key_file
from psp._trio import VaultClient
from tests._tmpfs import small_tmpfs

PPN = [sys.executable, "-m", "ppn"]
HOLDER = IdentityKey.from_seed(b"h" * 32)


def _make_store(directory: Path, rows: int = 100) -> Capability:
    key = IdentityKey.generate()
    store = Store.create(directory, name="hostile", vault_id=key.public, now=int(time.time()))
    write_key_file(directory / KEY_FILE, key)
    if rows:
        store.append_many(
            "people",
            [{"name": f"n{i:05}", "age": i % 90} for i in range(rows)],
            now=int(time.time()),
        )
    store.close()
    return mint(
        key,
        audience=HOLDER.public,
        scope=Scope(vaults=(key.public,), rows=100_000),
        not_before=0,
        expires=int(time.time()) + 3600,
        nonce=secrets.token_bytes(16),
    )


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int, stderr_path: Path) -> None:
        self.proc, self.port, self.stderr_path = proc, port, stderr_path

    @property
    def rss_kib(self) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", text)
        assert match, text
        return int(match.group(1))

    def stderr_lines(self) -> list[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def serve(store: Path, *args: str, nofile: int | None = None) -> Iterator[Served]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    stderr_path = store.parent / f"serve-{secrets.token_hex(4)}.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [*PPN, "vault", "serve", "--store", str(store), "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=limit,
        )
    served = Served(proc, 0, stderr_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, stderr_path.read_text())
        served.port = int(match.group(1))
        yield served
    finally:
        served.stop()


def legit_query(
    port: int, cap: Capability, *, deadline: float = 30.0, query: Query | None = None
) -> float:
    """One query by the capability's holder; its latency in seconds (raises if it failed)."""
    q = query or Query(collection="people", limit=3)

    async def run() -> float:
        t = time.perf_counter()
        with trio.fail_after(deadline):
            async with await VaultClient.connect("127.0.0.1", port) as client:
                result = await client.query(HOLDER, cap, q)
        assert result.end is not None and result.rows
        return time.perf_counter() - t

    return trio.run(run)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


# --- finding 1: file descriptors ---------------------------------------------------------------


def test_idle_connections_beyond_the_fd_limit_leave_room_for_a_legit_query(tmp_path: Path) -> None:
    cap = _make_store(tmp_path / "v")
    held: list[socket.socket] = []
    with serve(tmp_path / "v", nofile=256) as srv:
        before = legit_query(srv.port, cap)
        base = srv.rss_kib
        try:
            # 8 source addresses x 50: more than the process has descriptors.
            for i in range(400):
                with contextlib.suppress(OSError):
                    held.append(_connect(srv.port, f"127.0.0.{2 + i % 8}"))
            time.sleep(1.0)
            during = legit_query(srv.port, cap, deadline=30.0)
            rss = srv.rss_kib
            time.sleep(2.0)  # a storm would be ~10 lines a second
            lines = srv.stderr_lines()
        finally:
            for s in held:
                s.close()
        after = legit_query(srv.port, cap)
    print(
        f"\nlegit query: before {before * 1e3:.1f} ms, under 400 idlers {during * 1e3:.1f} ms, "
        f"after {after * 1e3:.1f} ms; {len(lines)} stderr lines; RSS {base // 1024} -> "
        f"{rss // 1024} MiB"
    )
    assert len(lines) <= 3, lines[:20]


def test_an_idle_connection_is_closed_at_the_first_frame_deadline(tmp_path: Path) -> None:
    cap = _make_store(tmp_path / "v")
    with serve(tmp_path / "v", "--first-frame-deadline", "2", "--idle-timeout", "3") as srv:
        idle = _connect(srv.port)
        partial = _connect(srv.port)
        partial.sendall(struct.pack(">I", 1000) + b"x" * 500)  # a frame that never completes
        legit = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        t = time.monotonic()
        for s in (idle, partial):
            s.settimeout(30)
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(65536):
                    data += chunk
            s.close()
        assert time.monotonic() - t < 25  # closed by the vault, not by our 30 s timeout
        legit.close()
        assert legit_query(srv.port, cap) < 30


# --- finding 2: memory before authentication ---------------------------------------------------


def test_unauthenticated_big_frames_do_not_grow_the_vault(tmp_path: Path) -> None:
    cap = _make_store(tmp_path / "v")
    n, size = 120, 1 << 20
    held: list[socket.socket] = []
    with serve(tmp_path / "v") as srv:
        legit_query(srv.port, cap)
        base = srv.rss_kib
        try:
            body = struct.pack(">I", size) + b"\0" * (size - 1)
            for i in range(n):
                s = _connect(srv.port, f"127.0.0.{2 + i % 4}")
                held.append(s)
                with contextlib.suppress(OSError):
                    s.sendall(body)
            time.sleep(1.0)
            during = srv.rss_kib
            latency = legit_query(srv.port, cap)
        finally:
            for s in held:
                s.close()
    print(
        f"\nRSS {base // 1024} MiB -> {during // 1024} MiB under {n} x 1 MiB partial frames; "
        f"legit query {latency * 1e3:.1f} ms"
    )
    # Before admission a connection buffers at most 64 KiB of a frame (plus one 64 KiB read).
    assert during - base < 40 * 1024


# --- finding 8: replay across a restart --------------------------------------------------------


def test_a_captured_invocation_is_refused_after_a_restart(tmp_path: Path) -> None:
    cap = _make_store(tmp_path / "v")
    query = Query(collection="people", limit=2).encode()

    async def send(port: int, envelope: bytes | None) -> tuple[bytes, ErrorCode | None]:
        async with await VaultClient.connect("127.0.0.1", port) as client:
            hello = await client.hello()
            if envelope is None:
                envelope = invoke_for_vault(
                    cap,
                    HOLDER,
                    hello.vault,
                    query,
                    now=int(time.time()),
                    nonce=secrets.token_bytes(16),
                ).raw
            try:
                await client.fetch(envelope, query)
            except VaultError as exc:
                return envelope, exc.code
            return envelope, None

    with serve(tmp_path / "v") as srv:
        captured, code = trio.run(send, srv.port, None)
        assert code is None
        assert trio.run(send, srv.port, captured)[1] is ErrorCode.REPLAYED
    with serve(tmp_path / "v") as srv:
        assert trio.run(send, srv.port, captured)[1] is ErrorCode.REPLAYED


# --- finding 10: file modes --------------------------------------------------------------------


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [directory, *directory.iterdir()]}


def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    env = {**os.environ}
    old = os.umask(0o022)
    try:
        subprocess.run(
            [*PPN, "vault", "init", "--store", "v"],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            env=env,
        )
        cap_ok = _make_store(tmp_path / "w")  # created in-process under umask 022 as well
    finally:
        os.umask(old)
    for directory in (tmp_path / "v", tmp_path / "w"):
        with serve(directory) as srv:
            if directory.name == "w":
                legit_query(srv.port, cap_ok)
            modes = _modes(directory)
        assert modes[directory.name] == 0o700, modes
        for name, mode in modes.items():
            if name != directory.name:
                assert mode == 0o600, modes
    # An existing store with looser modes is tightened, and the operator is told.
    v = tmp_path / "v"
    os.chmod(v, 0o755)
    os.chmod(v / DB_FILE, 0o644)
    result = subprocess.run(
        [*PPN, "vault", "verify", "--store", "v"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "0600" in result.stderr or "tightened" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert stat.S_IMODE(v.stat().st_mode) == 0o700
    assert stat.S_IMODE((v / DB_FILE).stat().st_mode) == 0o600


# --- finding 12: revoke on a read-only or full disk --------------------------------------------


def _revoke(store: Path, cap_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PPN, "cap", "revoke", str(cap_file), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_revoke_on_a_read_only_or_full_disk_says_so(tmp_path: Path, how: str) -> None:
    with small_tmpfs() as mnt:
        cap = _make_store(mnt / "v", rows=10)
        cap_file = tmp_path / "c.cap"
        cap_file.write_text(cap.to_text() + "\n")
        holder = None
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        else:
            holder = Store.open(mnt / "v")  # a serving vault keeps the -wal and -shm files
            holder.head()
            with contextlib.suppress(OSError), open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        result = _revoke(mnt / "v", cap_file)
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        else:
            (mnt / "filler").unlink()
        if holder is not None:
            holder.close()
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 46, (result.returncode, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert ("read-only" if how == "read-only" else "full") in result.stderr, result.stderr
        store = Store.open(mnt / "v")
        assert store.new_revocations() == []
        assert store.verify().ok
        store.close()


# --- finding 13: import resumes ----------------------------------------------------------------


def test_an_import_killed_and_rerun_never_appends_a_record_twice(tmp_path: Path) -> None:
    _make_store(tmp_path / "v", rows=0)
    n = 60_000
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"i": i, "pad": "x" * 40}) + "\n" for i in range(n))
    )
    args = [
        *PPN,
        "vault",
        "import",
        "--store",
        "v",
        "--collection",
        "c",
        "--batch",
        "1000",
        "in.jsonl",
    ]
    for _ in range(3):  # killed part-way, three times
        proc = subprocess.Popen(
            args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        store = Store.open(tmp_path / "v")
        start = store.head()[0]
        while time.monotonic() < deadline and proc.poll() is None:
            if store.head()[0] >= start + 5000:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store.close()
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    store = Store.open(tmp_path / "v")
    seen = [
        json.loads(p)["i"]
        for (p,) in store.raw_connection().execute("SELECT payload FROM entries ORDER BY seq")
    ]
    store.close()
    assert sorted(seen) == list(range(n)), (len(seen), len(set(seen)))


# --- finding 3: SQLite on the event loop -------------------------------------------------------


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def test_heavy_scans_do_not_stall_a_light_query(tmp_path: Path) -> None:
    cap = _make_store(tmp_path / "v", rows=0)
    store = Store.open(tmp_path / "v")
    for start in range(0, 200_000, 20_000):
        store.append_many(
            "people",
            [{"name": f"n{i:06}", "age": i % 90} for i in range(start, start + 20_000)],
            now=int(time.time()),
        )
    store.close()
    heavy = Query(
        collection="people", op="count", where=(Filter(field="name", op="prefix", args=("n1",)),)
    )
    light = Query(collection="people", limit=3)

    async def run(port: int) -> tuple[list[float], list[float], int]:
        heavy_done = 0

        async def light_latencies(n: int, heavy_wanted: int = 0) -> list[float]:
            out: list[float] = []
            async with await VaultClient.connect("127.0.0.1", port) as client:
                while len(out) < n or heavy_done < heavy_wanted:
                    t = time.perf_counter()
                    result = await client.query(HOLDER, cap, light)
                    out.append(time.perf_counter() - t)
                    assert len(result.rows) == 3
                    await trio.sleep(0.005)
            return out

        unloaded = await light_latencies(60)
        async with trio.open_nursery() as nursery:

            async def holder() -> None:
                nonlocal heavy_done
                async with await VaultClient.connect("127.0.0.1", port) as client:
                    while True:
                        result = await client.query(HOLDER, cap, heavy)
                        assert json.loads(result.rows[0]) == {"count": 100_000}
                        heavy_done += 1

            for _ in range(4):
                nursery.start_soon(holder)
            await trio.sleep(1.0)
            with trio.fail_after(120):
                loaded = await light_latencies(60, heavy_wanted=8)
            nursery.cancel_scope.cancel()
        return unloaded, loaded, heavy_done

    with serve(tmp_path / "v") as srv:
        unloaded, loaded, heavy_done = trio.run(run, srv.port)
    print(
        f"\nlight query unloaded p50 {_pct(unloaded, 0.5) * 1e3:.1f} p99 "
        f"{_pct(unloaded, 0.99) * 1e3:.1f} ms; under 4 heavy holders ({heavy_done} counts of "
        f"200k rows) p50 {_pct(loaded, 0.5) * 1e3:.1f} p99 {_pct(loaded, 0.99) * 1e3:.1f} ms"
    )
    assert heavy_done >= 8
    # Generous for a loaded 2-core box (the goal, p99 within 5x, is reported above): with the
    # counts on the event loop the light query's median was over a second.
    assert _pct(loaded, 0.5) < max(10 * _pct(unloaded, 0.5), 0.1), (unloaded, loaded)


async def test_queries_moved_to_workers_return_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    """Every query outruns a zero slice, at its start or part-way through a batch: restarted on
    a worker from the rows already sent, the answer is row for row the unsliced one. A scan
    budget that runs out is COST_LIMIT, and the connection stays usable."""
    from psp._io_store import _FAST_STEP
    from psp._io_vault import Vault
    from psp._trio import serve_vault

    cap = _make_store(tmp_path / "v", rows=3000)
    vault = Vault.open(tmp_path / "v")
    queries = [
        Query(collection="people", order=("age", True), limit=2500),
        Query(collection="people", where=(Filter(field="name", op="prefix", args=("n01",)),)),
        Query(collection="people", op="count"),
        Query(collection="people", limit=700, offset=1000),
    ]
    expected = []
    for q in queries:
        cursor = vault.store.execute(q, cap.scope, limit=q.limit or 100_000)
        expected.append(cursor.fetch(100_000))
    monkeypatch.setattr("psp._io_store.FAST_SLICE", 0.0)
    assert _FAST_STEP <= 1000
    listeners = await nursery.start(serve_vault, vault, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    async with await VaultClient.connect("127.0.0.1", port, window=2) as client:
        for q, rows in zip(queries, expected, strict=True):
            result = await client.query(HOLDER, cap, q)
            assert result.rows == rows
        monkeypatch.setattr("psp._io_store.SCAN_BUDGET", 1)
        with pytest.raises(VaultError) as over:
            await client.query(HOLDER, cap, queries[0])
        assert over.value.code is ErrorCode.COST_LIMIT
        monkeypatch.setattr("psp._io_store.SCAN_BUDGET", 10**9)
        assert (await client.query(HOLDER, cap, queries[2])).rows == expected[2]


def test_an_admitted_connection_trickling_a_frame_is_closed_at_the_idle_timeout(
    tmp_path: Path,
) -> None:
    cap = _make_store(tmp_path / "v")

    async def run(port: int) -> float:
        async with await VaultClient.connect("127.0.0.1", port) as client:
            await client.query(HOLDER, cap, Query(collection="people", limit=3))  # admitted
            stream = client._stream
            await stream.send_all(struct.pack(">I", 1 << 20))  # a 1 MiB frame, byte by byte
            start = time.monotonic()
            with trio.fail_after(40):
                while True:
                    try:
                        await stream.send_all(b"x")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    with trio.move_on_after(0.3):
                        if not await stream.receive_some(100):
                            break
            return time.monotonic() - start

    with serve(tmp_path / "v", "--idle-timeout", "2") as srv:
        took = trio.run(run, srv.port)
    assert took < 35
