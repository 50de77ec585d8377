"""The vm-host's VM records on a full or read-only disk (issue 18; RFC-NOTES §8.7.1), with real
``ppn`` processes on loopback and the record file on a small tmpfs.

A request that cannot be recorded is refused, not accepted and forgotten; the file keeps its last
whole version; a provisioner outcome that cannot be saved is kept in memory, reported, and
saved as soon as the disk takes it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from ppn.fleet._io_host import load_vm_file
from tests._tmpfs import fill, small_tmpfs

from ._fleet_procs import Fleet, fleet_factory

__all__ = ["fleet_factory"]

FleetFactory = Callable[[Sequence[str]], Fleet]


def _names(path: Path) -> list[tuple[str, str]]:
    return [(v.record.spec.name, v.record.state.value) for v in load_vm_file(path)]


def _create(fleet: Fleet, name: str) -> subprocess.CompletedProcess[str]:
    return fleet.ppn(
        "vm", "create", "generic", "--ram", "64", "--name", name, "--node", "a", "--yes",
        "--wait", "30",
    )  # fmt: skip


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_requests_the_disk_refuses_are_refused_and_nothing_is_lost(
    fleet_factory: FleetFactory, how: str
) -> None:
    with small_tmpfs("256k") as mnt:
        fleet = fleet_factory(["a"])
        records = mnt / "a-vms.bin"
        fleet.controller().start()
        fleet.vmhost("a", "--interval", "1", "--vm-state", str(records)).start()
        fleet.wait_live(["a"])
        assert _create(fleet, "web-1").returncode == 0
        assert _names(records) == [("web-1", "running")]
        saved = records.read_bytes()

        filler = None
        if how == "full":
            filler = fill(mnt)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            refused = _create(fleet, "web-2")
            stop = fleet.ppn("vm", "stop", "web-1")
        finally:
            if filler is not None:
                filler.unlink()
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        for result in (refused, stop):
            assert result.returncode == 63, result.stderr
            assert "cannot record the VM" in result.stderr
            assert "Traceback" not in result.stderr
        assert records.read_bytes() == saved  # the last whole version, untouched
        assert [p.name for p in mnt.iterdir()] == [records.name]  # no temporary file left
        assert [(v["name"], v["state"]) for v in fleet.vm_list()] == [("web-1", "running")]
        assert [c["name"] for c in fleet.hook_calls()] == ["web-1"]  # nothing ran

        # The disk takes writes again: the same requests go through.
        assert _create(fleet, "web-2").returncode == 0
        assert _names(records) == [("web-1", "running"), ("web-2", "running")]
        assert fleet.services["a"].stop() == 0


def test_an_outcome_the_disk_refuses_is_kept_and_saved_later(
    fleet_factory: FleetFactory, tmp_path: Path
) -> None:
    """The provisioner fills the disk while it stops the VM: the save after it fails; the vm-host
    reports the VM stopped anyway and writes the file once there is room again."""
    with small_tmpfs("256k") as mnt:
        fleet = fleet_factory(["a"])
        hook = tmp_path / "filling-hook.py"
        hook.write_text(
            "import json, sys\n"
            "spec = json.load(sys.stdin)\n"
            "if spec['action'] == 'stop':\n"
            f"    f = open({str(mnt / 'filler')!r}, 'wb')\n"
            "    try:\n"
            "        while True:\n"
            "            f.write(b'\\0' * 65536); f.flush()\n"
            "    except OSError:\n"
            "        pass\n"
            "print(spec['action'] + ' ok')\n"
        )
        records = mnt / "a-vms.bin"
        fleet.controller().start()
        fleet.vmhost("a", "--interval", "1", "--vm-state", str(records), provisioner=hook).start()
        fleet.wait_live(["a"])
        assert _create(fleet, "web-1").returncode == 0
        stop = fleet.ppn("vm", "stop", "web-1", "--wait", "30")
        assert stop.returncode == 0, stop.stderr
        # Reported stopped; the file still holds the last version it could write (the stop
        # accepted, not finished), which a restart reads as an interrupted stop of a running VM.
        (interrupted,) = load_vm_file(records)
        assert interrupted.record.state.value == "running"
        assert "restarted while it was stopping" in interrupted.record.detail
        assert [(v["name"], v["state"]) for v in fleet.vm_list()] == [("web-1", "stopped")]
        assert "cannot save the VM records" in (fleet.tmp / "a.log").read_text()
        (mnt / "filler").unlink()
        deadline = time.monotonic() + 30
        while _names(records) != [("web-1", "stopped")]:
            assert time.monotonic() < deadline, _names(records)
            time.sleep(0.2)
        assert fleet.services["a"].stop() == 0
