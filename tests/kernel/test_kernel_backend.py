"""The kernel backend against the real WireGuard module (RFC-NOTES §6.4-6.6).

Each test makes its own namespaces and kernel WireGuard links; ``wg`` (wireguard-tools, which
speaks to the same module) is the reference the results are compared with.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop.netns import Lab
from ppn._keys import WireGuardKeyPair, encode_key
from ppn.wg import (
    DesiredStateError,
    InterfaceConfig,
    PeerConfig,
    Reconciler,
    VerifyError,
    configure_interface,
    emit_config,
    parse_network,
    reconcile,
    select_backend,
)
from tests._wg_spies import decoded_keys, indexed_messages

from ._support import KernelNode, cli_env

pytestmark = pytest.mark.kernel


def test_backend_selection_picks_the_kernel(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("sel")
    node = KernelNode(lab, host, "10.8.0.1/24")
    choice = select_backend(node.ifname, netns=host.netns)
    assert choice.kind == "kernel" and choice.running, choice.reason
    # An absent interface on a kernel that has the module: the kernel backend, to be created.
    absent = select_backend("nosuchwg9", netns=host.netns)
    assert absent.kind == "kernel" and not absent.running, absent.reason
    conf = tmp_path / "a.conf"
    conf.write_text(emit_config(node.config([])))
    report = json.loads(
        node.cli("sync", node.ifname, str(conf), "--json", env=cli_env(tmp_path)).stdout
    )
    assert report["backend"] == "kernel" and report["verified"] and report["changed"]
    assert node.dump()[0][1] == encode_key(node.keys.private)  # what wg reads from the module


def test_two_namespaces_minimal_diff_roam_kept_and_show_matches_wg_dump(
    lab: Lab, tmp_path: Path
) -> None:
    hub, hb, hc = lab.host("hub"), lab.host("b"), lab.host("c")
    lab.link(hub, "192.168.77.1/24", hb, "192.168.77.2/24")
    lab.link(hub, "192.168.78.1/24", hc, "192.168.78.2/24")
    hub.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    r = KernelNode(lab, hub, "10.8.0.1/24")
    b = KernelNode(lab, hb, "10.8.0.2/24")
    c = KernelNode(lab, hc, "10.8.0.3/24")
    psk = os.urandom(32)
    hub_peers = [
        b.peer_entry("192.168.77.2:51820", "10.8.0.2/32"),
        c.peer_entry("192.168.78.2:51820", "10.8.0.3/32", "fd08::3/128"),
    ]
    conf = tmp_path / "hub.conf"
    conf.write_text(emit_config(r.config(hub_peers)))
    env = cli_env(tmp_path)
    first = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert first["changed"] and first["verified"] and first["backend"] == "kernel"
    configure_interface(r.ifname, addresses=[r.mesh_address], netns=hub.netns)
    hub_entry_b = r.peer_entry("192.168.77.1:51820", "10.8.0.0/24")
    b.up([hub_entry_b])
    c.up([r.peer_entry("192.168.78.1:51820", "10.8.0.0/24")])
    assert hb.ping(c.mesh_ip, count=2, timeout=3)  # b -> hub -> c: two kernel tunnels

    # Guarantees 1 and 2: the same config again is zero operations, the session untouched.
    before = r.backend.read().peers[b.keys.public]
    assert before.last_handshake is not None and before.rx_bytes > 0
    again = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert again["operations"] == [] and again["changed"] is False
    after = r.backend.read().peers[b.keys.public]
    assert after.last_handshake == before.last_handshake and after.rx_bytes >= before.rx_bytes

    # Roam: b's source port changes; the kernel moves the hub's endpoint for b on the next
    # authenticated packet; a sync with the old desired endpoint keeps the live one.
    reconcile(b.backend, b.config([hub_entry_b], port=40001), now=time.time())
    assert hb.ping(r.mesh_ip, count=2, timeout=3)
    roamed = r.backend.read().peers[b.keys.public].endpoint
    assert str(roamed) == "192.168.77.2:40001"
    kept = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert kept["operations"] == [] and kept["kept_endpoints"] == [b.keys.public_b64]
    assert r.backend.read().peers[b.keys.public].endpoint == roamed

    # Update-only: a changed endpoint and a new preshared key touch that peer's fields only.
    hub_peers[0] = b.peer_entry("192.168.77.2:40001", "10.8.0.2/32")
    hub_peers[1] = PeerConfig(
        public_key=c.keys.public,
        preshared_key=psk,
        endpoint=hub_peers[1].endpoint,
        allowed_ips=hub_peers[1].allowed_ips,
    )
    conf.write_text(emit_config(r.config(hub_peers)))
    changed = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert [op["op"] for op in changed["operations"]] == ["update_peer"]
    assert changed["operations"][0]["public_key"] == c.keys.public_b64 and changed["verified"]
    dump = {row[1]: row for row in r.dump()[1:]}
    assert dump[c.keys.public_b64][2] == base64.b64encode(psk).decode()
    assert dump[b.keys.public_b64][3] == "192.168.77.2:40001"
    assert hb.ping(c.mesh_ip, count=1, timeout=3)

    # `ppn wg show --json` (all interfaces) against `wg show all dump`, field by field.
    shown = json.loads(
        # a Python process: minutes, not seconds, in the guest when the build box is loaded
        hub.run([sys.executable, "-m", "ppn", "wg", "show", "--json"], env=env, timeout=300).stdout
    )
    raw = hub.run(["wg", "show", "all", "dump"]).stdout.splitlines()
    ifaces = {row[0]: row for row in (line.split("\t") for line in raw) if len(row) == 5}
    peers = [line.split("\t") for line in raw if len(line.split("\t")) == 9]
    assert sorted(i["name"] for i in shown["interfaces"]) == sorted(ifaces)
    for iface in shown["interfaces"]:
        _, _, pub, port, fwmark = ifaces[iface["name"]]
        assert iface["backend"] == "kernel"
        assert (iface["public_key"], iface["listen_port"]) == (pub, int(port))
        assert iface["fwmark"] == (0 if fwmark == "off" else int(fwmark))
        mine = {p[1]: p for p in peers if p[0] == iface["name"]}
        assert sorted(p["public_key"] for p in iface["peers"]) == sorted(mine)
        for p in iface["peers"]:
            _, _, p_psk, ep, allowed, hs, rx, tx, ka = mine[p["public_key"]]
            assert p["endpoint"] == (None if ep == "(none)" else ep)
            assert p["allowed_ips"] == ([] if allowed == "(none)" else allowed.split(","))
            # the module keeps nanoseconds (ppn shows them); wg prints whole seconds
            assert int(p["latest_handshake"] or 0) == int(hs)
            # counters move while pings run: never below what wg printed just after
            assert p["rx_bytes"] <= int(rx) and p["tx_bytes"] <= int(tx)
            assert p["persistent_keepalive"] == (0 if ka == "off" else int(ka))
            assert p["preshared_key"] == (p_psk != "(none)")


def test_only_owned_duplicates_refused_before_any_write_and_verification(
    lab: Lab, tmp_path: Path
) -> None:
    host = lab.host("own")
    a = KernelNode(lab, host, "10.8.0.1/24")
    env = cli_env(tmp_path)
    p1, p2 = WireGuardKeyPair.generate(), WireGuardKeyPair.generate()
    conf = tmp_path / "dup.conf"
    head = f"[Interface]\nPrivateKey = {encode_key(a.keys.private)}\nListenPort = 51820\n"
    conf.write_text(
        head + f"[Peer]\nPublicKey = {p1.public_b64}\nAllowedIPs = 10.9.0.0/16\n"
        f"[Peer]\nPublicKey = {p2.public_b64}\nAllowedIPs = 10.9.0.0/16\n"
    )
    refused = a.cli("sync", a.ifname, str(conf), env=env, check=False)
    assert refused.returncode == 22 and "claimed by two peers" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert a.dump()[0][1] == "(none)" and len(a.dump()) == 1  # not even the private key

    other = WireGuardKeyPair.generate()  # a peer another tool put there
    host.run(["wg", "set", a.ifname, "peer", other.public_b64, "allowed-ips", "10.99.0.0/16"])
    conf.write_text(head + f"[Peer]\nPublicKey = {p1.public_b64}\nAllowedIPs = 10.9.0.0/16\n")
    report = json.loads(
        a.cli("sync", a.ifname, str(conf), "--only-owned", "--json", env=env).stdout
    )
    assert report["foreign_peers"] == [other.public_b64] and report["verified"]
    assert {row[1] for row in a.dump()[1:]} == {other.public_b64, p1.public_b64}
    # A desired prefix that a foreign peer holds: refused, nothing written (not even the
    # removal of p1, owned since the last sync and no longer desired).
    conf.write_text(head + f"[Peer]\nPublicKey = {p2.public_b64}\nAllowedIPs = 10.99.0.0/16\n")
    clash = a.cli("sync", a.ifname, str(conf), "--only-owned", env=env, check=False)
    assert clash.returncode == 22, clash.stderr
    assert {row[1] for row in a.dump()[1:]} == {other.public_b64, p1.public_b64}
    # Without --only-owned, like wg syncconf: the unlisted peers go.
    conf.write_text(head + f"[Peer]\nPublicKey = {p1.public_b64}\nAllowedIPs = 10.9.0.0/16\n")
    a.cli("sync", a.ifname, str(conf), env=env)
    assert {row[1] for row in a.dump()[1:]} == {p1.public_b64}

    # The library refuses the same before writing.
    with pytest.raises(DesiredStateError):
        reconcile(
            a.backend,
            a.config([
                PeerConfig(public_key=p1.public, allowed_ips=(parse_network("10.7.0.0/16"),)),
                PeerConfig(public_key=p2.public, allowed_ips=(parse_network("10.7.0.0/16"),)),
            ]),
            now=time.time(),
        )  # fmt: skip
    assert {row[1] for row in a.dump()[1:]} == {p1.public_b64}

    # Verification by read-back in a long-running process: pass N's writes are checked by
    # pass N+1's read. Another tool changing a just-written peer in between is caught, once.
    rec = Reconciler(a.backend)
    want = a.config([
        PeerConfig(public_key=p1.public, allowed_ips=(parse_network("10.9.0.0/16"),)),
        PeerConfig(public_key=p2.public, allowed_ips=(parse_network("10.10.0.0/16"),)),
    ])  # fmt: skip
    first = rec.sync(want, now=time.time())
    assert first.applied and not first.verified
    host.run(["wg", "set", a.ifname, "peer", p2.public_b64, "allowed-ips", "10.11.0.0/16"])
    with pytest.raises(VerifyError):
        rec.sync(want, now=time.time())
    fixed = rec.sync(want, now=time.time())
    assert [type(op).__name__ for op in fixed.plan.operations] == ["UpdatePeer"]
    quiet = rec.sync(want, now=time.time())
    assert quiet.plan.operations == () and quiet.verified
    dump = {row[1]: row[4] for row in a.dump()[1:]}
    assert dump == {p1.public_b64: "10.9.0.0/16", p2.public_b64: "10.10.0.0/16"}


_PARTIAL_WRITER = """
import sys, time
from ppn.wg import AddPeer, KernelBackend, build_set_messages, parse_config
config = parse_config(open(sys.argv[2]).read())
nl, family = KernelBackend(sys.argv[1])._socket()  # the backend's own socket and family
ops = [AddPeer(peer=p) for p in config.peers]
messages = build_set_messages(sys.argv[1], ops, family=family, seq=nl.seq + 1)
nl.request(messages[0], nl.next_seq())  # sent and acknowledged: applied
print(len(messages), flush=True)
time.sleep(600)
"""


def test_kill_9_mid_apply_then_convergence(lab: Lab, tmp_path: Path) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, "192.168.77.1/24", hb, "192.168.77.2/24")
    a, b = KernelNode(lab, ha, "10.8.0.1/24"), KernelNode(lab, hb, "10.8.0.2/24")
    live = b.peer_entry("192.168.77.2:51820", "10.8.0.2/32")
    a.up([live])
    b.up([a.peer_entry("192.168.77.1:51820", "10.8.0.1/32")])
    assert ha.ping(b.mesh_ip, count=1, timeout=3)
    session = a.backend.read().peers[b.keys.public]
    extra = [
        PeerConfig(
            public_key=os.urandom(32),
            allowed_ips=(parse_network(f"10.{20 + i // 250}.{i % 250}.0/24"),),
        )
        for i in range(1500)
    ]
    conf = tmp_path / "a.conf"
    conf.write_text(emit_config(a.config([live, *extra])))
    extra_conf = tmp_path / "extra.conf"
    extra_conf.write_text(emit_config(InterfaceConfig(peers=tuple(extra))))
    # The applying process sends the first of its messages, then dies by SIGKILL.
    writer = ha.popen(
        [sys.executable, "-c", _PARTIAL_WRITER, a.ifname, str(extra_conf)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    count = int(writer.stdout.readline().strip())
    assert count > 1, "the request must span several netlink messages"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    landed = len(a.dump()) - 1
    assert 1 < landed < 1 + len(extra)  # a prefix of the apply, whole messages only

    report = json.loads(a.cli("sync", a.ifname, str(conf), "--json", env=cli_env(tmp_path)).stdout)
    assert report["verified"] and len(report["operations"]) == 1 + len(extra) - landed
    assert all(op["op"] == "add_peer" for op in report["operations"])
    kept = a.backend.read().peers[b.keys.public]
    assert kept.last_handshake == session.last_handshake  # the live session was not torn down
    assert len(a.dump()) == 2 + len(extra)
    assert ha.ping(b.mesh_ip, count=1, timeout=3)
    again = json.loads(a.cli("sync", a.ifname, str(conf), "--json", env=cli_env(tmp_path)).stdout)
    assert again["operations"] == []


def _big_config(private: bytes, peers: list[tuple[bytes, list[str], str | None]]) -> str:
    lines = [f"[Interface]\nPrivateKey = {encode_key(private)}\nListenPort = 51820\n"]
    for key, allowed, endpoint in peers:
        lines.append(f"[Peer]\nPublicKey = {encode_key(key)}\nAllowedIPs = {', '.join(allowed)}\n")
        if endpoint:
            lines.append(f"Endpoint = {endpoint}\n")
    return "".join(lines)


def _tables(node: KernelNode) -> tuple[list[str], dict[str, tuple[str, str, frozenset[str], str]]]:
    """One ``wg show IFACE dump``: the interface row, and per peer (preshared key, endpoint,
    allowed IPs as a set, keepalive)."""
    iface, *rows = node.dump()
    return iface, {row[1]: (row[2], row[3], frozenset(row[4].split(",")), row[8]) for row in rows}


def test_configs_larger_than_one_message_match_wg_syncconf(lab: Lab, tmp_path: Path) -> None:
    """10,000 peers, and peers with hundreds or thousands of allowed IPs, applied by ppn in
    chunks on one interface and by ``wg syncconf`` on another; compared peer by peer."""
    ours, theirs = lab.host("ppn"), lab.host("wg")
    a = KernelNode(lab, ours, "10.8.0.1/24")
    b = KernelNode(lab, theirs, "10.8.0.1/24")
    private = WireGuardKeyPair.generate().private
    peers: list[tuple[bytes, list[str], str | None]] = []
    for i in range(10_000):
        v4 = ipaddress.IPv4Address(0x0A000000 + i)
        peers.append((os.urandom(32), [f"{v4}/32", f"fd00::{i:x}/128"], f"127.0.{i % 250}.2:51820"))
    for j in range(5):  # hundreds of allowed IPs each
        peers.append((os.urandom(32), [f"172.{16 + j}.{k}.0/24" for k in range(256)], None))
    wide = [f"fd10:{k:x}::/48" for k in range(1500)] + [f"100.64.{k}.0/24" for k in range(200)]
    peers.append((os.urandom(32), wide, "[fd00::1]:51820"))
    conf = tmp_path / "big.conf"
    env = cli_env(tmp_path)
    took: dict[str, float] = {}

    def timed(what: str, started: float) -> None:
        took[what] = took.get(what, 0.0) + time.monotonic() - started

    def both(
        text: str,
    ) -> tuple[dict[str, object], dict[str, tuple[str, str, frozenset[str], str]]]:
        conf.write_text(text)
        # ppn and wg syncconf apply the same file side by side (two interfaces, two vCPUs)
        started = time.monotonic()
        ppn = ours.popen(
            [sys.executable, "-m", "ppn", "wg", "sync", a.ifname, str(conf), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        theirs.run(["wg", "syncconf", b.ifname, str(conf)], timeout=600)
        timed("wg syncconf", started)
        out, err = ppn.communicate(timeout=1200)
        assert ppn.returncode == 0, err
        timed("ppn wg sync", started)
        started = time.monotonic()
        (mine_iface, mine), (ref_iface, ref) = _tables(a), _tables(b)
        timed("dump", started)
        started = time.monotonic()
        assert mine.keys() == ref.keys()
        for key in ref:
            assert mine[key] == ref[key], key
        assert mine_iface[1:4] == ref_iface[1:4]
        timed("compare", started)
        report: dict[str, object] = json.loads(out)
        return report, mine

    first, table = both(_big_config(private, peers))
    assert first["verified"] and len(table) == 10_006
    assert len(table[encode_key(peers[-1][0])][2]) == 1700

    # 1 % churn, the wide peer loses 700 prefixes and gains 300, one wide peer shrinks to one.
    for i in range(0, 10_000, 100):
        peers[i] = (os.urandom(32), peers[i][1], peers[i][2])
    key, allowed, endpoint = peers[-1]
    peers[-1] = (
        key,
        allowed[700:] + [f"100.{65 + k // 256}.{k % 256}.0/24" for k in range(300)],
        endpoint,
    )
    peers[-2] = (peers[-2][0], ["172.31.0.0/24"], None)
    churn, table = both(_big_config(private, peers))
    ops = churn["operations"]
    assert isinstance(ops, list) and churn["verified"]
    assert sorted(op["op"] for op in ops).count("remove_peer") == 100
    assert len(ops) == 100 + 100 + 2
    assert len(table[encode_key(peers[-1][0])][2]) == 1300

    started = time.monotonic()
    unchanged = json.loads(
        a.cli("sync", a.ifname, str(conf), "--json", env=env, timeout=1200).stdout
    )
    timed("ppn wg sync, no change", started)
    assert unchanged["operations"] == [] and unchanged["changed"] is False
    # where the time went (pytest -rP shows it; the CI log keeps the test's total)
    print("; ".join(f"{what} {seconds:.1f} s" for what, seconds in took.items()))


def test_plumbing_address_mtu_routes_link_up_on_a_kernel_interface(lab: Lab) -> None:
    host = lab.host("plumb")
    a = KernelNode(lab, host, "10.8.0.1/24")
    routes = [parse_network(r) for r in ("10.9.0.0/24", "10.8.0.2/32", "fd09::/64")]
    for _ in range(2):  # idempotent: the second pass changes nothing and raises nothing
        configure_interface(
            a.ifname,
            addresses=["10.8.0.1/24", "fd08::1/64"],
            mtu=1380,
            routes=routes,
            netns=host.netns,
        )
    (link,) = json.loads(host.run(["ip", "-j", "link", "show", a.ifname]).stdout)
    assert link["mtu"] == 1380 and "UP" in link["flags"]
    (addr,) = json.loads(host.run(["ip", "-j", "addr", "show", a.ifname]).stdout)
    have = {(i["local"], i["prefixlen"]) for i in addr["addr_info"]}
    assert {("10.8.0.1", 24), ("fd08::1", 64)} <= have
    v4 = host.run(["ip", "route", "show", "dev", a.ifname]).stdout
    v6 = host.run(["ip", "-6", "route", "show", "dev", a.ifname]).stdout
    assert "10.9.0.0/24" in v4 and "10.8.0.2" not in v4  # inside 10.8.0.0/24: connected
    assert "fd09::/64" in v6
    configure_interface(a.ifname, addresses=["10.8.0.1/24"], mtu=1420, netns=host.netns)
    (link,) = json.loads(host.run(["ip", "-j", "link", "show", a.ifname]).stdout)
    assert link["mtu"] == 1420


def test_refusals_by_the_module_map_to_exit_statuses(lab: Lab, tmp_path: Path) -> None:
    """What the kernel refuses, and how ``ppn wg sync`` reports it. A kernel interface binds
    its port only while it is up: a down one takes any port (the clash surfaces when it goes
    up). Up, a listen port another interface of the namespace holds is EADDRINUSE (exit 23;
    the module applies nothing of that message: it binds the port before it touches the key
    or any peer). An interface that does not exist is exit 21."""
    host = lab.host("ref")
    first, second = KernelNode(lab, host, "10.8.0.1/24"), KernelNode(lab, host, "10.8.0.2/24")
    env = cli_env(tmp_path)
    peer = WireGuardKeyPair.generate()
    conf = tmp_path / "a.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {encode_key(first.keys.private)}\nListenPort = 51820\n"
        f"[Peer]\nPublicKey = {peer.public_b64}\nAllowedIPs = 10.9.0.0/16\n"
    )
    first.cli("sync", first.ifname, str(conf), env=env)
    down = json.loads(second.cli("sync", second.ifname, str(conf), "--json", env=env).stdout)
    assert down["verified"] and second.dump()[0][3] == "51820"  # both down: no socket yet
    host.run(["ip", "link", "del", second.ifname])
    second = KernelNode(lab, host, "10.8.0.2/24")
    for node in (first, second):
        host.run(["ip", "link", "set", node.ifname, "up"])
    clash = second.cli("sync", second.ifname, str(conf), env=env, check=False)
    assert clash.returncode == 23, clash.stderr
    assert "Traceback" not in clash.stderr and "98" in clash.stderr + clash.stdout
    (row,) = second.dump()  # no key and no peer; the port is the random one bound at link up
    assert row[1:3] == ["(none)", "(none)"] and row[3] != "51820"
    missing = first.cli("sync", "nosuchwg9", str(conf), env=env, check=False)
    assert missing.returncode == 21 and "Traceback" not in missing.stderr
    shown = first.cli("show", "nosuchwg9", env=env, check=False)
    assert shown.returncode == 21 and "Traceback" not in shown.stderr


def test_a_held_state_is_recognised_on_the_module_s_bytes_and_changes_behind_it_planned(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's quick check on the module's own dump bytes (RFC-NOTES §6.10, ARCHITECTURE
    §8.1): once a pass has found the device as desired, every peer is recognised without being
    decoded while live traffic moves one peer's handshake time and counters; a desired state
    built afresh is recognised too; and what ``wg set`` changes behind the agent's back
    (keepalive, allowed IPs, preshared key, endpoint) is planned exactly, peer by peer."""
    import dataclasses

    from ppn.wg import Endpoint, UpdatePeer

    ha, hb = lab.host("qa"), lab.host("qb")
    lab.link(ha, "192.168.79.1/24", hb, "192.168.79.2/24")
    a = KernelNode(lab, ha, "10.8.0.1/24")
    b = KernelNode(lab, hb, "10.8.0.2/24")
    others = [
        PeerConfig(
            public_key=WireGuardKeyPair.generate().public,
            endpoint=Endpoint.parse(f"192.0.2.{i}:51820"),
            allowed_ips=(parse_network(f"10.9.{i}.0/24"), parse_network(f"fd09::{i:x}/128")),
            persistent_keepalive=25 if i % 2 else 0,
            preshared_key=os.urandom(32) if i % 3 == 0 else None,
        )
        for i in range(1, 41)
    ]
    desired = a.config([b.peer_entry("192.168.79.2:51820", "10.8.0.2/32"), *others])
    agent = Reconciler(a.backend)
    assert len(agent.sync(desired, now=time.time()).plan) == 1 + 1 + len(others)
    configure_interface(a.ifname, addresses=[a.mesh_address], netns=ha.netns)
    b.up([a.peer_entry("192.168.79.1:51820", "10.8.0.0/24")])
    assert hb.ping(a.mesh_ip, count=2, timeout=3)
    # This pass verifies the writes on its read; each peer then matched and is remembered.
    assert not agent.sync(desired, now=time.time()).plan
    matched = a.backend._memo.matched
    assert all(matched[p.public_key][0] is p for p in desired.peers)

    decoded = decoded_keys(monkeypatch)
    indexed = indexed_messages(monkeypatch)  # messages indexed peer by peer, not as recorded
    before = a.backend.read().peers[b.keys.public]
    assert hb.ping(a.mesh_ip, count=3, timeout=3)  # b's counters (and maybe handshake) move
    decoded.clear()
    indexed.clear()
    assert not agent.sync(desired, now=time.time()).plan
    assert decoded == []  # every peer recognised on bytes, counters notwithstanding
    # The module dumped the same messages again, byte for byte but for the volatile fields:
    # each was taken as recorded, without a look at its peers.
    assert indexed == []
    after = a.backend.read().peers[b.keys.public]
    assert after.rx_bytes > before.rx_bytes  # the volatile fields did move under the check
    fresh = a.config([dataclasses.replace(p) for p in desired.peers])
    decoded.clear()
    assert not agent.sync(fresh, now=time.time()).plan
    assert decoded == []  # equal objects built afresh: recognised by value, still no decoding
    assert hb.ping(a.mesh_ip, count=2, timeout=3)
    state = a.backend.read()  # and the pages now offer the fresh objects
    assert indexed == [] and decoded == []
    offered = state.peers.known_unchanged  # type: ignore[attr-defined]
    assert all(offered[p.public_key] is p for p in fresh.peers)

    # Behind the agent's back.
    def wg_set(peer: PeerConfig, *args: str) -> None:
        ha.run(["wg", "set", a.ifname, "peer", encode_key(peer.public_key), *args])

    psk_file = tmp_path / "psk"
    psk_file.write_text(encode_key(os.urandom(32)) + "\n")
    wg_set(others[0], "persistent-keepalive", "7")
    wg_set(others[1], "allowed-ips", "10.9.2.0/24,fd09::2/128,10.77.0.0/16")
    wg_set(others[2], "preshared-key", str(psk_file))
    wg_set(others[3], "endpoint", "192.0.2.200:1")
    wg_set(others[4], "allowed-ips", "fd09::5/128,10.9.5.0/24")  # the same set, another order
    decoded.clear()
    report = agent.sync(fresh, now=time.time())
    touched = {op.public_key for op in report.plan if isinstance(op, UpdatePeer)}
    assert touched == {p.public_key for p in others[:4]}
    assert len(report.plan) == 4
    # decoded: the changed peers (and the reordered one, if the module lists the new order),
    # nothing else
    changed_keys = {p.public_key for p in others[:4]}
    assert changed_keys <= set(decoded) <= changed_keys | {others[4].public_key}
    assert not agent.sync(fresh, now=time.time()).plan  # verified, and converged
    rows = {row[1]: row for row in a.dump()[1:]}
    for p in others[:4]:
        row = rows[encode_key(p.public_key)]
        assert row[2] == (encode_key(p.preshared_key) if p.preshared_key else "(none)")
        assert row[3] == str(p.endpoint)
        assert set(row[4].split(",")) == set(p.prefix_texts())
        assert row[8] == (str(p.persistent_keepalive) if p.persistent_keepalive else "off")
