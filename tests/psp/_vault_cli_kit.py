"""Running ``ppn`` and a ``ppn vault serve`` process for the vault CLI tests (audit, archive)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PPN = (
    [sys.executable, "-m", "ppn"]
    if not (Path(sys.executable).parent / "ppn").exists()
    else [str(Path(sys.executable).parent / "ppn")]
)


def ppn(
    *args: str, cwd: Path, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PPN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, input=stdin
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ppn {' '.join(args)} -> {result.returncode}: {result.stderr}")
    return result


def make_vault(cwd: Path, *, records: int, store: str = "v") -> None:
    ppn("vault", "init", "--store", store, "--name", "acme", cwd=cwd)
    (cwd / "people.jsonl").write_text(
        "".join(json.dumps({"name": f"p{i}", "age": i % 90}) + "\n" for i in range(records))
    )
    ppn("vault", "import", "--store", store, "--collection", "people", "people.jsonl", cwd=cwd)


@contextmanager
def served_vault(cwd: Path, *, records: int, store: str = "v") -> Iterator[str]:
    """A vault with ``records`` people, served by a ``ppn vault serve`` process on loopback;
    yields its HOST:PORT and stops the process (by its pid) at the end."""
    make_vault(cwd, records=records, store=store)
    proc = subprocess.Popen(
        [*PPN, "vault", "serve", "--store", store, "--listen", "127.0.0.1:0"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        assert match, line
        yield match.group(1)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
