"""Issue 16, item 4 leftovers, through the real ``ppn`` CLI on loopback: a busy pairing port
leaves no half-made mesh, and the joiner's wg-quick file names the sponsor it dialled."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from .test_ceremony_cli import ROOT, event, ppn


def test_genesis_on_a_busy_port_writes_nothing_and_a_rerun_works(tmp_path: Path) -> None:
    state = tmp_path / "alpha"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        failed = subprocess.run(
            [
                sys.executable,
                "-m",
                "ppn",
                "genesis",
                "--state",
                str(state),
                "--name",
                "alpha",
                "--listen",
                f"127.0.0.1:{port}",
                "--no-announce",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert failed.returncode == 1, failed.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in failed.stderr
    assert "created mesh" not in failed.stderr and "Traceback" not in failed.stderr
    assert not state.exists()  # before: the mesh was written, and a rerun said "use 'ppn invite'"
    rerun = ppn(
        "genesis",
        "--state",
        str(state),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--events",
        "json",
    )
    try:
        assert event(rerun)["event"] == "code"
        assert (state / "mesh.json").is_file()
    finally:
        rerun.kill()
        rerun.wait()
