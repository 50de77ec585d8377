"""Real wireguard-go in network namespaces, configured only through ppn.wg (ARCHITECTURE §6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop.netns import Host, Lab
from ppn._keys import WireGuardKeyPair, encode_key
from ppn.wg import (
    AddPeer,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    UAPIBackend,
    WireGuardGo,
    configure_interface,
    emit_config,
    encode_set,
    parse_network,
    reconcile,
)

pytestmark = pytest.mark.netns


class Node:
    """One namespace with a wireguard-go device driven by ppn.wg."""

    def __init__(self, lab: Lab, host: Host, mesh_address: str) -> None:
        self.host = host
        self.keys = WireGuardKeyPair.generate()
        self.ifname = lab.unique_ifname("wg")
        self.mesh_address = mesh_address  # e.g. 10.8.0.1/24
        self.daemon = WireGuardGo(self.ifname, netns=host.netns)
        self.daemon.start()
        assert self.daemon.process is not None
        lab.processes.append(self.daemon.process)  # the lab kills it by PID whatever happens
        self.backend = UAPIBackend(self.ifname)

    @property
    def mesh_ip(self) -> str:
        return self.mesh_address.split("/")[0]

    def config(self, peers: list[PeerConfig], port: int = 51820) -> InterfaceConfig:
        return InterfaceConfig(private_key=self.keys.private, listen_port=port, peers=tuple(peers))

    def peer_entry(self, endpoint: str | None, *allowed: str) -> PeerConfig:
        return PeerConfig(
            public_key=self.keys.public,
            endpoint=None if endpoint is None else Endpoint.parse(endpoint),
            allowed_ips=tuple(parse_network(a) for a in allowed),
        )

    def up(self, peers: list[PeerConfig], routes: tuple[str, ...] = ()) -> None:
        report = reconcile(self.backend, self.config(peers), now=time.time())
        assert report.verified
        configure_interface(
            self.ifname,
            addresses=[self.mesh_address],
            routes=[parse_network(r) for r in routes],
            netns=self.host.netns,
        )

    def cli(
        self, *args: str, env: dict[str, str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run([sys.executable, "-m", "ppn", "wg", *args], check=check, env=env)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PPN_WG_STATE_DIR": str(tmp_path / "state")}


def test_two_namespaces_ping_through_the_tunnel_and_resync_is_a_no_op(
    lab: Lab, tmp_path: Path
) -> None:
    ha, hb = lab.host("a"), lab.host("b")
    lab.link(ha, "192.168.77.1/24", hb, "192.168.77.2/24")
    a, b = Node(lab, ha, "10.8.0.1/24"), Node(lab, hb, "10.8.0.2/24")
    a.up([b.peer_entry("192.168.77.2:51820", "10.8.0.2/32")])
    b.up([a.peer_entry("192.168.77.1:51820", "10.8.0.1/32")])
    assert ha.ping(b.mesh_ip, count=2, timeout=3)

    # Plumbing is idempotent: routes for allowed IPs outside the address's prefix, MTU, up.
    for _ in range(2):
        configure_interface(
            a.ifname,
            addresses=[a.mesh_address],
            routes=[parse_network("10.9.0.0/24"), parse_network("10.8.0.2/32")],
            netns=ha.netns,
        )
    routes = ha.run(["ip", "route", "show", "dev", a.ifname]).stdout
    assert "10.9.0.0/24" in routes and "10.8.0.2" not in routes
    assert "mtu 1420" in ha.run(["ip", "link", "show", a.ifname]).stdout

    before = a.backend.read().peers[b.keys.public]
    assert before.last_handshake is not None and before.rx_bytes > 0
    # The CLI, run inside the namespace, with the same config: zero operations, zero writes.
    conf = tmp_path / "a.conf"
    conf.write_text(emit_config(a.config([b.peer_entry("192.168.77.2:51820", "10.8.0.2/32")])))
    result = a.cli("sync", a.ifname, str(conf), "--json", env=_env(tmp_path))
    report = json.loads(result.stdout)
    assert report["operations"] == [] and report["changed"] is False
    assert report["backend"] == "userspace"
    after = a.backend.read().peers[b.keys.public]
    assert after.last_handshake == before.last_handshake
    assert after.rx_bytes >= before.rx_bytes and after.endpoint == before.endpoint

    shown = json.loads(a.cli("show", a.ifname, "--json", env=_env(tmp_path)).stdout)
    (iface,) = shown["interfaces"]
    (peer,) = iface["peers"]
    assert peer["public_key"] == b.keys.public_b64 and peer["stale"] is False
    assert peer["rx_bytes"] > 0 and peer["allowed_ips"] == ["10.8.0.2/32"]
    text = a.cli("show", a.ifname, env=_env(tmp_path)).stdout
    assert encode_key(a.keys.private) not in text and "latest handshake:" in text


def test_three_namespaces_relay_and_roamed_endpoint_survives_a_sync(
    lab: Lab, tmp_path: Path
) -> None:
    hub, hb, hc = lab.host("hub"), lab.host("b"), lab.host("c")
    lab.link(hub, "192.168.77.1/24", hb, "192.168.77.2/24")
    lab.link(hub, "192.168.78.1/24", hc, "192.168.78.2/24")
    hub.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    r, b, c = (
        Node(lab, hub, "10.8.0.1/24"),
        Node(lab, hb, "10.8.0.2/24"),
        Node(lab, hc, "10.8.0.3/24"),
    )
    hub_peers = [
        b.peer_entry("192.168.77.2:51820", "10.8.0.2/32"),
        c.peer_entry("192.168.78.2:51820", "10.8.0.3/32"),
    ]
    conf = tmp_path / "hub.conf"
    conf.write_text(emit_config(r.config(hub_peers)))
    env = _env(tmp_path)
    first = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert first["changed"] and first["verified"]
    configure_interface(r.ifname, addresses=[r.mesh_address], netns=hub.netns)
    hub_entry_b = r.peer_entry("192.168.77.1:51820", "10.8.0.0/24")
    b.up([hub_entry_b])
    c.up([r.peer_entry("192.168.78.1:51820", "10.8.0.0/24")])
    # b reaches c through the hub: two tunnels and forwarding in between
    assert hb.ping(c.mesh_ip, count=2, timeout=3)

    # b's source port changes (as behind a NAT rebinding); its next packets roam the hub's
    # endpoint for b.
    reconcile(b.backend, b.config([hub_entry_b], port=40001), now=time.time())
    assert hb.ping(r.mesh_ip, count=2, timeout=3)
    roamed = r.backend.read().peers[b.keys.public]
    assert roamed.endpoint == Endpoint.parse("192.168.77.2:40001")

    # Same desired config (endpoint .2): the sync keeps the live, roamed endpoint.
    again = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert again["operations"] == []
    assert again["kept_endpoints"] == [b.keys.public_b64]
    assert r.backend.read().peers[b.keys.public].endpoint == roamed.endpoint
    assert hb.ping(c.mesh_ip, count=1, timeout=3)

    # A changed desired endpoint is applied even to a live peer.
    hub_peers[0] = b.peer_entry("192.168.77.2:40002", "10.8.0.2/32")
    conf.write_text(emit_config(r.config(hub_peers)))
    changed = json.loads(r.cli("sync", r.ifname, str(conf), "--json", env=env).stdout)
    assert changed["operations"] == [
        {"op": "update_peer", "public_key": b.keys.public_b64, "endpoint": "192.168.77.2:40002"}
    ]
    state = r.backend.read().peers
    assert changed["verified"]  # read back by the CLI right after the write
    # c was not touched by any of this
    assert state[c.keys.public].endpoint == Endpoint.parse("192.168.78.2:51820")


def test_duplicate_prefix_is_refused_by_the_cli_and_nothing_changes(
    lab: Lab, tmp_path: Path
) -> None:
    ha = lab.host("a")
    a = Node(lab, ha, "10.8.0.1/24")
    p1, p2 = WireGuardKeyPair.generate(), WireGuardKeyPair.generate()
    conf = tmp_path / "dup.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {encode_key(a.keys.private)}\n"
        f"[Peer]\nPublicKey = {p1.public_b64}\nAllowedIPs = 10.9.0.0/16\n"
        f"[Peer]\nPublicKey = {p2.public_b64}\nAllowedIPs = 10.9.0.0/16\n"
    )
    result = a.cli("sync", a.ifname, str(conf), env=_env(tmp_path), check=False)
    assert result.returncode == 22, result.stderr
    assert "claimed by two peers" in result.stderr and "Traceback" not in result.stderr
    assert a.backend.read().peers == {}
    missing = a.cli("sync", "nosuchwg0", str(conf), env=_env(tmp_path), check=False)
    assert missing.returncode == 21 and "Traceback" not in missing.stderr

    # A peer put there by another tool is left alone with --only-owned, and reported.
    other = WireGuardKeyPair.generate()
    subprocess.run(
        ["wg", "set", a.ifname, "peer", other.public_b64, "allowed-ips", "10.99.0.0/16"],
        check=True,
    )
    conf.write_text(
        f"[Interface]\nPrivateKey = {encode_key(a.keys.private)}\n"
        f"[Peer]\nPublicKey = {p1.public_b64}\nAllowedIPs = 10.9.0.0/16\n"
    )
    dry = a.cli("sync", a.ifname, str(conf), "--only-owned", "--dry-run", env=_env(tmp_path))
    assert "would apply" in dry.stdout and "left alone peer " + other.public_b64 in dry.stdout
    assert set(a.backend.read().peers) == {other.public}  # dry run: nothing written
    report = json.loads(
        a.cli("sync", a.ifname, str(conf), "--only-owned", "--json", env=_env(tmp_path)).stdout
    )
    assert report["foreign_peers"] == [other.public_b64]
    assert set(a.backend.read().peers) == {other.public, p1.public}
    # without --only-owned it behaves like wg syncconf: the unlisted peer goes
    a.cli("sync", a.ifname, str(conf), env=_env(tmp_path))
    assert set(a.backend.read().peers) == {p1.public}

    # A big sync prints a screenful and a count; its dry run lists every operation.
    many = [WireGuardKeyPair.generate() for _ in range(30)]
    conf.write_text(
        f"[Interface]\nPrivateKey = {encode_key(a.keys.private)}\n"
        + "".join(
            f"[Peer]\nPublicKey = {k.public_b64}\nAllowedIPs = 10.10.{i}.0/24\n"
            for i, k in enumerate(many)
        )
    )
    dry = a.cli("sync", a.ifname, str(conf), "--dry-run", env=_env(tmp_path))
    assert dry.stdout.count("\n  add peer ") == 30 and "more operation" not in dry.stdout
    done = a.cli("sync", a.ifname, str(conf), env=_env(tmp_path)).stdout
    assert "applied 31 operation(s)" in done  # 30 additions and p1's removal
    assert done.count("\n  ") == 21 and "... and 11 more operation(s)" in done
    assert len(a.backend.read().peers) == 30


_PARTIAL_WRITER = """
import socket, sys
path, data = sys.argv[1], bytes.fromhex(sys.stdin.read())
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(data[: len(data) // 2])
print("sent", flush=True)
sys.stdin.close()
import time
time.sleep(60)
"""


def test_kill_9_during_an_apply_then_convergence_and_no_leftovers(tmp_path: Path) -> None:
    with Lab() as lab:
        ha, hb = lab.host("a"), lab.host("b")
        lab.link(ha, "192.168.77.1/24", hb, "192.168.77.2/24")
        a, b = Node(lab, ha, "10.8.0.1/24"), Node(lab, hb, "10.8.0.2/24")
        live = b.peer_entry("192.168.77.2:51820", "10.8.0.2/32")
        a.up([live])
        b.up([a.peer_entry("192.168.77.1:51820", "10.8.0.1/32")])
        assert ha.ping(b.mesh_ip, count=1, timeout=3)
        session = a.backend.read().peers[b.keys.public]

        extra = [
            PeerConfig(
                public_key=WireGuardKeyPair.generate().public,
                allowed_ips=(parse_network(f"10.{20 + i // 250}.{i % 250}.0/24"),),
            )
            for i in range(400)
        ]
        desired = a.config([live, *extra])
        # An applying process writes half of its one set=1 request, then dies by SIGKILL.
        request = encode_set([AddPeer(peer=p) for p in extra])
        writer = subprocess.Popen(
            [sys.executable, "-c", _PARTIAL_WRITER, a.backend.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        lab.processes.append(writer)
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write(request.hex())
        writer.stdin.close()
        assert writer.stdout.readline().strip() == "sent"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        time.sleep(0.2)
        partial = a.backend.read()
        assert 1 < len(partial.peers) < 1 + len(extra)  # a prefix of the request landed

        conf = tmp_path / "a.conf"
        conf.write_text(emit_config(desired))
        report = json.loads(a.cli("sync", a.ifname, str(conf), "--json", env=_env(tmp_path)).stdout)
        assert report["verified"] and 0 < len(report["operations"]) < len(extra) + 1
        assert all(op["public_key"] != b.keys.public_b64 for op in report["operations"])
        converged = a.backend.read()
        assert len(converged.peers) == 1 + len(extra)
        kept = converged.peers[b.keys.public]
        assert kept.last_handshake == session.last_handshake  # the live session was not torn down
        assert kept.rx_bytes >= session.rx_bytes
        assert ha.ping(b.mesh_ip, count=1, timeout=3)
        again = json.loads(a.cli("sync", a.ifname, str(conf), "--json", env=_env(tmp_path)).stdout)
        assert again["operations"] == []
        pids = [a.daemon.pid, b.daemon.pid]
        sockets = [a.backend.path, b.backend.path]
        namespaces = [ha.netns, hb.netns]
    # No leftovers: daemons gone, sockets gone, namespaces gone.
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for path in sockets:
        assert not os.path.exists(path)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in namespaces:
        assert ns not in listed


def test_wireguard_go_supervision_start_stop_and_failure(lab: Lab) -> None:
    from ppn.wg import DeviceError

    host = lab.host("s")
    daemon = WireGuardGo(lab.unique_ifname("wg"), netns=host.netns)
    pid = daemon.start()
    assert daemon.process is not None
    lab.processes.append(daemon.process)
    assert daemon.alive() and os.path.exists(daemon.socket)
    daemon.stop()
    assert not daemon.alive() and not os.path.exists(daemon.socket)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broken = WireGuardGo("x" * 20, netns=host.netns)  # longer than IFNAMSIZ
    with pytest.raises(DeviceError, match="exited with status"):
        broken.start(timeout=5)
