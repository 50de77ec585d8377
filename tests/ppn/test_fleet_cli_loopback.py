"""Multi-process on loopback through the CLI: a controller and two vm-hosts as separate ``ppn``
processes; ``ppn fleet status --json`` shows the nodes, ``ppn vm create … --yes`` places,
dispatches and the provisioner (a script this test writes) runs."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.fleet_scenario import NodePlan, live_names, poll_status, ppn, write_fleet_files


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload,no-any-return]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_status_create_dispatch_and_provision(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    net = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    port, spawn_port = 20000 + secrets.randbelow(20000), 40000 + secrets.randbelow(20000)
    files = write_fleet_files(
        tmp_path,
        [
            NodePlan("cloud", f"{net}.1", controller=True),
            NodePlan("a", f"{net}.2"),
            NodePlan("b", f"{net}.3"),
        ],
    )
    control = str(files.control)
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("cloud", "a", "b")}  # noqa: SIM115
    processes.append(
        subprocess.Popen(
            ppn("fleet", "serve", "--identity", str(files.keys["cloud"]), "--directory",
                str(files.directory), "--port", str(port), "--spawn-port", str(spawn_port),
                "--control", control),
            stderr=logs["cloud"], text=True,
        )
    )  # fmt: skip
    for name, ram in (("a", "3000"), ("b", "6000")):
        processes.append(
            subprocess.Popen(
                ppn("vmhost", "serve", "--identity", str(files.keys[name]), "--directory",
                    str(files.directory), "--port", str(spawn_port), "--controller-port", str(port),
                    "--interval", "2", "--max-ram-mb", ram,
                    "--provisioner", f"python3 {files.provisioner}"),
                stderr=logs[name], text=True,
            )
        )  # fmt: skip

    status = poll_status(_run, files.control, lambda s: live_names(s) == {"a", "b"}, timeout=30)
    by_name = {n["name"]: n for n in status["nodes"]}
    assert by_name["b"]["ram_available_mb"] == 6000 and by_name["a"]["ram_total_mb"] <= 3000
    assert by_name["a"]["mesh_address"] == f"{net}.2"
    assert status["controller"] == "cloud" and status["evicted"] == []

    human = _run(ppn("fleet", "status", "--control", control))
    assert human.returncode == 0 and "2 live node(s)" in human.stdout and "6000/" in human.stdout

    # Refusals: nothing fits; a Totebox without a node; the operator says no; migrate.
    big = _run(ppn("vm", "create", "generic", "--ram", "6000", "--yes", "--control", control))
    assert big.returncode == 61 and "6512 MB" in big.stderr
    tote = _run(ppn("vm", "create", "VM-Totebox", "--ram", "512", "--yes", "--control", control))
    assert tote.returncode == 61 and "must name its node" in tote.stderr
    declined = _run(
        ppn("vm", "create", "generic", "--ram", "512", "--control", control), input="n\n"
    )
    assert declined.returncode == 62 and "on node b" in declined.stdout
    migrate = _run(ppn("vm", "migrate", "web-1", "--to", "a"))
    assert migrate.returncode == 64 and "excluded by design" in migrate.stderr
    assert not files.provisioned.exists()

    # Placed on b (most RAM), confirmed interactively, dispatched, provisioned, reported.
    created = _run(
        ppn("vm", "create", "generic", "--ram", "1024", "--vcpus", "2", "--name", "web-1",
            "--wait", "20", "--json", "--control", control),
        input="yes\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    outcome = json.loads(created.stdout)
    assert outcome["node"] == "b" and outcome["state"] == "running"
    assert outcome["detail"] == "launched web-1 with 1024 MB"
    (launched,) = [json.loads(line) for line in files.provisioned.read_text().splitlines()]
    assert launched["name"] == "web-1" and launched["ram_mb"] == 1024 and launched["vcpus"] == 2
    assert launched["env"]["PPN_VM_REQUEST_ID"] == outcome["request_id"]

    # A Totebox naming its node goes there, even though b has more RAM.
    tote = _run(
        ppn("vm", "create", "totebox", "--ram", "512", "--node", "a", "--yes", "--wait", "20",
            "--control", control)
    )  # fmt: skip
    assert tote.returncode == 0, tote.stderr
    assert "on node a" in tote.stdout and "totebox-" in tote.stdout

    status = poll_status(
        _run, files.control, lambda s: all(n["vms"] for n in s["nodes"]), timeout=10
    )
    by_name = {n["name"]: n for n in status["nodes"]}
    assert [vm["name"] for vm in by_name["b"]["vms"]] == ["web-1"]
    assert by_name["b"]["ram_available_mb"] == 6000 - 1024  # the cap counts VMs launched here

    # SIGTERM ends every service cleanly; the controller removes its operator socket.
    for proc in processes:
        os.kill(proc.pid, signal.SIGTERM)
    assert [proc.wait(timeout=10) for proc in processes] == [0, 0, 0]
    assert not files.control.exists()
    for log in logs.values():
        log.close()
    assert "dispatched to b" in (tmp_path / "cloud.log").read_text()
