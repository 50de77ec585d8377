"""Day-two events for the mesh in namespaces (issue 18): a node that loses its disk, a
ceremony that is expected to be refused, a host that is gone for good.

Used by ``tests/ppn/test_mesh_rejoin_netns.py`` and ``tests/ppn/test_mesh_admin_netns.py`` on
top of :mod:`interop.mesh_platform` (ceremonies and agents as real ``ppn`` processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from interop.mesh_platform import PPN, Node, _env, _read_event
from interop.netns import Host, Lab


def lose_disk(node: Node) -> None:
    """The node dies with its disk: its agent is killed (SIGKILL, no goodbye), its WireGuard
    device goes (wireguard-go exits with it), and its state directory is wiped."""
    if node.agent is not None:
        node.agent.kill()
        node.agent.wait(timeout=10)
        node.agent = None
    node.host.run(["ip", "link", "del", node.interface], check=False)
    shutil.rmtree(node.state)


def lose_host(lab: Lab, host: Host, nodes: list[Node]) -> None:
    """The machine is gone for good: every process in its namespace (all started by this
    test: agents, wireguard-go) is killed by PID, then the namespace is deleted."""
    for node in nodes:
        if node.agent is not None:
            node.agent.kill()
            node.agent.wait(timeout=10)
            node.agent = None
    pids = subprocess.run(
        ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=True
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True
        ).stdout.split()
        if not left:
            break
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "del", host.netns], check=True, capture_output=True)
    lab.hosts.remove(host)


def refused_join(sponsor: Node, joiner: Node, *, listen: str, timeout: float = 60) -> int:
    """Run ``ppn invite`` on ``sponsor`` and ``ppn join`` on ``joiner`` (both operators would
    confirm) and return the joiner's exit status; the sponsor is expected to refuse (19)."""
    deadline = time.monotonic() + timeout
    sp = sponsor.host.popen(
        [*PPN, "invite", "--state", str(sponsor.state), "--listen", listen, "--events", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    assert sp.stdout is not None and sp.stdin is not None
    code = _read_event(sp.stdout, "code", deadline)
    args = ["join", code["code"], "--sponsor", code["address"], "--state", str(joiner.state)]
    jp = joiner.host.popen(
        [*PPN, *args, "--name", joiner.name, "--events", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    for proc in (sp, jp):
        assert proc.stdin is not None
        proc.stdin.write("yes\n")
        proc.stdin.close()
    status = jp.wait(timeout=max(1, deadline - time.monotonic()))
    sp.wait(timeout=max(1, deadline - time.monotonic()))
    return status
