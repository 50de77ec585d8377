"""A mixed mesh: the relay hub and genesis on the kernel module, the cloud node on wireguard-go.

Built as interop/mesh_platform.py builds it, with ``ppn genesis``, ``ppn invite``, ``ppn join``
and ``ppn up`` processes alone; genesis and the cloud node share no underlay and talk through
the hub. ``ppn up`` picks the kernel where it creates the interface (the module is there); the
cloud node's wireguard-go is started first, so its UAPI socket makes ``ppn up`` pick userspace
(RFC-NOTES §6.6 rule 1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from interop.mesh_platform import (
    NET1,
    NET2,
    build,
    ceremony,
    quick_ping,
    start_agent,
    stop_agent,
    wait_for,
)
from interop.netns import Host, Lab
from ppn.wg import WireGuardGo

pytestmark = pytest.mark.kernel

# Each ceremony process starts Python and signs under software emulation, on a shared box.
CEREMONY_TIMEOUT = 300


def _link_kind(host: Host, ifname: str) -> str:
    (link,) = json.loads(host.run(["ip", "-d", "-j", "link", "show", ifname]).stdout)
    return str(link.get("linkinfo", {}).get("info_kind", ""))


def test_mixed_mesh_kernel_hub_kernel_node_and_wireguard_go_node(lab: Lab, tmp_path: Path) -> None:
    nodes = build(lab, tmp_path)
    g, r, c = nodes["genesis"], nodes["relay"], nodes["cloud"]
    ceremony(
        g,
        r,
        listen=f"{NET1}.1:0",
        first=True,
        sponsor_endpoint=f"{NET1}.1:51820",
        joiner_endpoints=[f"{NET1}.2:51820", f"{NET2}.2:51820"],
        timeout=CEREMONY_TIMEOUT,
    )
    start_agent(g)
    start_agent(r, "--role", "relay")
    ceremony(
        r,
        c,
        listen=f"{NET2}.2:0",
        first=False,
        joiner_endpoints=[f"{NET2}.3:51820"],
        timeout=CEREMONY_TIMEOUT,
    )
    daemon = WireGuardGo(c.interface, netns=c.host.netns)
    daemon.start()
    assert daemon.process is not None
    lab.processes.append(daemon.process)  # the lab ends it by PID
    start_agent(c, "--role", "cloud")

    assert g.up_info["backend"] == "kernel" and r.up_info["backend"] == "kernel"
    assert c.up_info["backend"] == "userspace"
    assert _link_kind(g.host, g.interface) == "wireguard"
    assert _link_kind(r.host, r.interface) == "wireguard"
    assert _link_kind(c.host, c.interface) == "tun"

    mesh = {"genesis": "10.8.0.1", "relay": "10.8.0.2", "cloud": "10.8.0.3"}
    assert not g.host.ping(f"{NET2}.3", timeout=1)  # the underlay really is split
    for src in nodes.values():
        for name, address in mesh.items():
            wait_for(
                lambda src=src, address=address: quick_ping(src.host, address),
                120,
                f"{src.name} to reach {name} ({address})",
            )
    # Genesis reaches the cloud node through the kernel hub.
    status = json.loads(  # under emulation a ppn process takes seconds to start
        g.ppn("status", "--state", str(g.state), "--json", timeout=180).stdout
    )
    paths = {m["name"]: m["path"] for m in status["members"]}
    assert paths == {"genesis": "self", "relay": "direct", "cloud": "via-hub"}

    # Restarting an agent on a kernel interface that is already right: zero operations.
    for node in (g, r):
        assert stop_agent(node) == 0
        start_agent(node, *(("--role", "relay") if node is r else ()))
        assert node.up_info["backend"] == "kernel"
        info = json.loads((node.state / "agent.json").read_text())
        assert info["backend"] == "kernel" and info["wireguard_operations"] == 0, info
    time.sleep(1)
    assert g.host.ping("10.8.0.3", timeout=3) and c.host.ping("10.8.0.1", timeout=3)
    for node in nodes.values():
        assert stop_agent(node) == 0
