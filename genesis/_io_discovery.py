"""Join windows on the LAN: DNS-SD over mDNS with python-zeroconf (RFC-NOTES §5.12).

A sponsor with an open window announces a ``_ppn-join._tcp`` service whose TXT record holds
only public facts: the window number, a prefix of the mesh id and the protocol version; the SRV
record gives the pairing port. ``ppn join CODE`` without ``--sponsor`` browses for it and dials
the announcement whose window number is the code's.

Nothing derived from the code's secret part is announced, ever: 40 bits are few enough that
anything checkable against the secret (a hash, a MAC, a commitment) would let a listener on the
LAN try every secret offline. Because the announcement carries nothing secret, anyone can
announce the same window number; the joiner therefore keeps browsing during the ceremony and,
when it has seen more than one announcer for its window, ends with "interference: get a new
code" (:attr:`WindowFinder.interfered`). An impostor gets one online guess of the code (2^-40)
and can at most make the operators start again.

mDNS runs only on the interface addresses given (``interfaces``): the pairing listen address,
or every non-loopback IPv4 address of the host (the namespace, in tests). zeroconf runs its own
asyncio loop in a thread; this module talks to it through thread-safe calls and hands results
to trio through the trio token, so trio's loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

__all__ = [
    "MESH_PREFIX_HEX",
    "SERVICE_TYPE",
    "Announcement",
    "Announcer",
    "WindowFinder",
    "mdns_interfaces",
    "parse_announcement",
    "underlay_addresses",
]

SERVICE_TYPE = "_ppn-join._tcp.local."
# 8 hex digits (32 bits) tell meshes on one LAN apart for the operator; the mesh id is public.
MESH_PREFIX_HEX = 8
TXT_VERSION = "1"


@dataclass(frozen=True, kw_only=True)
class Announcement:
    """One sponsor's announcement of an open window, as the joiner read it."""

    instance: str
    window: int
    mesh: str
    addresses: tuple[str, ...]
    port: int

    @property
    def host(self) -> str:
        return self.addresses[0]


def parse_announcement(
    instance: str, properties: dict[bytes, bytes | None], addresses: list[str], port: int | None
) -> Announcement | None:
    """An announcement from a resolved service, or None if it is not one we can use."""
    try:
        version = (properties.get(b"v") or b"").decode("ascii")
        window = int((properties.get(b"w") or b"").decode("ascii"))
        mesh = (properties.get(b"mesh") or b"").decode("ascii")
    except (UnicodeDecodeError, ValueError):
        return None
    usable = tuple(a for a in addresses if _is_underlay(a))
    if version != TXT_VERSION or not 1 <= window <= 999 or not port or not usable:
        return None
    return Announcement(instance=instance, window=window, mesh=mesh, addresses=usable, port=port)


def _is_underlay(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast)


def underlay_addresses(*, exclude_network: str | None = None) -> list[str]:
    """Every non-loopback, non-link-local IPv4 address of this host (this namespace), in
    interface order; addresses inside ``exclude_network`` (the mesh's own range) left out."""
    import ifaddr

    excluded = ipaddress.ip_network(exclude_network) if exclude_network else None
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6 entries are tuples; announcements and hints use IPv4
            address = ipaddress.ip_address(ip.ip)
            if address.is_loopback or address.is_link_local:
                continue
            if excluded is not None and address in excluded:
                continue
            if ip.ip not in found:
                found.append(ip.ip)
    return found


def mdns_interfaces(listen_host: str, *, exclude_network: str | None = None) -> list[str]:
    """Where to run mDNS for a pairing listener on ``listen_host``: that address alone when it
    is a specific non-loopback one, every underlay address for a wildcard, nothing for
    loopback (a joiner on the same host can be given ``--sponsor``)."""
    try:
        ip = ipaddress.ip_address(listen_host)
    except ValueError:
        return []
    if ip.is_unspecified:
        return underlay_addresses(exclude_network=exclude_network)
    if ip.is_loopback or ip.version != 4:
        return []
    return [listen_host]


def _zeroconf(interfaces: list[str]) -> Any:
    from zeroconf import IPVersion, Zeroconf

    return Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)


class Announcer:
    """The sponsor's side: announce the open window, withdraw it, close (sends goodbyes)."""

    def __init__(self, interfaces: list[str]) -> None:
        self._interfaces = interfaces
        self._zc: Any = None
        self._info: Any = None

    async def start(self) -> None:
        self._zc = await trio.to_thread.run_sync(_zeroconf, self._interfaces)

    def announce(self, *, window: int, mesh_id: bytes, port: int, name: str) -> None:
        """Announce ``window`` (replacing the previous one). Returns at once: probing for a
        unique instance name (about a second) runs on zeroconf's loop."""
        from zeroconf import ServiceInfo

        self.withdraw()
        mesh = mesh_id.hex()[:MESH_PREFIX_HEX]
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"ppn {name} window {window}.{SERVICE_TYPE}",
            port=port,
            properties={"v": TXT_VERSION, "w": str(window), "mesh": mesh},
            parsed_addresses=self._interfaces,
        )
        asyncio.run_coroutine_threadsafe(
            self._zc.async_register_service(self._info, allow_name_change=True), self._zc.loop
        )

    def withdraw(self) -> None:
        if self._info is not None and self._zc is not None:
            asyncio.run_coroutine_threadsafe(
                self._zc.async_unregister_service(self._info), self._zc.loop
            )
            self._info = None

    async def aclose(self) -> None:
        zc, self._zc = self._zc, None
        if zc is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(zc.close)


class WindowFinder:
    """The joiner's side: browse for announcements of one window number, keep browsing while
    the ceremony runs, and tell whether more than one announcer claimed that window."""

    def __init__(self, window: int, interfaces: list[str]) -> None:
        self.window = window
        self._interfaces = interfaces
        self._zc: Any = None
        self._browser: Any = None
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, tuple[str, ...], int], Announcement] = {}
        self._order: list[Announcement] = []
        self._changed = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._pending: trio.MemorySendChannel[str] | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        from zeroconf import DNSQuestionType, ServiceBrowser

        self._token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[str](64)
        self._pending = send
        self._zc = await trio.to_thread.run_sync(_zeroconf, self._interfaces)
        nursery.start_soon(self._resolver, receive)
        # QU: responders answer a question asked for the first time at once instead of after
        # the 20-120 ms a shared record's multicast answer waits (RFC 6762 §5.4, §6).
        self._browser = ServiceBrowser(
            self._zc, SERVICE_TYPE, handlers=[self._on_change], question_type=DNSQuestionType.QU
        )
        self._ask_now()

    def _ask_now(self) -> None:
        # The browser's first query waits 20-120 ms (RFC 6762 §5.2, for many browsers starting
        # at once); a joiner is one process the operator just started, so it asks at once too.
        from zeroconf import const
        from zeroconf._dns import DNSQuestion
        from zeroconf._protocol.outgoing import DNSOutgoing

        out = DNSOutgoing(const._FLAGS_QR_QUERY)
        question = DNSQuestion(SERVICE_TYPE, const._TYPE_PTR, const._CLASS_IN)
        question.unicast = True
        out.add_question(question)
        self._zc.send(out)

    def _on_change(self, **kw: Any) -> None:
        # Runs on zeroconf's loop thread: resolve from the cache when the answer carried the
        # SRV/TXT/A records (it usually does), otherwise hand the name to a trio task.
        from zeroconf import ServiceInfo, ServiceStateChange

        if kw["state_change"] is ServiceStateChange.Removed:
            return
        name: str = kw["name"]
        info = ServiceInfo(SERVICE_TYPE, name)
        if info.load_from_cache(self._zc):
            self._add(info)
        elif self._token is not None and self._pending is not None:
            pending = self._pending
            self._token.run_sync_soon(self._send_pending, pending, name)

    @staticmethod
    def _send_pending(pending: trio.MemorySendChannel[str], name: str) -> None:
        try:
            pending.send_nowait(name)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a flood of names: the browser's next query brings them again

    async def _resolver(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async for name in receive:
            zc = self._zc
            if zc is None:
                return
            info = await trio.to_thread.run_sync(
                zc.get_service_info, SERVICE_TYPE, name, 1500, abandon_on_cancel=True
            )
            if info is not None:
                self._add(info)

    def _add(self, info: Any) -> None:
        found = parse_announcement(info.name, info.properties, info.parsed_addresses(), info.port)
        if found is None or found.window != self.window:
            return
        key = (found.instance, found.addresses, found.port)
        with self._lock:
            if key in self._seen:
                return
            self._seen[key] = found
            self._order.append(found)
        if self._token is not None:
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def seen(self) -> list[Announcement]:
        with self._lock:
            return list(self._order)

    @property
    def interfered(self) -> bool:
        """More than one announcer for this window: someone besides the sponsor claims it."""
        return len(self.seen) > 1

    async def first(
        self, timeout: float, tick: Callable[[float], None] | None = None
    ) -> Announcement | None:
        """The first announcement of the window, or None after ``timeout`` seconds. Asks again
        every second (the browser's own schedule backs off)."""
        deadline = trio.current_time() + timeout
        start = trio.current_time()
        while not self.seen:
            now = trio.current_time()
            if now >= deadline:
                return None
            with trio.move_on_at(min(deadline, now + 1.0)) as scope:
                await self._changed.wait()
            if scope.cancelled_caught and not self.seen:
                if tick is not None:
                    tick(trio.current_time() - start)
                await trio.to_thread.run_sync(self._ask_now)
        return self.seen[0]

    async def settle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a second announcer (used before reporting a failure)."""
        with trio.move_on_after(seconds):
            while not self.interfered:
                await self._changed.wait()

    async def aclose(self) -> None:
        zc, self._zc = self._zc, None
        if self._pending is not None:
            self._pending.close()
        if zc is not None:
            browser = self._browser

            def close() -> None:
                if browser is not None:
                    browser.cancel()
                zc.close()

            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(close)
