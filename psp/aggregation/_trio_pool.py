"""The aggregator's vault connections (RFC-NOTES §10): one TCP connection per vault exchange,
driven by the vault protocol's client core, and the pool that keeps idle ones between requests —
the only state the aggregator keeps.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from .._connection import ClientConnection, State

__all__ = ["RECEIVE_SIZE", "Connect", "VaultLink", "VaultPool", "close_now", "split_address"]

RECEIVE_SIZE = 65536

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""Opens a stream to ``host:port`` (tests inject in-memory vaults through one)."""


class VaultLink:
    """One connection to a vault, driven by the vault protocol's client core: a trio stream, or a
    raw non-blocking socket served by the epoll fan-out, which becomes a stream when a task takes
    it over (:attr:`stream`)."""

    def __init__(
        self,
        stream: trio.abc.Stream | None,
        key: tuple[str, int],
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self._stream = stream
        self.sock = sock
        self.key = key
        self.conn = ClientConnection()
        self.idle_since = 0.0

    @property
    def raw(self) -> bool:
        return self._stream is None

    @property
    def stream(self) -> trio.abc.Stream:
        if self._stream is None:
            assert self.sock is not None
            self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(self.sock))
            self.sock = None
        return self._stream

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.conn.receive_data(bytes(data))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self._stream is not None:
            close_now(self._stream)


def close_now(stream: trio.abc.Stream) -> None:
    """Close without awaiting (a cancelled task must not block on it); the peer sees EOF."""
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
        return
    for half in (getattr(stream, "send_stream", None), getattr(stream, "receive_stream", None)):
        close = getattr(half, "close", None)
        if close is not None:
            close()


class VaultPool:
    """Idle vault connections by address, reused across requests (the only state kept).

    Bounded: at most ``per_address`` idle links per address and ``max_idle`` in all; a link idle
    for ``idle_timeout`` seconds is closed (swept at least every ``idle_timeout / 2``).

    ``connect`` opens a connection; without one the pool opens plain TCP connections
    (:attr:`plain_tcp`), which the epoll fan-out may open and serve as raw sockets itself.
    """

    def __init__(
        self,
        *,
        per_address: int = 4,
        max_idle: int = 4096,
        idle_timeout: float = 30.0,
        connect: Connect | None = None,
    ) -> None:
        self.plain_tcp = connect is None
        self._connect: Connect = trio.open_tcp_stream if connect is None else connect
        self.per_address = per_address
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[VaultLink]] = {}
        self._count = 0
        self._swept = 0.0
        self.connects = 0

    @property
    def idle(self) -> int:
        return self._count

    def take_idle(self, host: str, port: int, vault: bytes | None = None) -> VaultLink | None:
        """A fresh-enough idle link to ``host:port``, if any (the caller connects otherwise).

        ``vault``: the target's vault id. A link whose hello named another vault is closed
        instead, so the target gets a fresh connection and its hello is checked like any other
        (RFC-NOTES §10.1): a pooled link is never used for a vault it did not greet as."""
        key = (host, port)
        now = trio.current_time()
        while links := self._idle.get(key):
            link = links.pop()
            self._count -= 1
            if not links:
                del self._idle[key]
            hello = link.conn.server
            if now - link.idle_since < self.idle_timeout and (
                vault is None or hello is None or hello.vault == vault
            ):
                return link
            link.close()
        return None

    def adopt(self, link: VaultLink) -> None:
        """Count a connection the caller made itself."""
        self.connects += 1

    async def acquire(
        self, host: str, port: int, vault: bytes | None = None
    ) -> tuple[VaultLink, bool]:
        """A link and whether it was pooled (a pooled one may turn out closed); ``vault`` as
        for :meth:`take_idle`."""
        link = self.take_idle(host, port, vault)
        if link is not None:
            return link, True
        stream = await self._connect(host, port)
        self.connects += 1
        return VaultLink(stream, (host, port)), False

    def release(self, link: VaultLink) -> None:
        now = trio.current_time()
        if now - self._swept > self.idle_timeout / 2:
            self._sweep(now)
        links = self._idle.setdefault(link.key, [])
        if (
            link.conn.state is not State.IDLE
            or len(links) >= self.per_address
            or self._count >= self.max_idle
        ):
            if not links:
                del self._idle[link.key]
            link.close()
            return
        link.idle_since = now
        links.append(link)
        self._count += 1

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key in list(self._idle):
            keep = [x for x in self._idle[key] if now - x.idle_since < self.idle_timeout]
            for x in self._idle[key]:
                if now - x.idle_since >= self.idle_timeout:
                    x.close()
            self._count -= len(self._idle[key]) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        for links in self._idle.values():
            for link in links:
                link.close()
        self._idle.clear()
        self._count = 0


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(address)
    return host.strip("[]"), int(port)
