"""How the two sides of ``ppn genesis|invite|join`` find each other (RFC-NOTES §5.12, §5.13).

- **Discovery**: ``ppn join CODE`` without ``--sponsor`` or ``--listen`` finds the sponsor by
  the window number, through the sponsor's mDNS announcement (:mod:`genesis._io_discovery`).
- **Reverse dial**: ``ppn join CODE --listen HOST:PORT`` waits and ``ppn genesis|invite --to
  HOST:PORT`` dials it; only the TCP direction changes, the roles and messages stay.
- **Hints and endpoints**: the sponsor's hint names every underlay address it listens on,
  never 0.0.0.0; a joiner without ``--endpoint`` offers its underlay addresses, and the sponsor
  records the address it saw the joiner's connection come from.
- **--up**: after a successful ceremony the command goes on as ``ppn up``.
"""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import trio

from ppn.cli import CommandError
from ppn.ports import WIREGUARD_PORT

from . import _trio
from ._bundle import MemberRecord, parse_endpoint
from ._code import JoinCode
from ._events import Abort, ConfirmSas, Failed, FailureReason, Joined, SasReady

__all__ = [
    "DialOut",
    "SeenListener",
    "announcing",
    "default_endpoints",
    "hint_addresses",
    "join",
    "run_up",
    "with_seen_endpoint",
    "with_sponsor_endpoint",
]

# How long a joiner looks for its window on the LAN: a sponsor needs about a second to
# announce (mDNS probing, RFC 6762 §8.1), and the operator may type the code before it did.
DISCOVERY_TIMEOUT = 15.0
# After a failed ceremony, how long a joiner keeps browsing for a second announcer before it
# decides between "interference" and the failure's own reason.
INTERFERENCE_SETTLE = 1.0
# A reverse-dialling sponsor retries a joiner that is not listening yet this often.
REDIAL_INTERVAL = 1.0
# How long ``ppn join --listen`` waits for the sponsor to dial: the window's whole lifetime.
LISTEN_TIMEOUT = 600.0

Say = Callable[[str], None]


class Show(Protocol):
    """Start a progress display: ``show(what, total_seconds, left_in=...)``."""

    def __call__(self, what: str, total: float | None, *, left_in: str = "") -> None: ...


def _no_show(what: str, total: float | None, *, left_in: str = "") -> None:
    pass


# The address a sponsor's current connection came from, set by the listener when it accepts
# (each connection's handler task starts with a copy of the accepting task's context, so every
# ceremony sees its own peer) and read when the ceremony's result is recorded.
_SEEN_FROM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "genesis_seen_from", default=None
)
# The host a joiner dialled (``--sponsor``, or the address its announcement gave), read when
# the joiner writes its wg-quick file.
_DIALLED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "genesis_dialled", default=None
)


def _host_of(stream: trio.abc.Stream) -> str | None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return str(peer[0])


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- sponsor -------------------------------------------------------------------------------------


class SeenListener(trio.abc.Listener[trio.abc.Stream]):
    """A pairing listener that remembers, per connection, the address it came from."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self.socket = inner.socket

    async def accept(self) -> trio.abc.Stream:
        stream = await self.inner.accept()
        _SEEN_FROM.set(_host_of(stream))
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


class DialOut(trio.abc.Listener[trio.abc.Stream]):
    """``--to HOST:PORT``: the sponsor's 'listener' dials the joiner instead of accepting.

    It dials once per window (:meth:`rearm` when a new window opens), retrying every second
    while the joiner is not listening yet; after a connection it waits, so a burnt window is
    not redialled with the old code."""

    def __init__(self, host: str, port: int, say: Say) -> None:
        self.host, self.port, self.say = host, port, say
        self._armed = trio.Event()
        self._armed.set()

    def rearm(self) -> None:
        self._armed.set()

    async def accept(self) -> trio.abc.Stream:
        while True:
            await self._armed.wait()
            reported = None
            while True:
                try:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    if reason != reported:
                        self.say(
                            f"joining node at {format_hostport(self.host, self.port)} not "
                            f"reachable yet ({reason}); retrying every {REDIAL_INTERVAL:g} s ..."
                        )
                        reported = reason
                    await trio.sleep(REDIAL_INTERVAL)
                    continue
                self._armed = trio.Event()
                _SEEN_FROM.set(self.host)
                return stream

    async def aclose(self) -> None:
        pass


def hint_addresses(bound_host: str, port: int, *, exclude_network: str | None) -> list[str]:
    """The HOST:PORT texts a joiner can dial: the bound address, or for a wildcard every
    non-loopback underlay address (never 0.0.0.0; loopback only if there is nothing else)."""
    from ._io_discovery import underlay_addresses

    if not ipaddress.ip_address(bound_host).is_unspecified:
        return [format_hostport(bound_host, port)]
    found = underlay_addresses(exclude_network=exclude_network)
    return [format_hostport(a, port) for a in found] or [format_hostport("127.0.0.1", port)]


@asynccontextmanager
async def announcing(
    enabled: bool, interfaces: list[str], *, mesh_id: bytes, port: int, name: str
) -> AsyncIterator[Callable[[JoinCode], None]]:
    """Yields ``announce(code)``: announces the code's window number (public) on
    ``interfaces`` until the block ends; a no-op when disabled or there is no interface."""
    if not enabled or not interfaces:
        yield lambda code: None
        return
    from ._io_discovery import Announcer

    announcer = Announcer(interfaces)
    await announcer.start()
    try:
        yield lambda code: announcer.announce(
            window=code.window, mesh_id=mesh_id, port=port, name=name
        )
    finally:
        announcer.withdraw()
        await announcer.aclose()


def with_seen_endpoint(member: MemberRecord) -> MemberRecord:
    """The joiner's record as the sponsor keeps it: the address its connection came from is
    added first (same port as its first offered endpoint, else WireGuard's default) when it is
    not among the offered ones — behind a NAT, that is the only address that works."""
    seen = _SEEN_FROM.get()
    if seen is None or ipaddress.ip_address(seen.split("%", 1)[0]).is_loopback:
        return member
    hosts = []
    for endpoint in member.endpoints:
        try:
            hosts.append(parse_endpoint(endpoint)[0])
        except ValueError:
            continue
    if seen in hosts:
        return member
    port = WIREGUARD_PORT
    if member.endpoints:
        try:
            port = parse_endpoint(member.endpoints[0])[1]
        except ValueError:
            pass
    return replace(member, endpoints=(format_hostport(seen, port), *member.endpoints))


# --- joiner --------------------------------------------------------------------------------------


def with_sponsor_endpoint(
    roster: tuple[MemberRecord, ...], sponsor: bytes
) -> tuple[MemberRecord, ...]:
    """The roster as the joiner keeps it: a sponsor that recorded no endpoint (``ppn genesis``
    without ``--endpoint``) gets the host this joiner dialled, at WireGuard's default port, so
    the joiner's wg-quick file has an Endpoint for it. A sponsor that dialled in (``--listen``)
    is behind a NAT: its address is not one to send to, and its keepalives find the joiner."""
    dialled = _DIALLED.get()
    if dialled is None:
        return roster
    return tuple(
        replace(m, endpoints=(format_hostport(dialled, WIREGUARD_PORT),))
        if m.identity == sponsor and not m.endpoints
        else m
        for m in roster
    )


def default_endpoints() -> tuple[str, ...]:
    """What a joiner without ``--endpoint`` offers: each underlay address, WireGuard's port."""
    from ._io_discovery import underlay_addresses

    return tuple(format_hostport(a, WIREGUARD_PORT) for a in underlay_addresses())


@dataclass(frozen=True, kw_only=True)
class JoinRoute:
    """How the joiner reaches the sponsor: dial it, wait for its dial, or find it by mDNS."""

    sponsor: tuple[str, int] | None = None
    listen: tuple[str, int] | None = None
    mdns: tuple[str, ...] = ()


async def join(
    route: JoinRoute,
    code: JoinCode,
    say: Say,
    decide: Callable[[SasReady], Awaitable[ConfirmSas | Abort]],
    *,
    show: Show = _no_show,
    **ceremony: Any,
) -> Joined | Failed:
    """The joiner's ceremony over the chosen route (RFC-NOTES §5.12, §5.13)."""
    if route.sponsor is not None:
        host, port = route.sponsor
        _DIALLED.set(host)
        return await _trio.join(host, port, code=code, decide=decide, **ceremony)
    if route.listen is not None:
        return await _join_listening(route.listen, code, say, decide, show=show, **ceremony)
    return await _join_discovered(route, code, say, decide, show=show, **ceremony)


async def _join_listening(
    listen: tuple[str, int],
    code: JoinCode,
    say: Say,
    decide: Callable[[SasReady], Awaitable[ConfirmSas | Abort]],
    *,
    show: Show,
    **ceremony: Any,
) -> Joined | Failed:
    host, port = listen
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1) from exc
    bound = listeners[0].socket.getsockname()
    hints = hint_addresses(bound[0], bound[1], exclude_network=None)
    say(
        f"waiting for the sponsor to dial this node; its operator runs "
        f"'ppn genesis|invite --to HOST:PORT' with one of: {', '.join(hints)}"
    )
    # One connection only: the first one in gets the ceremony (and its one guess of the code);
    # the listener closes at once so nobody queues behind it. The window's lifetime bounds the
    # wait: the sponsor's window closes after it anyway.
    show("waiting for the sponsor to dial in", LISTEN_TIMEOUT, left_in="in the window")
    try:
        with trio.move_on_after(LISTEN_TIMEOUT) as scope:
            stream = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    if scope.cancelled_caught:
        return Failed(reason=FailureReason.TIMEOUT, detail="no sponsor dialled in 10 min")
    say(f"sponsor connected from {_host_of(stream)}")
    show("pairing with the sponsor", _trio_step(ceremony), left_in="in this step")
    return await _trio.join_stream(stream, code=code, decide=decide, **ceremony)


def _trio_step(ceremony: dict[str, Any]) -> float:
    from ._core import STEP_TIMEOUT

    return float(ceremony.get("step_timeout", STEP_TIMEOUT))


async def _join_discovered(
    route: JoinRoute,
    code: JoinCode,
    say: Say,
    decide: Callable[[SasReady], Awaitable[ConfirmSas | Abort]],
    *,
    show: Show,
    **ceremony: Any,
) -> Joined | Failed:
    from ._io_discovery import WindowFinder, underlay_addresses

    interfaces = list(route.mdns) or underlay_addresses()
    if not interfaces:
        raise CommandError(
            "no network interface to look for the sponsor on; use --sponsor HOST:PORT", 14
        )
    finder = WindowFinder(code.window, interfaces)
    say(f"looking for join window {code.window} on the local network ...")
    show("looking", DISCOVERY_TIMEOUT)

    async def checked_decide(event: SasReady) -> ConfirmSas | Abort:
        answer = await decide(event)
        # Another announcer for the window, seen by the time the operator answered: the
        # ceremony may be with an impostor that guessed nothing yet but could be racing the
        # real sponsor. The code is given up (RFC-NOTES §5.12).
        if finder.interfered:
            return Abort(reason=FailureReason.WRONG_CODE)
        return answer

    async with trio.open_nursery() as nursery:
        try:
            await finder.start(nursery)
            found = await finder.first(DISCOVERY_TIMEOUT)
            if found is None:
                return Failed(
                    reason=FailureReason.UNREACHABLE,
                    detail=f"no sponsor on this network announces window {code.window}; "
                    "ask its operator for an address and use --sponsor HOST:PORT",
                )
            target = format_hostport(found.host, found.port)
            say(f"found window {code.window} of mesh {found.mesh}… at {target}")
            _DIALLED.set(found.host)
            show("connecting to the sponsor", _trio_step(ceremony), left_in="in this step")
            result = await _trio.join(
                found.host, found.port, code=code, decide=checked_decide, **ceremony
            )
            if isinstance(result, Failed):
                await finder.settle(INTERFERENCE_SETTLE)
            if isinstance(result, Failed) and finder.interfered:
                where = ", ".join(format_hostport(a.host, a.port) for a in finder.seen)
                return Failed(
                    reason=FailureReason.WRONG_CODE,
                    code_spent=True,
                    detail=f"interference: get a new code ({len(finder.seen)} announcers of "
                    f"window {code.window}: {where})",
                )
            return result
        finally:
            await finder.aclose()
            nursery.cancel_scope.cancel()


# --- --up ----------------------------------------------------------------------------------------


def run_up(state: Path, say: Say) -> int:
    """Go on as ``ppn up --state DIR`` (the node agent, until SIGTERM)."""
    from ppn.cli._main import build_parser
    from ppn.mesh import _cli as mesh_cli

    say("starting the node agent (ppn up) ...")
    # Parsed by the real ``ppn up`` parser, so every option it grows has its default here too
    # (a hand-built Namespace missed ``--metrics`` and the agent crashed after the join).
    args = build_parser(["ppn.mesh._cli"]).parse_args(["up", "--state", str(state)])
    return int(mesh_cli._up(args))
