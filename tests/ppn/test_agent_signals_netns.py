"""How ``ppn up`` ends, on real wireguard-go in two namespaces (issues 16/17; RFC-NOTES §1.4,
§1.5, §7.11): Ctrl-C (SIGINT) is an interruption, exit 130 and one JSON record with event
``interrupted`` under ``--log-format json`` (no ``stopping`` line); SIGTERM is the clean stop,
exit 0 and one ``stopping on SIGTERM`` line. In both cases the agent has really been serving
(the joiner reaches it through the tunnel) and the tunnel stays up after it exits."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from interop.mesh_platform import PPN, Node, _env, ceremony, quick_ping, start_agent, wait_for
from interop.netns import Lab


def _run_genesis_agent(g: Node, log_path: Path) -> subprocess.Popen[str]:
    up = ["up", "--state", str(g.state), "--interface", g.interface, "--json"]
    with log_path.open("w") as log:
        agent = g.host.popen(
            [*PPN, "--log-format", "json", *up],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=_env(),
        )
    assert agent.stdout is not None
    assert json.loads(agent.stdout.readline())["event"] == "up", log_path.read_text()
    return agent


def _records(log_path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in log_path.read_text().splitlines()]  # every line JSON
    assert records and all(isinstance(r, dict) and r["event"] for r in records), records
    return records


@pytest.mark.netns
def test_ppn_up_exits_130_on_sigint_and_0_on_sigterm_and_the_tunnel_stays_up(
    lab: Lab, tmp_path: Path
) -> None:
    a, b = lab.host("gen"), lab.host("join")
    lab.link(a, "10.79.1.1/24", b, "10.79.1.2/24")
    g = Node(a, "genesis", tmp_path / "genesis", lab.unique_ifname("ppn"))
    j = Node(b, "joiner", tmp_path / "joiner", lab.unique_ifname("ppn"))
    ceremony(
        g,
        j,
        listen="10.79.1.1:0",
        first=True,
        sponsor_endpoint="10.79.1.1:51820",
        joiner_endpoints=["10.79.1.2:51820"],
    )
    start_agent(j)
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        log_path = tmp_path / f"genesis-{signum.name}.log"
        agent = _run_genesis_agent(g, log_path)
        try:
            wait_for(lambda: quick_ping(b, "10.8.0.1"), 60, "the joiner to reach genesis")
            agent.send_signal(signum)
            assert agent.wait(timeout=60) == status, log_path.read_text()
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        records = _records(log_path)
        stopping = [r for r in records if r["message"].startswith("stopping on")]
        if signum is signal.SIGINT:
            assert records[-1]["event"] == "interrupted" and records[-1]["status"] == 130
            assert stopping == [], records
        else:
            assert [r["message"] for r in stopping] == ["stopping on SIGTERM; the tunnel stays up"]
            assert all(r["event"] != "interrupted" for r in records)
        # The agent is gone; its device is not: the joiner still reaches genesis's mesh address.
        wait_for(lambda: quick_ping(b, "10.8.0.1"), 20, f"genesis reachable after {signum.name}")
        assert (g.state / "agent.json").exists()
    assert j.agent is not None
    j.agent.terminate()
    assert j.agent.wait(timeout=60) == 0
    j.agent = None
