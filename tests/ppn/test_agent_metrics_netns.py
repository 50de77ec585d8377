"""The node agent's metrics and JSON log on real wireguard-go in two namespaces (issue 17;
RFC-NOTES §1.5, §3.1): genesis runs ``ppn --log-format json up --metrics 10.8.0.1`` (its mesh
address, the default port), and the joiner scrapes it through the WireGuard tunnel and parses
the answer with ``prometheus_client``'s parser; the values move as the agent works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from interop.mesh_platform import PPN, Node, _env, ceremony, quick_ping, start_agent, wait_for
from interop.netns import Lab
from ppn.ports import AGENT_METRICS_PORT

_SCRAPE = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end='')\n"
)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(node: Node, address: str) -> Samples:
    url = f"http://{address}:{AGENT_METRICS_PORT}/metrics"
    text = node.host.run([sys.executable, "-c", _SCRAPE, url], env=_env()).stdout
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.mark.netns
def test_agent_metrics_over_the_mesh_and_json_log(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.host("gen"), lab.host("join")
    lab.link(a, "10.78.1.1/24", b, "10.78.1.2/24")
    g = Node(a, "genesis", tmp_path / "genesis", lab.unique_ifname("ppn"))
    j = Node(b, "joiner", tmp_path / "joiner", lab.unique_ifname("ppn"))
    ceremony(
        g,
        j,
        listen="10.78.1.1:0",
        first=True,
        sponsor_endpoint="10.78.1.1:51820",
        joiner_endpoints=["10.78.1.2:51820"],
    )
    log_path = tmp_path / "genesis.log"
    up_args = ["up", "--state", str(g.state), "--interface", g.interface, "--json"]
    with log_path.open("w") as log:
        g.agent = a.popen(
            [*PPN, "--log-format", "json", *up_args, "--metrics", "10.8.0.1"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=_env(),
        )
    assert g.agent.stdout is not None
    up = g.agent.stdout.readline()
    assert json.loads(up)["event"] == "up", log_path.read_text()
    start_agent(j)
    wait_for(lambda: quick_ping(b, "10.8.0.1"), 60, "the joiner to reach genesis")

    # Scraped from the other member, over the tunnel, on the mesh address.
    def handshake_seen() -> bool:
        age = _get(_scrape(j, "10.8.0.1"), "ppn_agent_peer_handshake_age_seconds", peer="joiner")
        return age is not None

    wait_for(handshake_seen, 60, "a handshake age for the joiner")
    seen = _scrape(j, "10.8.0.1")
    age = _get(seen, "ppn_agent_peer_handshake_age_seconds", peer="joiner")
    assert age is not None and 0 <= age < 180
    assert (_get(seen, "ppn_agent_peers") or 0) >= 1
    assert (_get(seen, "ppn_agent_roster_records") or 0) >= 2
    assert (_get(seen, "ppn_agent_roster_generation") or 0) >= 1
    assert (_get(seen, "ppn_agent_reconcile_operations_total") or 0) >= 1
    assert (_get(seen, "ppn_listener_max_connections", listener="control") or 0) > 0
    assert _get(seen, "ppn_listener_connections", listener="metrics") == 1  # this scrape
    passes = _get(seen, "ppn_agent_reconciles_total", result="ok") or 0
    assert _get(seen, "ppn_agent_reconcile_seconds_count") == passes + (
        _get(seen, "ppn_agent_reconciles_total", result="error") or 0
    )
    assert (_get(seen, "ppn_agent_reconcile_seconds_sum") or 0) > 0 or passes == 0

    # The values move: another reconcile pass (every 5 s) is counted.
    wait_for(
        lambda: (
            (_get(_scrape(j, "10.8.0.1"), "ppn_agent_reconciles_total", result="ok") or 0) > passes
        ),
        30,
        "another reconcile pass",
    )

    g.agent.terminate()
    assert g.agent.wait(timeout=15) == 0
    g.agent = None
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert records and all(r["level"] and r["event"] for r in records)
    events = {r["event"] for r in records}
    assert {"progress", "metrics"} <= events, events
    assert not any("traceback" in r for r in records)
