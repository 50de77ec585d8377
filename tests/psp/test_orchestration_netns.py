"""PSP aggregation over the real PPN mesh: three namespaces joined with ``ppn genesis``/``ppn
join`` and running ``ppn up`` on wireguard-go (genesis and cloud reach each other only through
the relay hub). Vaults serve on the genesis and relay nodes' mesh addresses; the cloud node runs
``ppn orchestration serve`` and answers ``ppn query --via`` through the WireGuard tunnels."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interop.mesh_platform import Node, form_mesh
from interop.netns import Lab
from ppn.ports import AGGREGATOR_PORT, VAULT_PORT

from ._orchestration_support import HOLDER, cap_for, make_vault

PPN = [sys.executable, "-m", "ppn"]


def _serve(node: Node, argv: list[str]) -> str:
    proc = node.host.popen([*PPN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+:\d+)", line)
    assert match, (line, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
    return match.group(1)


@pytest.mark.netns
def test_orchestration_queries_vaults_on_other_nodes_through_the_mesh(
    lab: Lab, tmp_path: Path
) -> None:
    nodes, _ = form_mesh(lab, tmp_path / "mesh")
    mesh_address = {"genesis": "10.8.0.1", "relay": "10.8.0.2", "cloud": "10.8.0.3"}
    sizes = {"genesis": 40, "relay": 25}
    lines = []
    for i, (name, n) in enumerate(sizes.items()):
        vault = make_vault(
            tmp_path / name, 500 + i, [{"name": f"{name}-{j}", "age": j} for j in range(n)]
        )
        (tmp_path / f"{name}.cap").write_text(cap_for(vault).to_text())
        vault.close()
        addr = _serve(
            nodes[name],
            [
                "vault",
                "serve",
                "--store",
                str(tmp_path / name),
                "--listen",
                f"{mesh_address[name]}:{VAULT_PORT}",
            ],
        )
        lines.append(f"{base64.b64encode(vault.vault_id).decode()}@{addr} {tmp_path / name}.cap\n")
    (tmp_path / "vaults.txt").write_text("".join(lines))
    (tmp_path / "holder.key").write_text(base64.b64encode(HOLDER.seed).decode() + "\n")
    cloud = nodes["cloud"]
    listen = f"{mesh_address['cloud']}:{AGGREGATOR_PORT}"
    # The holder's vault list doubles as the aggregator's allow-list (its CAP column ignored).
    via = _serve(
        cloud,
        ["orchestration", "serve", "--listen", listen, "--vaults", str(tmp_path / "vaults.txt")],
    )

    def query(*extra: str) -> tuple[int, list[dict[str, Any]]]:
        result = cloud.host.run(
            [
                *PPN,
                *("query", "--via", via, "--vaults", str(tmp_path / "vaults.txt")),
                *("--key", str(tmp_path / "holder.key"), "--collection", "people", "--json"),
                *extra,
            ],
            check=False,
            timeout=60,
        )
        return result.returncode, [json.loads(x) for x in result.stdout.splitlines()]

    status, out = query("--count")
    assert status == 0, out
    assert out[0] == {"count": sum(sizes.values())}
    assert [x["vault_status"]["status"] for x in out if "vault_status" in x] == ["ok", "ok"]
    status, out = query("--order=-age", "--limit", "5", "--select", "name")
    assert status == 0, out
    rows = [x for x in out if "name" in x]
    assert [r["age"] for r in rows] == [39, 38, 37, 36, 35]  # genesis's oldest, across the hub
    assert out[-1]["summary"]["cursor"]
