"""Join by code alone on a LAN (RFC-NOTES §5.12): namespaces on one bridge, mDNS only there.

- ``ppn join CODE`` with no address finds the sponsor by its announcement; the sponsor's hint
  names its LAN address, never 0.0.0.0; the joiner offers its underlay address as endpoint.
- An impostor announcing the same window number makes the joiner stop with "interference: get
  a new code" (exit 11), and nothing joins.
- ``ppn genesis --up`` and ``ppn join CODE --up`` with no other flags give a mesh that pings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from interop.join_discovery import isolated, lan, ppn, read_event, start
from interop.netns import Lab


def _answer(proc: object, text: str) -> None:
    stdin = proc.stdin  # type: ignore[attr-defined]
    stdin.write(text + "\n")
    stdin.flush()


@pytest.mark.netns
def test_join_by_code_alone_on_the_lan(lab: Lab, tmp_path: Path) -> None:
    (sp_host, sp_addr), (jo_host, jo_addr) = lan(lab, ["dsp", "djo"])
    deadline = time.monotonic() + 60
    sponsor = start(
        sp_host,
        ppn("genesis", "--state", str(tmp_path / "a"), "--name", "alpha", "--events", "json"),
    )
    code = read_event(sponsor.stdout, deadline)
    assert code["event"] == "code"
    assert code["addresses"] == [f"{sp_addr}:9205"]  # the LAN address, not 0.0.0.0
    assert code["announced"] is True
    joiner = start(
        jo_host,
        ppn(
            "join",
            code["code"],
            "--state",
            str(tmp_path / "b"),
            "--name",
            "beta",
            "--events",
            "json",
        ),
    )
    j_sas = read_event(joiner.stdout, deadline)
    s_sas = read_event(sponsor.stdout, deadline)
    assert j_sas["event"] == s_sas["event"] == "sas", (j_sas, s_sas)
    assert j_sas["sas"] == s_sas["sas"]
    _answer(sponsor, "yes")
    _answer(joiner, "yes")
    assert read_event(joiner.stdout, deadline)["event"] == "joined"
    assert read_event(sponsor.stdout, deadline)["event"] == "joined"
    assert joiner.wait(timeout=30) == 0 and sponsor.wait(timeout=30) == 0
    roster = json.loads((tmp_path / "a" / "mesh.json").read_text())["roster"]
    beta = next(m for m in roster if m["name"] == "beta")
    assert beta["endpoints"] == [f"{jo_addr}:51820"]  # offered, and the address it came from


@pytest.mark.netns
def test_impostor_announcing_the_same_window_only_burns_the_code(lab: Lab, tmp_path: Path) -> None:
    (sp_host, _), (jo_host, _), (ev_host, ev_addr) = lan(lab, ["isp", "ijo", "iev"])
    deadline = time.monotonic() + 60
    sponsor = start(
        sp_host,
        ppn("genesis", "--state", str(tmp_path / "a"), "--name", "alpha", "--events", "json"),
    )
    code = read_event(sponsor.stdout, deadline)
    evil = start(
        ev_host,
        [sys.executable, "-m", "interop.join_discovery", "impostor", str(code["window"]), ev_addr],
    )
    assert read_event(evil.stdout, deadline)["event"] == "announcing"
    time.sleep(2)  # both announcements are out (probing takes about a second)
    joiner = start(
        jo_host,
        ppn(
            "join",
            code["code"],
            "--state",
            str(tmp_path / "b"),
            "--name",
            "beta",
            "--events",
            "json",
        ),
    )
    event = read_event(joiner.stdout, deadline)
    if event["event"] == "sas":
        # It reached the real sponsor first: the second announcer is noticed by the time the
        # operator answers, and the joiner gives the code up instead of confirming.
        time.sleep(1.5)
        _answer(joiner, "yes")
        event = read_event(joiner.stdout, deadline)
    assert event["event"] == "failed", event
    assert event["status"] == 11
    assert "interference: get a new code" in event["message"]
    assert joiner.wait(timeout=30) == 11
    assert not (tmp_path / "b" / "mesh.json").exists()
    roster = json.loads((tmp_path / "a" / "mesh.json").read_text())["roster"]
    assert [m["name"] for m in roster] == ["alpha"]


@pytest.mark.netns
@pytest.mark.slow
def test_genesis_up_and_join_up_with_no_other_flags_make_a_mesh(lab: Lab, tmp_path: Path) -> None:
    (g_host, _), (j_host, _) = lan(lab, ["ugn", "ujo"])
    deadline = time.monotonic() + 90
    # Each node is a machine of its own: its host name (the default node name) and its own
    # /var/run/wireguard (both use the default interface ppn0).
    genesis = start(
        g_host,
        isolated(
            ppn("genesis", "--state", str(tmp_path / "g"), "--up", "--events", "json"), "laptop-a"
        ),
    )
    code = read_event(genesis.stdout, deadline)
    joiner = start(
        j_host,
        isolated(
            ppn("join", code["code"], "--state", str(tmp_path / "j"), "--up", "--events", "json"),
            "laptop-b",
        ),
    )
    j_sas, g_sas = read_event(joiner.stdout, deadline), read_event(genesis.stdout, deadline)
    assert j_sas.get("sas") == g_sas.get("sas") is not None, (j_sas, g_sas)
    _answer(genesis, "yes")
    _answer(joiner, "yes")
    assert read_event(joiner.stdout, deadline)["event"] == "joined"
    assert read_event(genesis.stdout, deadline)["event"] == "joined"
    ok = False
    while time.monotonic() < deadline and not ok:
        ok = j_host.ping("10.8.0.1", timeout=1) and g_host.ping("10.8.0.2", timeout=1)
    assert ok, "no ping across the mesh"
    assert genesis.poll() is None and joiner.poll() is None  # both are now the node agent
