"""Reverse dial for a sponsor behind NAT (RFC-NOTES §5.13).

The sponsor sits behind a router that masquerades it (nftables); the joiner, on the public
side, cannot reach the sponsor at all. ``ppn join CODE --listen`` waits, ``ppn genesis --to``
dials out through the NAT, the same ceremony runs, then ``ppn up`` on both: the NATed sponsor
keeps the mapping open with keepalives and pings cross the NAT both ways.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from interop.join_discovery import isolated, natted_pair, ppn, read_event, start
from interop.netns import Lab


def _answer(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


@pytest.mark.netns
@pytest.mark.slow
def test_sponsor_behind_nat_dials_the_joiner_then_the_mesh_crosses_the_nat(
    lab: Lab, tmp_path: Path
) -> None:
    sponsor_host, joiner_host, sponsor_private, joiner_public = natted_pair(lab)
    assert not joiner_host.ping(sponsor_private, timeout=1)  # the NAT is really in the way
    deadline = time.monotonic() + 90
    a, b = tmp_path / "a", tmp_path / "b"
    sponsor = start(
        sponsor_host,
        ppn(
            "genesis",
            "--state",
            str(a),
            "--name",
            "alpha",
            "--to",
            f"{joiner_public}:9205",
            "--events",
            "json",
        ),
    )
    code = read_event(sponsor.stdout, deadline)
    assert code["address"] == f"{joiner_public}:9205"
    # The sponsor is already dialling (and retrying); the joiner starts listening after it.
    time.sleep(1.5)
    joiner = start(
        joiner_host,
        ppn(
            "join",
            code["code"],
            "--listen",
            f"{joiner_public}:9205",
            "--state",
            str(b),
            "--name",
            "beta",
            "--events",
            "json",
        ),
    )
    j_sas, s_sas = read_event(joiner.stdout, deadline), read_event(sponsor.stdout, deadline)
    assert j_sas.get("sas") == s_sas.get("sas") is not None, (j_sas, s_sas)
    assert j_sas["peer"]["name"] == "alpha" and s_sas["peer"]["name"] == "beta"  # same roles
    _answer(sponsor, "yes")
    _answer(joiner, "yes")
    assert read_event(joiner.stdout, deadline)["event"] == "joined"
    assert read_event(sponsor.stdout, deadline)["event"] == "joined"
    assert (sponsor.wait(timeout=30), joiner.wait(timeout=30)) == (0, 0)
    roster = json.loads((a / "mesh.json").read_text())["roster"]
    assert [m["name"] for m in roster] == ["alpha", "beta"]

    agents = {
        "alpha": start(sponsor_host, isolated(ppn("up", "--state", str(a)), "alpha")),
        "beta": start(joiner_host, isolated(ppn("up", "--state", str(b)), "beta")),
    }
    ok = False
    while time.monotonic() < deadline and not ok:
        ok = sponsor_host.ping("10.8.0.2", timeout=1) and joiner_host.ping("10.8.0.1", timeout=1)
    assert ok, "no ping across the NAT"
    # The NATed side sends keepalives toward its peer (the mapping would expire otherwise).
    keepalive = sponsor_host.run(
        [
            "nsenter",
            "--target",
            str(agents["alpha"].pid),
            "--mount",
            "wg",
            "show",
            "ppn0",
            "persistent-keepalive",
        ]
    ).stdout.split()
    assert keepalive[-1] == "25", keepalive
    # Both ways, again, after the first handshake: the joiner answers through the mapping.
    assert joiner_host.ping("10.8.0.1", count=3, timeout=2)
    assert sponsor_host.ping("10.8.0.2", count=3, timeout=2)
