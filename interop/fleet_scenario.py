"""Building blocks for multi-process fleet scenarios: key files, the member directory, a
provisioner script, the ``ppn`` command lines, and polling ``ppn fleet status --json``.

Used by the loopback and network-namespace tests; usable by hand too::

    python -m interop.fleet_scenario DIR   # writes keys, fleet.json and provision.py into DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FleetFiles",
    "NodePlan",
    "live_names",
    "poll_status",
    "ppn",
    "write_fleet_files",
    "write_provisioner",
]


def ppn(*args: str) -> list[str]:
    """The argv that runs the ``ppn`` CLI from this interpreter."""
    return [sys.executable, "-m", "ppn", *args]


@dataclass(frozen=True)
class NodePlan:
    name: str
    mesh_address: str
    controller: bool = False


@dataclass(frozen=True)
class FleetFiles:
    directory: Path  # fleet.json
    keys: dict[str, Path]  # node name -> identity key file
    provisioner: Path
    provisioned: Path  # where the provisioner records what it launched (one JSON per line)
    control: Path  # the controller's operator socket


def write_provisioner(path: Path, record: Path) -> None:
    """A stand-in for the platform's QEMU launcher: appends the spec and action it got, prints
    one line. An action fails (exit 1) while a file ``<record>.fail-<action>`` exists."""
    path.write_text(
        "import json, os, sys\n"
        "spec = json.load(sys.stdin)\n"
        "spec['env'] = {k: v for k, v in os.environ.items() if k.startswith('PPN_VM_')}\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps(spec) + '\\n')\n"
        f"if os.path.exists({str(record)!r} + '.fail-' + spec['action']):\n"
        "    print(spec['action'] + ' of ' + spec['name'] + ' failed on purpose', file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "if spec['action'] == 'create':\n"
        "    print('launched ' + spec['name'] + ' with ' + str(spec['ram_mb']) + ' MB')\n"
        "else:\n"
        "    print(spec['action'] + ' ' + spec['name'] + ' done')\n"
    )


def write_fleet_files(directory: Path, nodes: Sequence[NodePlan]) -> FleetFiles:
    """Identity keys via ``ppn fleet keygen``, the member directory, and the provisioner."""
    keys: dict[str, Path] = {}
    members: list[dict[str, Any]] = []
    for node in nodes:
        key_path = directory / f"{node.name}.key"
        out = subprocess.run(
            ppn("fleet", "keygen", str(key_path), "--json"),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        keys[node.name] = key_path
        members.append(
            {
                "name": node.name,
                "identity": json.loads(out)["identity"],
                "mesh_address": node.mesh_address,
                "roles": ["cloud"] if node.controller else [],
            }
        )
    fleet_json = directory / "fleet.json"
    fleet_json.write_text(json.dumps({"members": members}, indent=2))
    provisioner = directory / "provision.py"
    provisioned = directory / "provisioned.jsonl"
    write_provisioner(provisioner, provisioned)
    return FleetFiles(
        directory=fleet_json,
        keys=keys,
        provisioner=provisioner,
        provisioned=provisioned,
        control=directory / "fleet.sock",
    )


def poll_status(
    run: Callable[[list[str]], subprocess.CompletedProcess[str]],
    control: Path,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Run ``ppn fleet status --json`` until ``predicate`` holds; the last status otherwise."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while True:
        result = run(ppn("fleet", "status", "--json", "--control", str(control)))
        if result.returncode == 0:
            last = json.loads(result.stdout)
            if predicate(last):
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"status condition not met within {timeout} s; last: {last}")
        time.sleep(interval)


def live_names(status: dict[str, Any]) -> set[str]:
    return {n["name"] for n in status.get("nodes", [])}


if __name__ == "__main__":  # pragma: no cover - manual use
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    files = write_fleet_files(
        target,
        [
            NodePlan("cloud", "127.0.0.1", controller=True),
            NodePlan("a", "127.0.0.2"),
            NodePlan("b", "127.0.0.3"),
        ],
    )
    print(files)
