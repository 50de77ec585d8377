"""Kernel WireGuard devices in the namespaces of an interop.netns Lab, driven by ppn.wg."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from interop.netns import Host, Lab
from ppn._keys import WireGuardKeyPair
from ppn.wg import (
    Endpoint,
    InterfaceConfig,
    KernelBackend,
    PeerConfig,
    configure_interface,
    parse_network,
    reconcile,
)


class KernelNode:
    """One namespace with a kernel WireGuard link (``ip link add ... type wireguard``)."""

    def __init__(self, lab: Lab, host: Host, mesh_address: str) -> None:
        self.host = host
        self.keys = WireGuardKeyPair.generate()
        self.ifname = lab.unique_ifname("wgk")
        self.mesh_address = mesh_address
        host.run(["ip", "link", "add", self.ifname, "type", "wireguard"])
        self.backend = KernelBackend(self.ifname, netns=host.netns)

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

    def up(self, peers: list[PeerConfig], port: int = 51820) -> None:
        report = reconcile(self.backend, self.config(peers, port), now=time.time())
        assert report.verified and report.backend == "kernel"
        configure_interface(self.ifname, addresses=[self.mesh_address], netns=self.host.netns)

    def cli(
        self, *args: str, env: dict[str, str], check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run(
            [sys.executable, "-m", "ppn", "wg", *args], check=check, env=env, timeout=timeout
        )

    def dump(self) -> list[list[str]]:
        """``wg show IFACE dump`` split into fields, each row led by the interface name as in
        ``wg show all dump`` (first row: the interface; then one per peer)."""
        out = self.host.run(["wg", "show", self.ifname, "dump"]).stdout
        return [[self.ifname, *line.split("\t")] for line in out.splitlines()]


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PPN_WG_STATE_DIR": str(tmp_path / "state")}
