"""Sponsor and joiner in two network namespaces joined by a veth pair: real TCP between them,
then the joiner's and sponsor's wg-quick files applied to wireguard-go and a ping through the
mesh address the ceremony assigned."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from interop.ceremony import bring_up_wireguard, run_join
from interop.netns import Host, Lab


def _launcher(host: Host):  # type: ignore[no-untyped-def]
    def launch(argv: Sequence[str]) -> subprocess.Popen[str]:
        return host.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    return launch


@pytest.mark.netns
def test_join_across_namespaces_then_wireguard(lab: Lab, tmp_path: Path) -> None:
    sponsor, joiner = lab.host("gsp"), lab.host("gjo")
    lab.link(sponsor, "192.168.91.1/24", joiner, "192.168.91.2/24")
    result = run_join(
        sponsor_state=tmp_path / "alpha",
        joiner_state=tmp_path / "beta",
        listen="192.168.91.1:9205",
        sponsor_endpoint="192.168.91.1:51820",
        joiner_endpoint="192.168.91.2:51820",
        sponsor_launch=_launcher(sponsor),
        joiner_launch=_launcher(joiner),
    )
    assert result.code["address"] == "192.168.91.1:9205"
    assert result.sponsor_sas == result.joiner_sas
    assert (result.sponsor_status, result.joiner_status) == (0, 0)
    assert result.joiner_final["address"] == "10.8.0.2"
    roster = json.loads((tmp_path / "alpha" / "mesh.json").read_text())["roster"]
    assert [m["endpoints"] for m in roster] == [["192.168.91.1:51820"], ["192.168.91.2:51820"]]

    # Apply what the ceremony wrote: the two nodes reach each other over WireGuard.
    for host, state in ((sponsor, tmp_path / "alpha"), (joiner, tmp_path / "beta")):
        bring_up_wireguard(host.run, _launcher(host), state, lab.unique_ifname("gw"))
    assert joiner.ping("10.8.0.1", count=3, timeout=2)
    assert sponsor.ping("10.8.0.2", timeout=2)
