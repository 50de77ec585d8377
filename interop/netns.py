"""Test hosts on one machine: network namespaces, veth links and processes, all cleaned up.

Every name carries a per-run suffix so concurrent runs never collide (ARCHITECTURE §6), and
everything created is recorded in a :class:`Lab` and removed by :meth:`Lab.close` — namespaces,
links and processes (by PID, never by name). Use as a context manager::

    with Lab() as lab:
        a = lab.host("a")
        b = lab.host("b")
        lab.link(a, "192.168.77.1/24", b, "192.168.77.2/24")
        proc = a.popen(["ping", "-c1", "192.168.77.2"])

Addresses must be inside the namespaces this lab made; nothing here touches the root namespace
beyond creating and deleting veth pairs that are moved into the lab's namespaces at once.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["Host", "Lab", "netns_available", "netns_unavailable_reason", "run_suffix"]


def run_suffix() -> str:
    """A short per-run tag: 4 hex characters from the PID and 2 random bytes."""
    return f"{os.getpid() % 0xFFFF:04x}{secrets.token_hex(2)}"


def netns_unavailable_reason(*, need_wireguard: bool = True) -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip')"
    if need_wireguard and shutil.which("wireguard-go") is None:
        return "needs wireguard-go"
    probe = f"ppnprobe{run_suffix()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return "cannot create network namespaces: " + made.stderr.decode(errors="replace").strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def netns_available(*, need_wireguard: bool = True) -> bool:
    return netns_unavailable_reason(need_wireguard=need_wireguard) is None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Host:
    """One network namespace of a :class:`Lab`."""

    lab: Lab
    name: str  # the short name given by the test ("a", "relay")
    netns: str  # the real namespace name, with the run suffix

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so it runs inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.cmd(argv), capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"[{self.name}] {' '.join(argv)} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace; the lab kills it (by PID) on close."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.cmd(argv), **kw)
        self.lab.processes.append(proc)
        return proc

    def ping(self, address: str, *, count: int = 1, timeout: float = 2) -> bool:
        result = self.run(
            ["ping", "-n", "-q", "-c", str(count), "-W", str(int(max(1, timeout))), address],
            check=False,
            timeout=timeout * count + 5,
        )
        return result.returncode == 0


@dataclass
class Lab:
    """A set of namespaces and links for one test, removed on close (also after failures)."""

    suffix: str = field(default_factory=run_suffix)
    hosts: list[Host] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    ifnames: list[str] = field(default_factory=list)

    def host(self, name: str) -> Host:
        netns = f"ppn-{name}-{self.suffix}"
        _ip("netns", "add", netns)
        host = Host(lab=self, name=name, netns=netns)
        self.hosts.append(host)
        host.run(["ip", "link", "set", "lo", "up"])
        return host

    def unique_ifname(self, stem: str) -> str:
        """An interface name unique across the run (<= 15 chars): WireGuard sockets in
        /var/run/wireguard/ are shared by every namespace."""
        name = f"{stem[:5]}{len(self.ifnames) + 1}{self.suffix}"[:15]
        self.ifnames.append(name)
        return name

    def link(
        self, a: Host, a_cidr: str, b: Host, b_cidr: str, *, mtu: int = 1500
    ) -> tuple[str, str]:
        """A veth pair between two hosts, addressed and up. Returns (ifname in a, ifname in b)."""
        ia = self.unique_ifname("va")
        ib = self.unique_ifname("vb")
        _ip("link", "add", ia, "mtu", str(mtu), "type", "veth", "peer", "name", ib, "mtu", str(mtu))
        _ip("link", "set", ia, "netns", a.netns)
        _ip("link", "set", ib, "netns", b.netns)
        for host, ifname, cidr in ((a, ia, a_cidr), (b, ib, b_cidr)):
            host.run(["ip", "addr", "add", cidr, "dev", ifname])
            host.run(["ip", "link", "set", ifname, "up"])
        return ia, ib

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for host in reversed(self.hosts):
            # Processes that were started inside the namespace by other means (daemons) die here.
            pids = subprocess.run(
                ["ip", "netns", "pids", host.netns], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        for ifname in self.ifnames:
            # A wireguard-go that was SIGKILLed leaves its UAPI socket behind.
            try:
                os.unlink(f"/var/run/wireguard/{ifname}.sock")
            except FileNotFoundError:
                pass
        self.hosts.clear()
        self.processes.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
