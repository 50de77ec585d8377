"""Devices: which backend to use, starting and supervising wireguard-go, interface plumbing.

Backend selection is honest about the machine (RFC-NOTES §6.6):

1. a running userspace device (its UAPI socket answers) → ``userspace``;
2. a kernel WireGuard link, or the kernel module present for a new one → ``kernel``;
3. wireguard-go installed and we may create TUN devices (root) → ``userspace`` (start it);
4. otherwise → ``config-only``: the configuration is written to a file and the message says
   what is missing.

Plumbing (addresses, MTU, link up, routes for allowed IPs) goes through pyroute2, in the
current namespace or a named one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

from ._backend import Backend
from ._config import emit_config, parse_config
from ._io_uapi import DEFAULT_SOCKET_DIR, UAPIBackend, socket_path
from ._model import DeviceError, DeviceState, InterfaceConfig, IPNetwork
from ._plan import Operation

__all__ = [
    "BackendChoice",
    "ConfigOnlyBackend",
    "WireGuardGo",
    "configure_interface",
    "interface_kind",
    "kernel_module_present",
    "list_kernel_interfaces",
    "list_userspace_interfaces",
    "remove_interface",
    "select_backend",
]

USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def kernel_module_present() -> bool:
    """True when the kernel has WireGuard (loaded or built in)."""
    return os.path.isdir("/sys/module/wireguard")


@contextlib.contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute, NetNS

    handle = IPRoute() if netns is None else NetNS(netns)
    try:
        yield handle
    finally:
        handle.close()


def interface_kind(interface: str, netns: str | None = None) -> str | None:
    """The link kind (``wireguard``, ``tun``...) or None when there is no such interface.

    One rtnetlink request of our own (no pyroute2: ``ppn wg sync`` on a kernel interface
    loads none, RFC-NOTES §6.10).
    """
    from ._io_kernel import link_kind_of

    return link_kind_of(interface, netns)


def list_kernel_interfaces(netns: str | None = None) -> list[str]:
    """Names of kernel WireGuard links (none when the module is absent)."""
    if not kernel_module_present():
        return []
    from ._io_kernel import wireguard_links

    return wireguard_links(netns)


def list_userspace_interfaces(socket_dir: str = DEFAULT_SOCKET_DIR) -> list[str]:
    try:
        names = os.listdir(socket_dir)
    except FileNotFoundError:
        return []
    return sorted(n[: -len(".sock")] for n in names if n.endswith(".sock"))


class ConfigOnlyBackend:
    """No data plane available: the configuration is kept in a file (mode 0600) instead.

    ``apply`` updates the file as a device would update itself; ``read`` reports the file's
    content as the device (no handshakes, no counters). Reconciling against it therefore
    writes exactly the desired configuration, ready for when WireGuard is installed.
    """

    kind = "config-only"

    def __init__(self, interface: str, path: str, reason: str) -> None:
        self.interface = interface
        self.path = path
        self.reason = reason

    @property
    def description(self) -> str:
        return f"config-only ({self.reason}); configuration kept in {self.path}"

    def config(self) -> InterfaceConfig:
        if not os.path.exists(self.path):
            return InterfaceConfig()
        with open(self.path, encoding="utf-8") as f:
            return parse_config(f.read())

    def read(self) -> DeviceState:
        from ._fake import apply_to_state
        from ._plan import AddPeer, SetInterface

        config = self.config()
        state = DeviceState(name=self.interface)
        ops: list[Operation] = [
            SetInterface(
                private_key=config.private_key,
                listen_port=config.listen_port,
                fwmark=config.fwmark,
            )
        ]
        ops.extend(AddPeer(peer=p) for p in config.peers)
        for op in ops:
            state = apply_to_state(state, op)
        return state

    def write(self, config: InterfaceConfig) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(emit_config(config))
        os.replace(tmp, self.path)

    def apply(self, ops: Sequence[Operation]) -> None:
        from ._fake import apply_to_config

        config = self.config()
        for op in ops:
            config = apply_to_config(config, op)
        self.write(config)


@dataclass(frozen=True, kw_only=True)
class BackendChoice:
    kind: str  # "kernel", "userspace", "config-only"
    reason: str  # one sentence for the user
    running: bool  # the device exists already
    backend: Backend | None = None


def select_backend(
    interface: str,
    *,
    netns: str | None = None,
    allow_userspace: bool = True,
    socket_dir: str = DEFAULT_SOCKET_DIR,
) -> BackendChoice:
    """Pick the backend for ``interface`` (see the module docstring)."""
    uapi = UAPIBackend(interface, socket_dir=socket_dir)
    if uapi.available():
        return BackendChoice(
            kind="userspace",
            reason=f"userspace WireGuard (UAPI socket {uapi.path})",
            running=True,
            backend=uapi,
        )
    kind = interface_kind(interface, netns)
    if kind == "wireguard" or (kind is None and kernel_module_present()):
        from ._io_kernel import KernelBackend

        return BackendChoice(
            kind="kernel",
            reason="kernel WireGuard (generic netlink)",
            running=kind is not None,
            backend=KernelBackend(interface, netns=netns),
        )
    if kind is not None:
        return BackendChoice(
            kind="none",
            reason=f"{interface} exists but is a {kind} link with no WireGuard socket",
            running=False,
        )
    missing = []
    if shutil.which("wireguard-go") is None:
        missing.append("wireguard-go is not installed")
    if os.geteuid() != 0:
        missing.append("creating a TUN device needs root")
    if not allow_userspace:
        missing.append("userspace WireGuard is not permitted")
    if not missing:
        return BackendChoice(
            kind="userspace",
            reason="no kernel WireGuard module; wireguard-go will run the device",
            running=False,
            backend=uapi,
        )
    reason = "no kernel WireGuard module and " + " and ".join(missing)
    from ._io_state import state_dir

    return BackendChoice(
        kind="config-only",
        reason=reason,
        running=True,  # the file is always "there": reconcile against it writes it
        backend=ConfigOnlyBackend(
            interface, os.path.join(state_dir(), f"{interface}.conf"), reason
        ),
    )


class WireGuardGo:
    """One wireguard-go process in the foreground (``-f``), supervised by its PID."""

    def __init__(
        self,
        interface: str,
        *,
        netns: str | None = None,
        executable: str = "wireguard-go",
        socket_dir: str = DEFAULT_SOCKET_DIR,
    ) -> None:
        self.interface = interface
        self.netns = netns
        self.executable = executable
        self.socket = socket_path(interface, socket_dir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, *, timeout: float = 10.0, detach: bool = False) -> int:
        """Start the daemon and wait until its UAPI socket answers. Returns the PID.

        ``detach`` puts it in its own session so it outlives this process (the CLI).
        """
        import subprocess  # here, not at the top: `ppn wg sync` on a running device needs
        import tempfile  # neither, and they are a good part of its start-up

        argv = [self.executable, "-f", self.interface]
        if self.netns is not None:
            # `ip netns exec` execs the command, so the PID we get is wireguard-go's.
            argv = ["ip", "netns", "exec", self.netns, *argv]
        # stderr goes to a file, not a pipe: a pipe nobody reads can block the daemon, and a
        # closed one kills a Go program with SIGPIPE on its next write to fd 2.
        with tempfile.TemporaryFile() as errors:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **USERSPACE_ENV},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=detach,
            )
            deadline = time.monotonic() + timeout
            backend = UAPIBackend(self.interface, socket_dir=os.path.dirname(self.socket))
            while True:
                if self.process.poll() is not None:
                    errors.seek(0)
                    text = errors.read().decode(errors="replace")
                    lines = [ln for ln in text.splitlines() if ln.strip() and "│" not in ln]
                    lines = [ln for ln in lines if "─" not in ln]
                    raise DeviceError(
                        f"wireguard-go for {self.interface} exited with status "
                        f"{self.process.returncode}: {(lines or ['no message'])[-1].strip()}",
                        5,
                    )
                if backend.available():
                    try:
                        backend.read()
                        break
                    except DeviceError:
                        pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise DeviceError(f"wireguard-go for {self.interface} did not come up", 110)
                time.sleep(0.01)
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; removes a socket a killed daemon left."""
        import signal
        import subprocess

        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.process = None


def _connected(addresses: Iterable[str]) -> list[IPNetwork]:
    nets = []
    for text in addresses:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_interface(text).network)
    return nets


def configure_interface(
    interface: str,
    *,
    addresses: Sequence[str] = (),
    mtu: int | None = 1420,
    routes: Iterable[IPNetwork] = (),
    netns: str | None = None,
    up: bool = True,
) -> None:
    """Addresses, MTU, link up and a route for every allowed IP (idempotent).

    Routes already covered by an interface address's connected prefix are skipped.
    """
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=interface)
        if not found:
            raise DeviceError(f"no interface {interface}", 19)
        index = found[0]
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
        for text in addresses:
            iface = ipaddress.ip_interface(text)
            if (str(iface.ip), iface.network.prefixlen) not in have:
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
        settings: dict[str, Any] = {}
        if mtu is not None:
            settings["mtu"] = mtu
        if up:
            settings["state"] = "up"
        if settings:
            ipr.link("set", index=index, **settings)
        connected = _connected(addresses)
        for net in routes:
            if any(net.version == c.version and net.subnet_of(c) for c in connected):  # type: ignore[arg-type]
                continue
            ipr.route("replace", dst=str(net), oif=index)


def remove_interface(interface: str, netns: str | None = None) -> None:
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=interface)
        if found:
            ipr.link("del", index=found[0])
