"""A replica's catch-up rate (issue 19; RFC-NOTES §9.5.1), side by side with the local import
rate in the same run.

One primary (``ppn vault serve`` on loopback) holds N records. Each round, in alternating order:
- ``import``: ``ppn vault import`` of the same N JSON lines into a new store (the peer: the
  fastest way entries get into a vault, one process, no network, no verification);
- ``follow``: ``ppn vault follow --once`` into a new replica store — every entry over PSP,
  decoded, its hash recomputed, every answer's seal verified, written in one transaction per
  answer (4096 entries).

Both are timed as whole processes (start-up included on both sides), and the follower's own
figure (``--json`` ``done``: from its start to the last write) is shown beside. Reported: entries
per second, median of the rounds, and the ratio follow / import (above 1: catching up is
faster than importing). Run: ``.venv/bin/python -m benchmarks replica`` (N from
``PPN_BENCH_REPLICA_N``, default 100,000).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 3
PPN = [str(Path(sys.executable).parent / "ppn")]


def _ppn(d: Path, *args: str) -> str:
    result = subprocess.run([*PPN, *args], cwd=d, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"ppn {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _timed(d: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = _ppn(d, *args)
    return time.perf_counter() - start, out


def main() -> None:
    n = int(os.environ.get("PPN_BENCH_REPLICA_N", "100000"))
    d = Path(tempfile.mkdtemp(prefix="bench-replica-"))
    server: subprocess.Popen[str] | None = None
    try:
        lines = "".join(
            json.dumps({"i": i, "name": f"person {i}", "city": "Vancouver", "age": 20 + i % 60})
            + "\n"
            for i in range(n)
        )
        (d / "records.jsonl").write_text(lines)
        _ppn(d, "vault", "init", "--store", "primary")
        _ppn(d, "vault", "import", "--store", "primary", "--collection", "people", "records.jsonl")
        holder = _ppn(d, "key", "new", "follower.key").strip()
        _ppn(
            d,
            *("cap", "mint", "--store", "primary", "--to", holder, "--ops", "replicate"),
            *("--out", "follower.cap"),
        )
        server = subprocess.Popen(
            [*PPN, "vault", "serve", "--store", "primary", "--listen", "127.0.0.1:0"],
            cwd=d,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # the primary's log
            text=True,
        )
        assert server.stdout is not None
        match = re.search(r"listening on (\S+)", server.stdout.readline())
        assert match, "the primary did not start"
        address = match.group(1)
        imports: list[float] = []
        follows: list[float] = []
        own: list[float] = []
        for r in range(ROUNDS):
            for side in ("import", "follow") if r % 2 == 0 else ("follow", "import"):
                if side == "import":
                    _ppn(d, "vault", "init", "--store", f"import{r}")
                    seconds, _ = _timed(
                        d,
                        *("vault", "import", "--store", f"import{r}", "--collection", "people"),
                        "records.jsonl",
                    )
                    imports.append(n / seconds)
                else:
                    seconds, out = _timed(
                        d,
                        *("vault", "follow", "--from", address, "--cap", "follower.cap"),
                        *("--key", "follower.key", "--store", f"replica{r}", "--once", "--json"),
                    )
                    done = json.loads(out.strip().splitlines()[-1])
                    assert done["event"] == "done" and done["written"] == n, done
                    follows.append(n / seconds)
                    own.append(done["rate"])
            print(
                f"round {r + 1}: import {imports[-1]:,.0f}/s  follow {follows[-1]:,.0f}/s "
                f"(follower's own {own[-1]:,.0f}/s)  ratio {follows[-1] / imports[-1]:.2f}",
                flush=True,
            )
        imp, fol = statistics.median(imports), statistics.median(follows)
        print(
            f"{n:,} entries, median of {ROUNDS}: local import {imp:,.0f} entries/s, "
            f"replica catch-up {fol:,.0f} entries/s (follower's own {statistics.median(own):,.0f}/s); "
            f"follow/import = {fol / imp:.2f}"
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
