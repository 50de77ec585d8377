"""The mesh agent's WireGuard side: bring the device up, observe it, reconcile it to the roster.

Everything WireGuard-specific goes through :mod:`ppn.wg` (backend selection, wireguard-go
supervision, interface plumbing, the minimal-change planner). This module only translates the
mesh's desired configuration (:class:`ppn.mesh._topology.DesiredConfig`) into ``wg`` terms and the
device's state back into :class:`Observation` values.

The device outlives the agent: a wireguard-go started here runs in its own session and is left
running when the agent stops, so ``ppn up`` can be restarted without touching the tunnel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from .. import wg
from .._errors import PPNError
from ._addressing import MeshNetwork
from ._bootstrap import PreliminaryMember, with_bootstrap_peers
from ._roster import Roster
from ._topology import DesiredConfig, Observation, Topology, plan_topology

__all__ = [
    "DeviceWireGuard",
    "MeshDeviceError",
    "ensure_device",
    "nudge",
    "observations_from",
    "to_interface_config",
]

MTU = 1420


class MeshDeviceError(PPNError):
    """The WireGuard device cannot be brought up or configured (one sentence)."""


@dataclass(frozen=True, kw_only=True)
class DeviceHandle:
    backend: wg.Backend
    kind: str
    started_pid: int | None  # a wireguard-go this call started (left running on exit)


def ensure_device(interface: str) -> DeviceHandle:
    """The interface's backend, creating the device when it does not exist yet."""
    choice = wg.select_backend(interface)
    if choice.backend is None:
        raise MeshDeviceError(f"cannot run WireGuard interface {interface}: {choice.reason}")
    started = None
    if not choice.running:
        if choice.kind == "userspace":
            try:
                started = wg.WireGuardGo(interface).start(detach=True)
            except wg.DeviceError as exc:
                raise MeshDeviceError(str(exc)) from exc
        elif choice.kind == "kernel":
            try:
                from pyroute2 import IPRoute

                with IPRoute() as ipr:
                    ipr.link("add", ifname=interface, kind="wireguard")
            except Exception as exc:
                raise MeshDeviceError(f"cannot create kernel WireGuard {interface}: {exc}") from exc
    return DeviceHandle(backend=choice.backend, kind=choice.kind, started_pid=started)


def observations_from(state: wg.DeviceState) -> dict[bytes, Observation]:
    out: dict[bytes, Observation] = {}
    for key, peer in state.peers.items():
        out[key] = Observation(
            wg_key=key,
            endpoint=None if peer.endpoint is None else str(peer.endpoint),
            last_handshake=None if not peer.last_handshake else int(peer.last_handshake),
        )
    return out


def local_networks(*, exclude: str | None = None) -> list[MeshNetwork]:
    """Networks this host is directly attached to (underlay), for endpoint preference."""
    nets: list[MeshNetwork] = []
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            for addr in ipr.get_addr():
                if names.get(addr["index"]) in (exclude, "lo"):
                    continue
                address = addr.get_attr("IFA_ADDRESS")
                if address:
                    net = ipaddress.ip_interface(f"{address}/{addr['prefixlen']}").network
                    if not net.is_loopback and not net.is_link_local:
                        nets.append(net)
    except Exception:  # best effort: without the hint every endpoint is tried in turn
        return []
    return nets


def _add_address_nodad(interface: str, address: str) -> None:
    """Add an IPv6 address without duplicate address detection, so PPN control can bind it at
    once (the control address derives from keys: a duplicate is impossible)."""
    iface = ipaddress.ip_interface(address)
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=interface)
            if not index:
                raise MeshDeviceError(f"no interface {interface}")
            have = {
                (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index[0])
            }
            if (str(iface.ip), iface.network.prefixlen) not in have:
                ipr.addr(
                    "add",
                    index=index[0],
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    flags=0x02,
                )  # IFA_F_NODAD
    except MeshDeviceError:
        raise
    except Exception as exc:
        raise MeshDeviceError(f"cannot add {address} to {interface}: {exc}") from exc


def _remove_address(interface: str, address: str) -> None:
    """Drop this node's previous mesh address after a re-address (best effort)."""
    iface = ipaddress.ip_interface(address)
    with contextlib.suppress(Exception):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=interface)
            if index:
                ipr.addr(
                    "del", index=index[0], address=str(iface.ip), prefixlen=iface.network.prefixlen
                )


_DISCARD_PORT = 9


def nudge(addresses: Sequence[str]) -> None:
    """Send one empty UDP datagram to each address (best effort): a peer whose session a key
    change dropped handshakes now, not at the next packet that happens to go its way
    (RFC-NOTES §7.15). Port 9 (discard): nobody needs to answer."""
    import socket

    for address in addresses:
        try:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(b"", (address, _DISCARD_PORT))
        except OSError:
            continue


def _new_peer_hosts(plan: wg.Plan) -> list[str]:
    """The host routes of peers a plan adds (a member that is new, or has a new key)."""
    hosts: list[str] = []
    for op in plan:
        if isinstance(op, wg.AddPeer):
            hosts += [
                str(net.network_address)
                for net in op.peer.allowed_ips
                if net.prefixlen == net.max_prefixlen
            ][:1]
    return hosts


def _endpoint(text: str | None) -> wg.Endpoint | None:
    if text is None:
        return None
    try:
        endpoint = wg.Endpoint.parse(text)
    except ValueError:
        return None
    # The planner takes IP literals only; a host name would need resolving first.
    return endpoint if endpoint.is_literal else None


def to_interface_config(
    desired: DesiredConfig, *, private_key: bytes, listen_port: int
) -> wg.InterfaceConfig:
    return wg.InterfaceConfig(
        private_key=private_key,
        listen_port=listen_port,
        peers=tuple(
            wg.PeerConfig(
                public_key=p.wg_key,
                endpoint=_endpoint(p.endpoint),
                allowed_ips=tuple(ipaddress.ip_network(a) for a in p.allowed_ips),
                persistent_keepalive=p.persistent_keepalive,
            )
            for p in desired.peers
        ),
    )


def _enable_forwarding(version: int) -> None:
    path = (
        "/proc/sys/net/ipv4/ip_forward"
        if version == 4
        else "/proc/sys/net/ipv6/conf/all/forwarding"
    )
    with contextlib.suppress(OSError), open(path, "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1\n")


class DeviceWireGuard:
    """Reconciles one WireGuard device to the roster (the agent's :class:`WireGuardPort`)."""

    def __init__(
        self,
        *,
        interface: str,
        backend: wg.Backend,
        private_key: bytes,
        self_identity: bytes,
        listen_port: int,
        fallback_address: str,
        fallback_control_address: str,
        preliminary: Callable[[], Sequence[PreliminaryMember]],
        plumb: bool = True,
    ) -> None:
        self.interface = interface
        self.backend = backend
        # Each pass's writes are verified by the read that starts the next pass (one full read
        # of the device per pass, not two; RFC-NOTES §6.5).
        self.reconciler = wg.Reconciler(backend)
        self.private_key = private_key
        self.self_identity = self_identity
        self.listen_port = listen_port
        self.fallback_address = fallback_address
        self.fallback_control_address = fallback_control_address
        self._plumbed_control: str | None = None
        self.preliminary = preliminary
        self.plumb = plumb
        self.last_topology: Topology | None = None
        self.last_report: wg.SyncReport | None = None
        self.last_state: wg.DeviceState | None = None  # the device as the last pass read it
        self._plumbed_address: str | None = None
        self.operations_applied = 0  # since start: 0 after a restart means "nothing disturbed"

    async def reconcile(self, roster: Roster) -> None:
        # The worker thread gets a copy made here, in the event loop: the loop goes on merging
        # pushed and pulled records into ``roster`` meanwhile, and a dict that changes size
        # under the thread's iteration raises (which would end the agent).
        snapshot = roster.copy()
        await trio.to_thread.run_sync(self.reconcile_now, snapshot)

    def desired(self, roster: Roster, state: wg.DeviceState, now: float) -> DesiredConfig:
        observations = observations_from(state)
        local = local_networks(exclude=self.interface) if self.plumb else []
        # Between handing an identity rotation over and restarting as the successor, this
        # node configures itself as the successor (RFC-NOTES §7.15).
        me = roster.view().current_identity(self.self_identity)
        topology = plan_topology(
            roster.view(),
            network=roster.network,
            self_identity=me,
            observations=observations,
            now=int(now),
            local_networks=local,
        )
        self.last_topology = topology
        return with_bootstrap_peers(
            topology.config,
            roster=roster,
            preliminary=self.preliminary(),
            self_identity=me,
            fallback_address=self.fallback_address,
            fallback_control_address=self.fallback_control_address,
            observations=observations,
            now=int(now),
            local_networks=local,
        )

    def reconcile_now(self, roster: Roster) -> wg.SyncReport:
        now = time.time()
        try:
            state = self.backend.read()
            self.last_state = state
            desired = self.desired(roster, state, now)
            if self.plumb and desired.address != self._plumbed_address:
                if self._plumbed_address is not None:
                    # Old one first: deleting a subnet's primary address takes the secondaries
                    # (the new one, in the same CIDR) with it.
                    _remove_address(self.interface, self._plumbed_address)
                wg.configure_interface(
                    self.interface, addresses=[desired.address], mtu=MTU, up=True
                )
                self._plumbed_address = desired.address
            if self.plumb and desired.control_address != self._plumbed_control:
                _add_address_nodad(self.interface, desired.control_address)
                self._plumbed_control = desired.control_address
            if self.plumb and desired.forwarding:
                _enable_forwarding(ipaddress.ip_interface(desired.address).version)
                _enable_forwarding(6)
            config = to_interface_config(
                desired, private_key=self.private_key, listen_port=self.listen_port
            )
            report = self.reconciler.sync(config, now=now, current=state)
        except (wg.DeviceError, wg.VerifyError, wg.DesiredStateError, wg.UAPIProtocolError) as exc:
            raise MeshDeviceError(str(exc)) from exc
        self.last_report = report
        if report.applied:
            self.operations_applied += len(report.plan)
            if self.plumb:
                nudge(_new_peer_hosts(report.plan))
        return report
