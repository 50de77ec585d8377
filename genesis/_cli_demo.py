"""``ppn demo``: a sponsor process and a joiner process on loopback, confirmed on both sides.

Both run the real commands (``ppn genesis`` and ``ppn join``) with ``--events json``; this
module plays both operators: it shows the two SAS side by side, answers ``yes`` to each only
if they match, and prints the roster both ended with.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from ppn.cli import CommandError
from ppn.ports import WIREGUARD_PORT

TIMEOUT = 30.0
# Each node's WireGuard endpoint as the ceremony records it; both on loopback, so beta takes the
# next port. (Nothing listens on them: the demo runs no WireGuard.)
ALPHA_ENDPOINT = f"127.0.0.1:{WIREGUARD_PORT}"
BETA_ENDPOINT = f"127.0.0.1:{WIREGUARD_PORT + 1}"


class _Process:
    """A child ``ppn`` whose stdout JSON lines arrive on a queue (read by a thread)."""

    def __init__(self, label: str, argv: list[str]) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ppn", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def event(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise CommandError(f"demo: the {self.label} said nothing for {TIMEOUT:.0f} s") from None
        if line is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise CommandError(f"demo: the {self.label} exited early: {err.strip()}")
        value: dict[str, Any] = json.loads(line)
        if value.get("event") == "failed":
            raise CommandError(f"demo: the {self.label} failed: {value.get('message')}")
        return value

    def answer(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run(args: argparse.Namespace) -> int:
    if args.dir:
        base = Path(args.dir)
        base.mkdir(parents=True, exist_ok=True)
        return _run(base, args.strong, kept=True)
    with tempfile.TemporaryDirectory(prefix="ppn-demo-") as tmp:
        return _run(Path(tmp), args.strong, kept=False)


def _run(base: Path, strong: bool, *, kept: bool) -> int:
    extra = ["--strong"] if strong else []
    started = time.monotonic()
    sponsor_dir, joiner_dir = base / "alpha", base / "beta"
    # A temporary directory is gone when the demo ends: say so rather than print paths in it
    # that a reader then cannot open (issue 20).
    where = "" if kept else " (removed on exit; --dir DIR keeps it)"
    print(f"ppn demo: two nodes, state in {base}{where}")
    print(f"  [alpha] ppn genesis --name alpha --listen 127.0.0.1:0 --endpoint {ALPHA_ENDPOINT}")
    sponsor = _Process(
        "sponsor",
        [
            "genesis",
            "--state",
            str(sponsor_dir),
            "--name",
            "alpha",
            "--listen",
            "127.0.0.1:0",
            "--endpoint",
            ALPHA_ENDPOINT,
            "--events",
            "json",
            *extra,
        ],
    )
    joiner: _Process | None = None
    try:
        code_event = sponsor.event()
        code, address = code_event["code"], code_event["address"]
        print(f"  [alpha] join window {code_event['window']} open on {address}; code: {code}")
        print(
            f"  [beta]  ppn join {code} --sponsor {address} --name beta --endpoint {BETA_ENDPOINT}"
        )
        joiner = _Process(
            "joiner",
            [
                "join",
                code,
                "--sponsor",
                address,
                "--state",
                str(joiner_dir),
                "--name",
                "beta",
                "--endpoint",
                BETA_ENDPOINT,
                "--events",
                "json",
                *extra,
            ],
        )
        _compare(sponsor, joiner)
        joined = joiner.event()
        sponsor.event()
        sponsor.proc.wait(timeout=TIMEOUT)
        joiner.proc.wait(timeout=TIMEOUT)
        print(f"  beta joined mesh {joined['mesh_id']} as {joined['address']}")
        _print_roster(sponsor_dir)
        if kept:
            print(f"  beta's wg-quick file: {joiner_dir / 'wg-ppn0.conf'}")
        print(f"ppn demo: done in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        for process in (joiner, sponsor):
            if process is not None:
                process.stop()


def _compare(sponsor: _Process, joiner: _Process) -> None:
    """Show both comparison strings; both operators confirm if equal, else both reject."""
    joiner_sas = joiner.event()["sas"]
    sponsor_sas = sponsor.event()["sas"]
    match = joiner_sas == sponsor_sas
    print()
    print(f"  alpha's screen:  {sponsor_sas}")
    print(f"  beta's screen:   {joiner_sas}")
    print(f"  {'they match: both operators confirm' if match else 'THEY DIFFER: both reject'}")
    print()
    answer = "yes" if match else "no"
    sponsor.answer(answer)
    joiner.answer(answer)
    if not match:
        raise CommandError("demo: the comparison strings differ", 12)


def _print_roster(sponsor_dir: Path) -> None:
    roster = json.loads((sponsor_dir / "mesh.json").read_text())["roster"]
    print("  roster (alpha's mesh.json):")
    for member in roster:
        roles = ",".join(member["roles"]) or "-"
        endpoints = ",".join(member["endpoints"]) or "-"
        print(
            f"    {member['name']:<8} {member['address']:<12} wg {member['wg']}  "
            f"endpoint {endpoints}  roles {roles}"
        )
