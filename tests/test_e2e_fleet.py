"""The end-to-end fleet scenario (``python -m interop.fleet``) as CI runs it: three namespaces on
wireguard-go, joins by code with compared SAS, mesh pings, fleet heartbeats, an aggregated query
through VM-Orchestration, then cut/restore of laptop B and a restart of laptop A's agent, with
the default 10 s / 30 s fleet timers (about 80 s)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from interop.fleet import RECORDS, run_fleet
from interop.netns import Lab


@pytest.mark.netns
def test_fleet_end_to_end(lab: Lab, tmp_path: Path) -> None:
    lines: list[str] = []
    run = run_fleet(lab, tmp_path, out=lines.append)

    numbers = [s.number for s in run.steps]
    assert numbers == ["1a", "1b", "2", "3", "4", "5a", "5b", "5c", "5d"], lines
    assert all(s.ok for s in run.steps), lines
    assert run.facts["addresses"] == {
        "genesis": "10.8.0.1",
        "relay": "10.8.0.2",
        "cloud": "10.8.0.3",
    }
    # Both vaults' parts were counted, and the sample data differs per vault so a count from
    # one vault alone could not pass.
    assert f"count {sum(RECORDS.values())}" in run.steps[4].detail
    assert RECORDS["genesis"] != RECORDS["relay"]
    assert f"count {RECORDS['genesis']} (A ok)" in run.steps[6].detail
    # Every step printed its outcome with a timing.
    assert sum(1 for line in lines if line.strip().startswith("ok ")) == len(run.steps)
    assert any(line.startswith(f"all {len(run.steps)} steps passed in ") for line in lines)
    # The operator-facing output of `ppn fleet status` and `ppn query --via` is shown too.
    shown = "\n".join(line for line in lines if line.startswith("      | "))
    assert "relay" in shown and "cloud" in shown and "complete" in shown
    # Nothing of the scenario survives in the namespaces but the agents' WireGuard devices,
    # which the lab removes with the namespaces.
    for node in run.nodes.values():
        assert node.agent is None


ROOT = Path(__file__).resolve().parent.parent


def test_fleet_script_help_says_what_it_needs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "interop.fleet", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "needs root" in text and "network namespaces" in text


def _lab_leftovers(pid: int) -> list[str]:
    """Namespaces and WireGuard sockets carrying the per-run tag of the lab made by ``pid``."""
    tag = f"{pid % 0xFFFF:04x}"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [n.split()[0] for n in names.splitlines() if n.split()[0].rsplit("-", 1)[-1][:4] == tag]
    sockets = Path("/var/run/wireguard")
    if sockets.is_dir():
        found += [p.name for p in sockets.glob(f"*{tag}????.sock")]
    return found


@pytest.mark.netns
def test_fleet_script_cleans_up_when_terminated() -> None:
    """SIGTERM in the middle (agents, wireguard-go and ceremonies running): exit 130 and no
    namespace, interface socket or process of the run is left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "interop.fleet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("[2]"):
                break
        during = _lab_leftovers(proc.pid)
        assert any(name.startswith("ppn-relay-") for name in during), (seen, during)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted (SIGTERM); cleaned up" in err
    assert _lab_leftovers(proc.pid) == []
