"""The aggregator and vaults as real processes on loopback, driven through the ``ppn`` CLI:
a count across vaults, then a hung vault (SIGSTOP) and a killed one (SIGKILL), each in the
status table with the documented exit status — strict fails, best effort answers with the rest."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._orchestration_support import HOLDER, cap_for, make_vault

PPN = (
    [sys.executable, "-m", "ppn"]
    if not (Path(sys.executable).parent / "ppn").exists()
    else [str(Path(sys.executable).parent / "ppn")]
)
SIZES = (30, 45, 60)


def _serve(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*PPN, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[str]], str]]:
    procs: list[subprocess.Popen[str]] = []
    lines = []
    try:
        for i, n in enumerate(SIZES):
            vault = make_vault(tmp_path / f"v{i}", 100 + i, [{"name": f"p{j}"} for j in range(n)])
            (tmp_path / f"v{i}.cap").write_text(cap_for(vault).to_text())
            vault.close()
            proc, addr = _serve(
                ["vault", "serve", "--store", f"v{i}", "--listen", "127.0.0.1:0"], tmp_path
            )
            procs.append(proc)
            vid = base64.b64encode(vault.vault_id).decode()
            lines.append(f"{vid}@{addr} v{i}.cap  # vault {i}\n")
        (tmp_path / "vaults.txt").write_text("# entities\n" + "".join(lines))
        (tmp_path / "holder.key").write_text(base64.b64encode(HOLDER.seed).decode() + "\n")
        agg, agg_addr = _serve(
            ["orchestration", "serve", "--listen", "127.0.0.1:0", "--vaults", "vaults.txt"],
            tmp_path,
        )
        procs.append(agg)
        yield tmp_path, procs, agg_addr
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout=10)


def _query(d: Path, agg: str, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    result = subprocess.run(
        [
            *PPN,
            *("query", "--via", agg, "--vaults", "vaults.txt", "--key", "holder.key"),
            *("--collection", "people", "--count", *extra),
        ],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(x) for x in result.stdout.splitlines()] if "--json" in extra else []
    return result.returncode, lines, result.stdout + result.stderr


def test_count_across_vault_processes_and_faults(
    fleet: tuple[Path, list[subprocess.Popen[str]], str],
) -> None:
    d, procs, agg = fleet
    status, lines, out = _query(d, agg, "--json")
    assert status == 0, out
    assert lines[0] == {"count": sum(SIZES)}
    assert [x["vault_status"]["status"] for x in lines if "vault_status" in x] == ["ok"] * 3
    assert lines[-1]["summary"]["complete"] is True

    # The human table: one row, then the per-vault status footer.
    status, _, out = _query(d, agg)
    assert status == 0 and "count" in out and out.count(" ok ") >= 3, out

    # A hung vault: strict (the default for a count) fails; best effort answers the rest.
    os.kill(procs[1].pid, signal.SIGSTOP)
    status, lines, out = _query(d, agg, "--json", "--timeout", "2")
    assert status == 50, out
    states = [x["vault_status"]["status"] for x in lines if "vault_status" in x]
    assert states == ["ok", "timeout", "ok"], out
    assert not any("count" in x for x in lines)  # a strict failure prints no partial answer
    status, lines, out = _query(d, agg, "--json", "--timeout", "2", "--mode", "best_effort")
    assert status == 51, out
    assert lines[0] == {"count": SIZES[0] + SIZES[2]}
    assert lines[-1]["summary"]["complete"] is False
    os.kill(procs[1].pid, signal.SIGCONT)

    # A killed vault is unreachable; the table footer says so.
    os.kill(procs[2].pid, signal.SIGKILL)
    procs[2].wait(timeout=10)
    status, _, out = _query(d, agg, "--mode", "best_effort")
    assert status == 51, out
    assert "unreachable" in out and "INCOMPLETE" in out, out
    status, lines, out = _query(d, agg, "--json", "--mode", "best_effort")
    assert lines[0] == {"count": SIZES[0] + SIZES[1]}, out
