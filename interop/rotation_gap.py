"""How long pings fail while a member rotates its WireGuard key (issue 18), on real wireguard-go
in three network namespaces, with the three node agents running and the CLI only.

Shape: genesis, bravo and charlie, each pair on its own underlay link (a full mesh, no hub).
Three ping streams run at 50 ms intervals through the mesh: genesis → bravo, charlie → bravo
and bravo → genesis, while ``ppn rotate wireguard`` runs on bravo. A stream's *gap* is its
longest run of consecutive unanswered echo requests times the interval (a lost request and a
lost reply count alike); a rotation's gap is the largest of its three streams'. Run directly
(root) for a report::

    .venv/bin/python -m interop.rotation_gap [ROTATIONS]

``benchmarks/bench_rotation.py`` prints the same, and ``tests/ppn/test_mesh_rotate_netns.py``
holds the gap under one handshake retry.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from interop.mesh_platform import Node, ceremony, quick_ping, start_agent, stop_agent, wait_for
from interop.netns import Host, Lab

PING_INTERVAL = 0.05
SETTLE = 1.5  # seconds of pings before the rotation and after it returns
_SEQ = re.compile(r"icmp_seq=(\d+)")
_RTT = re.compile(r"time=([0-9.]+) ms")


@dataclass(frozen=True, kw_only=True)
class Rotation:
    """One rotation's outcome: the gap of each ping stream, in seconds."""

    gaps: dict[str, float]
    worst_rtt: float  # the slowest answered echo of any stream, in seconds (a request that
    # waited in wireguard-go's queue for a handshake is late, not lost)
    seconds: float  # how long 'ppn rotate wireguard' took (signing, handover, promotion)
    old_key: str
    new_key: str

    @property
    def gap(self) -> float:
        return max(self.gaps.values())


def build_mesh(lab: Lab, workdir: Path) -> dict[str, Node]:
    """Three members, each pair linked directly; every agent running, every pair pinging."""
    gh, bh, ch = lab.host("gen"), lab.host("bravo"), lab.host("charlie")
    lab.link(gh, "10.77.8.1/24", bh, "10.77.8.2/24")
    lab.link(gh, "10.77.9.1/24", ch, "10.77.9.3/24")
    lab.link(bh, "10.77.10.2/24", ch, "10.77.10.3/24")
    nodes = {
        "genesis": Node(gh, "genesis", workdir / "genesis", lab.unique_ifname("ppn")),
        "bravo": Node(bh, "bravo", workdir / "bravo", lab.unique_ifname("ppn")),
        "charlie": Node(ch, "charlie", workdir / "charlie", lab.unique_ifname("ppn")),
    }
    g, b, c = nodes["genesis"], nodes["bravo"], nodes["charlie"]
    ceremony(
        g,
        b,
        listen="10.77.8.1:0",
        first=True,
        sponsor_endpoint="10.77.8.1:51820",
        joiner_endpoints=["10.77.8.2:51820", "10.77.10.2:51820"],
    )
    start_agent(g, "--endpoint", "10.77.8.1:51820", "--endpoint", "10.77.9.1:51820")
    ceremony(
        g,
        c,
        listen="10.77.9.1:0",
        first=False,
        joiner_endpoints=["10.77.9.3:51820", "10.77.10.3:51820"],
    )
    start_agent(b)
    start_agent(c)
    for src, dst in (
        ("genesis", "bravo"),
        ("charlie", "bravo"),
        ("bravo", "genesis"),
        ("charlie", "genesis"),
    ):
        wait_for(
            lambda src=src, dst=dst: quick_ping(nodes[src].host, address(nodes[dst])),  # type: ignore[misc]
            60,
            f"{src} to reach {dst}",
        )
    return nodes


def address(node: Node) -> str:
    """The node's mesh address, from its own signed roster (genesis .1, then in join order)."""
    return str(node.ppn("resolve", node.name, "--state", str(node.state)).stdout.strip())


def _start_ping(host: Host, target: str) -> subprocess.Popen[str]:
    return host.popen(
        ["ping", "-n", "-i", str(PING_INTERVAL), target],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def longest_gap(output: str, interval: float = PING_INTERVAL) -> float:
    """The longest run of unanswered echo requests between the first and last answer, times
    the interval (0.0 when every request in between was answered)."""
    answered = sorted({int(m.group(1)) for m in _SEQ.finditer(output)})
    if len(answered) < 2:
        raise ValueError("too few echo replies to measure a gap")
    return max(b - a - 1 for a, b in itertools.pairwise(answered)) * interval


def rotate_once(nodes: dict[str, Node], rotating: str = "bravo") -> Rotation:
    """Rotate ``rotating``'s WireGuard key with three ping streams running; measure the gaps."""
    node = nodes[rotating]
    other = next(n for n in nodes if n != rotating)
    streams = {
        f"{name}->{rotating}": _start_ping(nodes[name].host, address(node))
        for name in nodes
        if name != rotating
    }
    streams[f"{rotating}->{other}"] = _start_ping(node.host, address(nodes[other]))
    time.sleep(SETTLE)
    start = time.monotonic()
    out = node.ppn("rotate", "wireguard", "--state", str(node.state), "--json", timeout=60)
    seconds = time.monotonic() - start
    time.sleep(SETTLE)
    gaps: dict[str, float] = {}
    worst = 0.0
    for name, proc in streams.items():
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=10)
        gaps[name] = longest_gap(output)
        worst = max([worst, *(float(m.group(1)) / 1000 for m in _RTT.finditer(output))])
    result = json.loads(out.stdout)
    return Rotation(
        gaps=gaps,
        worst_rtt=worst,
        seconds=seconds,
        old_key=result["old_key"],
        new_key=result["new_key"],
    )


def peers(node: Node) -> set[str]:
    return set(node.host.run(["wg", "show", node.interface, "peers"]).stdout.split())


def measure(rotations: int = 5) -> list[Rotation]:
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        nodes = build_mesh(lab, Path(tmp))
        try:
            return [rotate_once(nodes) for _ in range(rotations)]
        finally:
            for node in nodes.values():
                stop_agent(node)


def report(results: list[Rotation]) -> str:
    gaps = [r.gap for r in results]
    lines = [
        f"rotation {i + 1}: gap {r.gap * 1000:.0f} ms "
        + " ".join(f"{k} {v * 1000:.0f}" for k, v in sorted(r.gaps.items()))
        + f"; slowest echo {r.worst_rtt * 1000:.0f} ms"
        + f"; 'ppn rotate wireguard' took {r.seconds:.2f} s"
        for i, r in enumerate(results)
    ]
    lines.append(
        f"gap over {len(gaps)} rotations: median {statistics.median(gaps) * 1000:.0f} ms, "
        f"max {max(gaps) * 1000:.0f} ms; slowest echo: median "
        f"{statistics.median(r.worst_rtt for r in results) * 1000:.0f} ms, max "
        f"{max(r.worst_rtt for r in results) * 1000:.0f} ms (pings every {PING_INTERVAL * 1000:.0f} ms; one "
        "WireGuard handshake retry is 5000 ms)"
    )
    return "\n".join(lines)


def main() -> None:
    rotations = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(report(measure(rotations)))


if __name__ == "__main__":
    main()
