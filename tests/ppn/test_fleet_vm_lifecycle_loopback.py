"""The VM lifecycle through the CLI with real processes on loopback (issue 18): a controller and
vm-hosts as separate ``ppn`` processes, the provisioner a script that records every call.

``ppn vm list|stop|start|delete``, the Totebox confirmation, a vm-host restart that keeps its
VMs, two quick creates that can no longer overcommit a node, and the vCPU overcommit ratio from
ppn.toml."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ppn import wire
from ppn.fleet._io_host import load_vm_file

from ._fleet_procs import Fleet, fleet_factory

__all__ = ["fleet_factory"]  # the fixture, imported for pytest

FleetFactory = Callable[[Sequence[str]], Fleet]


def _named(vms: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (vm,) = [v for v in vms if v["name"] == name]
    return vm


def _operator(fleet: Fleet, message: dict[str, Any]) -> dict[str, Any]:
    """One raw operator-channel request, as a script could send it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(fleet.control)
        sock.sendall(wire.encode_frame(wire.pack_canonical(message), max_size=1 << 20))
        decoder = wire.FrameDecoder(max_size=1 << 20)
        while (frame := decoder.next_frame()) is None:
            data = sock.recv(65536)
            assert data
            decoder.feed(data)
    return dict(wire.unpack_canonical(frame))


def test_list_stop_start_delete_totebox_and_a_vmhost_restart(
    fleet_factory: FleetFactory,
) -> None:
    fleet = fleet_factory(["a", "b"])
    fleet.controller("--eviction-timeout", "10").start()
    vm_state = {name: fleet.tmp / f"{name}-vms.bin" for name in ("a", "b")}
    for name, ram in (("a", "3000"), ("b", "6000")):
        fleet.vmhost(
            name, "--interval", "1", "--max-ram-mb", ram, "--vm-state", str(vm_state[name])
        ).start()
    fleet.wait_live(["a", "b"])

    empty = fleet.ppn("vm", "list")
    assert empty.returncode == 0 and "no VMs" in empty.stdout
    web = fleet.ppn(
        "vm", "create", "generic", "--ram", "1024", "--vcpus", "2", "--name", "web-1",
        "--node", "b", "--yes", "--wait", "30",
    )  # fmt: skip
    assert web.returncode == 0, web.stderr
    tote = fleet.ppn(
        "vm", "create", "totebox", "--ram", "512", "--name", "acme", "--node", "a", "--yes",
        "--wait", "30",
    )  # fmt: skip
    assert tote.returncode == 0, tote.stderr

    vms = fleet.wait_for(lambda v: len(v) == 2 and all(x["state"] == "running" for x in v))
    assert [(v["node"], v["name"], v["type"], v["totebox"]) for v in vms] == [
        ("a", "acme", "totebox", True),
        ("b", "web-1", "generic", False),
    ]
    human = fleet.ppn("vm", "list", "--node", "b")
    assert human.returncode == 0 and human.stdout.split("\n")[0].split()[:3] == [
        "NAME",
        "NODE",
        "TYPE",
    ]
    assert "web-1" in human.stdout and "acme" not in human.stdout

    # Stop: the hook runs with the action; the VM is reported stopped.
    stop = fleet.ppn("vm", "stop", "web-1", "--wait", "30", "--json")
    assert stop.returncode == 0, stop.stderr
    outcome = json.loads(stop.stdout)
    assert (outcome["node"], outcome["state"], outcome["detail"]) == (
        "b",
        "stopped",
        "stop web-1 done",
    )
    last = fleet.hook_calls()[-1]
    assert last["action"] == "stop" and last["env"]["PPN_VM_ACTION"] == "stop"
    assert last["env"]["PPN_VM_REQUEST_ID"] == _named(vms, "web-1")["request_id"]
    # A stopped VM keeps its share of b's capped RAM.
    status = json.loads(fleet.ppn("fleet", "status", "--json").stdout)
    b = next(n for n in status["nodes"] if n["name"] == "b")
    assert b["ram_available_mb"] == 6000 - 1024

    # The vm-host refuses a stop of a stopped VM; the operator hears why.
    again = fleet.ppn("vm", "stop", "web-1")
    assert again.returncode == 63 and "is stopped" in again.stderr, again.stderr
    missing = fleet.ppn("vm", "start", "nope")
    assert missing.returncode == 68 and "no VM named 'nope'" in missing.stderr

    start = fleet.ppn("vm", "start", "web-1", "--wait", "30")
    assert start.returncode == 0, start.stderr
    assert "web-1 on b: running" in start.stdout

    # A stop the provisioner fails: exit 65, the VM stays running with the reason.
    fail_marker = fleet.files.provisioned.with_name(fleet.files.provisioned.name + ".fail-stop")
    fail_marker.touch()
    failed = fleet.ppn("vm", "stop", "web-1", "--wait", "30")
    assert failed.returncode == 65, failed.stderr
    assert "stop failed" in failed.stderr and "failed on purpose" in failed.stderr
    fail_marker.unlink()
    assert _named(fleet.vm_list(), "web-1")["state"] == "running"

    # The vm-host restarts: its VMs come back from its record file, not from the controller's
    # memory (b is first evicted, so the controller knows nothing of it until b's heartbeat).
    assert fleet.services["b"].stop() == 0
    fleet.wait_for(lambda v: all(x["node"] != "b" for x in v), timeout=60)
    saved = load_vm_file(vm_state["b"])
    assert [(v.record.spec.name, v.record.state.value) for v in saved] == [("web-1", "running")]
    fleet.services["b"].start()
    vms = fleet.wait_for(lambda v: any(x["node"] == "b" for x in v))
    assert (_named(vms, "web-1")["state"], _named(vms, "web-1")["node"]) == ("running", "b")
    stop = fleet.ppn("vm", "stop", "web-1", "--wait", "30")
    assert stop.returncode == 0, stop.stderr

    # A VM-Totebox: not without --yes; not without its name typed; the controller refuses a
    # script that skips the confirmation; then deleted, its data kept.
    no_yes = fleet.ppn("vm", "delete", "acme", input="acme\n")
    assert no_yes.returncode == 62 and "--yes" in no_yes.stderr
    wrong = fleet.ppn("vm", "delete", "acme", "--yes", input="acne\n")
    assert wrong.returncode == 62 and "does not match" in wrong.stderr
    eof = fleet.ppn("vm", "delete", "acme", "--yes", input="")
    assert eof.returncode == 62
    bad_flag = fleet.ppn("vm", "delete", "acme", "--yes", "--confirm", "acm")
    assert bad_flag.returncode == 62
    raw = _operator(fleet, {"op": "delete", "name": "acme", "node": "", "confirm": ""})
    assert raw["ok"] is False and raw["error"] == "confirm"
    assert not [c for c in fleet.hook_calls() if c["action"] == "delete"]
    assert _named(fleet.vm_list(), "acme")["state"] == "running"

    typed = fleet.ppn("vm", "delete", "acme", "--yes", "--wait", "30", input="acme\n")
    assert typed.returncode == 0, typed.stderr
    assert "acme on a: deleted" in typed.stdout and "vault data is kept" in typed.stdout
    (deleted,) = [c for c in fleet.hook_calls() if c["action"] == "delete"]
    assert deleted["name"] == "acme" and deleted["keep_data"] is True
    assert deleted["env"]["PPN_VM_KEEP_DATA"] == "1"

    # An ordinary VM: asked [y/N]; "n" keeps it, "y" deletes it (a stopped VM may be deleted).
    kept = fleet.ppn("vm", "delete", "web-1", input="n\n")
    assert kept.returncode == 62 and _named(fleet.vm_list(), "web-1")
    gone = fleet.ppn("vm", "delete", "web-1", "--wait", "30", "--json", input="y\n")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["state"] == "deleted"
    assert fleet.wait_for(lambda v: v == []) == []
    assert load_vm_file(vm_state["b"]) == [] and load_vm_file(vm_state["a"]) == []

    assert [fleet.services[n].stop() for n in ("a", "b", "cloud")] == [0, 0, 0]


def test_two_quick_creates_cannot_overcommit_a_node_and_vcpus_are_placed(
    fleet_factory: FleetFactory,
) -> None:
    """The vm-host heartbeats every 600 s, so both creates happen between two heartbeats: before
    issue 18 the second one was placed on RAM the first had already taken."""
    fleet = fleet_factory(["a"])
    config = fleet.tmp / "ppn.toml"
    config.write_text("[fleet.serve]\nvcpu-overcommit = 1\n")
    fleet.controller("--eviction-timeout", "900", config=config).start()
    fleet.vmhost("a", "--interval", "600", "--max-ram-mb", "3000").start()
    fleet.wait_live(["a"])
    cores = os.cpu_count() or 1

    first = fleet.ppn("vm", "create", "generic", "--ram", "1500", "--name", "one", "--yes")
    assert first.returncode == 0, first.stderr
    assert [(v["name"], v["state"]) for v in fleet.vm_list()] == [("one", "dispatched")]
    second = fleet.ppn("vm", "create", "generic", "--ram", "1500", "--name", "two", "--yes")
    assert second.returncode == 61, second.stderr
    assert "2012 MB" in second.stderr and "the most is 1500 MB on 'a'" in second.stderr

    # vCPUs: the node has `cores` x 1 (ratio from ppn.toml); "one" holds 1 of them.
    too_many = fleet.ppn(
        "vm", "create", "generic", "--ram", "100", "--vcpus", str(cores), "--name", "three",
        "--yes",
    )  # fmt: skip
    assert too_many.returncode == 61, too_many.stderr
    assert f"1 of {cores} vCPUs committed" in too_many.stderr
    if cores > 1:
        fits = fleet.ppn(
            "vm", "create", "generic", "--ram", "100", "--vcpus", str(cores - 1), "--name",
            "four", "--yes",
        )  # fmt: skip
        assert fits.returncode == 0, fits.stderr
    placed = [c["name"] for c in fleet.hook_calls()]
    assert "two" not in placed and "three" not in placed

    help_text = fleet.ppn("fleet", "serve", "--help").stdout  # --control is accepted too
    assert "--vcpu-overcommit" in help_text and "default 4" in help_text


def test_a_vmhost_killed_during_a_stop_comes_back_with_the_vm_settled(
    fleet_factory: FleetFactory,
) -> None:
    """SIGKILL while the provisioner stops a VM: the restarted vm-host reads the stop as
    interrupted, reports the VM as it was (running, saying so) and takes the next stop."""
    fleet = fleet_factory(["a"])
    hook = fleet.tmp / "slow-stop.py"
    pid_file = fleet.tmp / "hook.pid"
    hook.write_text(
        "import json, os, sys, time\n"
        "spec = json.load(sys.stdin)\n"
        f"if spec['action'] == 'stop' and not os.path.exists({str(pid_file)!r}):\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "print(spec['action'] + ' ok')\n"
    )
    records = fleet.tmp / "a.vms"
    fleet.controller("--eviction-timeout", "10").start()
    host = fleet.vmhost("a", "--interval", "1", "--vm-state", str(records), provisioner=hook)
    host.start()
    fleet.wait_live(["a"])
    created = fleet.ppn(
        "vm", "create", "generic", "--ram", "64", "--name", "web-1", "--node", "a", "--yes",
        "--wait", "30",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert fleet.ppn("vm", "stop", "web-1").returncode == 0
    fleet.wait_for(lambda v: v[0]["state"] == "stopping")
    assert host.proc is not None
    os.kill(host.proc.pid, 9)
    host.proc.wait()
    host.proc = None
    try:
        fleet.wait_for(lambda v: v == [], timeout=60)  # evicted
        host.start()
        vms = fleet.wait_for(lambda v: len(v) == 1)
        assert vms[0]["state"] == "running"
        assert "restarted while it was stopping" in vms[0]["detail"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 9)  # the orphaned provisioner
    stop = fleet.ppn("vm", "stop", "web-1", "--wait", "30")
    assert stop.returncode == 0, stop.stderr
    assert "web-1 on a: stopped" in stop.stdout
