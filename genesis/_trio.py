"""The one trio adapter for both ceremony roles: sockets, tasks, clocks and cancellation.

:func:`run_ceremony` drives a Sponsor or Joiner core over a byte stream, asking an
application object for the decisions the core leaves open (which window, does the operator
confirm the SAS, persist the result). :func:`serve_windows` is the sponsor's pairing server;
:func:`join` the joiner's client. All waits use ``trio.current_time()``, so tests can run every
timeout under ``autojump_clock``.
"""

from __future__ import annotations

import errno
import math
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ._code import MAX_WINDOW, JoinCode
from ._core import CeremonyCore
from ._derive import PartyInfo
from ._errors import GenesisError, RemoteProtocolError
from ._events import (
    Abort,
    AcceptWindow,
    ConfirmSas,
    Failed,
    FailureReason,
    Joined,
    JoinRequested,
    SasReady,
    SpendCode,
    SpendRequested,
)
from ._joiner import Joiner
from ._sponsor import DEFAULT_SAS_DIGITS, Sponsor
from ._window import RateLimited, WindowBook, WindowStatus

__all__ = [
    "CeremonyApp",
    "ServeOutcome",
    "SponsorApp",
    "join",
    "connect_failure",
    "join_stream",
    "run_ceremony",
    "serve_windows",
]

RECEIVE_SIZE = 65536
# The pairing listener's limits (RFC-NOTES §5.7, §5.11): connections held at once, and from one
# source address; until its key confirmation a connection has PRE_CONFIRM_TIMEOUT for each wait
# (a joiner's software answers at once), and at the cap the oldest unconfirmed one is closed.
MAX_PAIRING_CONNECTIONS = 64
PAIRING_PER_SOURCE = 4
PRE_CONFIRM_TIMEOUT = 10.0


class CeremonyApp(Protocol):
    """The decisions a ceremony needs from its application (the CLI, a node agent, a test)."""

    async def decide(self, event: SasReady) -> ConfirmSas | Abort:
        """Show the SAS, return the operator's answer (sponsor: with a Grant when accepting),
        or an Abort (e.g. REFUSED when the joiner's name or keys are already in the roster)."""

    async def joined(self, event: Joined) -> None:
        """Persist the result; runs before the last message is sent."""


class SponsorApp(CeremonyApp, Protocol):
    def window_requested(self, event: JoinRequested) -> AcceptWindow | Abort:
        """Claim the window a joiner asked for, or refuse it."""

    def spend_requested(self, event: SpendRequested) -> SpendCode | Abort:
        """Let this ceremony spend the window's one guess, or refuse (crowded)."""


async def run_ceremony(
    stream: trio.abc.Stream, core: CeremonyCore[Any], app: CeremonyApp
) -> Joined | Failed:
    """Drive ``core`` over ``stream`` to its end. Never raises for peer behaviour."""
    result: Joined | Failed | None = None
    # The operator's answer arrives in another task; it marks the core dirty and wakes the
    # main loop out of its receive so the answer's bytes and events are handled at once.
    dirty = False
    receiving: trio.CancelScope | None = None

    async def ask(event: SasReady) -> None:
        nonlocal dirty
        decision = await app.decide(event)
        if not core.wants_close:
            core.send(decision, trio.current_time())
            dirty = True
            if receiving is not None:
                receiving.cancel()

    async def flush() -> None:
        data = core.data_to_send()
        if data:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if not core.wants_close:
                    core.receive_data(b"", trio.current_time())

    try:
        async with trio.open_nursery() as nursery:
            abandoned = False
            while True:
                dirty = False
                while (event := core.next_event()) is not None:
                    if isinstance(event, JoinRequested):
                        core.send(_sponsor_app(app).window_requested(event), trio.current_time())
                    elif isinstance(event, SpendRequested):
                        core.send(_sponsor_app(app).spend_requested(event), trio.current_time())
                    elif isinstance(event, SasReady):
                        nursery.start_soon(ask, event)
                    elif isinstance(event, Joined):
                        try:
                            await app.joined(event)
                        except GenesisError as exc:
                            # Not recorded: drop the last message (the sponsor's `done`) and hang
                            # up, so the peer does not believe the join completed.
                            core.data_to_send()
                            result = Failed(
                                reason=FailureReason.STATE, code_spent=True, detail=str(exc)
                            )
                            abandoned = True
                            break
                        result = event
                    elif isinstance(event, Failed):
                        result = event
                if abandoned:
                    break
                await flush()
                if dirty:
                    continue  # an answer came in while we were flushing: handle it first
                if core.wants_close:
                    break
                deadline = core.get_timer()
                with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                    receiving = scope
                    try:
                        data = bytes(await stream.receive_some(RECEIVE_SIZE))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    try:
                        core.receive_data(data, trio.current_time())
                    except RemoteProtocolError:
                        pass  # the core queued an abort and a Failed event; loop to send them
                receiving = None
                if scope.cancelled_caught and not dirty:
                    core.handle_timer(trio.current_time())
            nursery.cancel_scope.cancel()
    except BaseException:
        # Cancelled (Ctrl-C, the server stopping): tell the peer, so its operator reads "the
        # other operator cancelled" at once instead of waiting for a timeout (RFC-NOTES §5.8).
        if not core.wants_close:
            core.send(Abort(reason=FailureReason.CANCELLED), trio.current_time())
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await flush()
                await stream.aclose()
        raise
    with trio.move_on_after(1):
        await stream.aclose()
    assert result is not None
    return result


def _sponsor_app(app: CeremonyApp) -> SponsorApp:
    assert hasattr(app, "window_requested")
    return app  # type: ignore[return-value]


# --- sponsor -------------------------------------------------------------------------------------


@dataclass
class ServeOutcome:
    """How a sponsor's pairing server ended: the joined member, or why it stopped."""

    joined: Joined | None = None
    failure: FailureReason | None = None
    failures: list[Failed] = field(default_factory=list)


@dataclass(eq=False)
class _Connection:
    """Per-connection glue between one Sponsor core and the window book."""

    book: WindowBook
    decide_cb: Callable[[SasReady], Awaitable[ConfirmSas | Abort]]
    joined_cb: Callable[[Joined], Awaitable[None]]
    claimed: int | None = None
    confirmed: bool = False  # the joiner proved the code: never evicted to make room

    def window_requested(self, event: JoinRequested) -> AcceptWindow | Abort:
        status, code = self.book.claim(event.window, trio.current_time(), shared=True)
        if status is WindowStatus.BUSY:
            return Abort(reason=FailureReason.CROWDED)
        if status is WindowStatus.MISSING or code is None:
            return Abort(reason=FailureReason.NO_WINDOW)
        self.claimed = event.window
        return AcceptWindow(code=code)

    def spend_requested(self, event: SpendRequested) -> SpendCode | Abort:
        status = self.book.spend(event.window, trio.current_time())
        if status is WindowStatus.BUSY:
            return Abort(reason=FailureReason.CROWDED)
        if status is WindowStatus.MISSING:
            return Abort(reason=FailureReason.NO_WINDOW)
        return SpendCode()

    async def decide(self, event: SasReady) -> ConfirmSas | Abort:
        self.confirmed = True
        return await self.decide_cb(event)

    async def joined(self, event: Joined) -> None:
        await self.joined_cb(event)


def _peer_host(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "local"
    except OSError:
        return "unknown"


async def serve_windows(
    listeners: list[trio.abc.Listener[trio.abc.Stream]] | list[trio.SocketListener],
    *,
    me: PartyInfo,
    mesh_id: bytes,
    book: WindowBook,
    decide: Callable[[SasReady], Awaitable[ConfirmSas | Abort]],
    joined: Callable[[Joined], Awaitable[None]],
    show_code: Callable[[JoinCode], Awaitable[None]],
    keep_open: bool = False,
    sas_digits: int = DEFAULT_SAS_DIGITS,
    step_timeout: float = 60.0,
    sas_timeout: float = 120.0,
    sas_modulus: int | None = None,
) -> ServeOutcome:
    """Open a window, show its code, serve joiners until one joins or the window is spent.

    A ceremony that spent the code burns the window: then the server stops with that failure,
    or — with ``keep_open`` — opens a new window (new code) unless the attempt limit says no.
    A ceremony that ended before a guess (crowded, vanished early) leaves the window open.
    """
    outcome = ServeOutcome()

    async def open_window() -> bool:
        try:
            # A random number: a window's number must not be guessable (issue 14, finding 11).
            pick = secrets.randbelow(MAX_WINDOW)
            code = book.open(trio.current_time(), secrets.token_bytes(5), pick=pick)
        except RateLimited:
            outcome.failure = FailureReason.RATE_LIMITED
            return False
        await show_code(code)
        return True

    if not await open_window():
        return outcome

    async with trio.open_nursery() as nursery:
        held: dict[_Connection, trio.CancelScope] = {}  # insertion order = age
        by_source: dict[str, int] = {}

        async def handle(stream: trio.abc.Stream) -> None:
            source = _peer_host(stream)
            if by_source.get(source, 0) >= PAIRING_PER_SOURCE:
                await trio.aclose_forcefully(stream)
                return
            if len(held) >= MAX_PAIRING_CONNECTIONS:
                oldest = next((c for c in held if not c.confirmed), None)
                if oldest is None:
                    await trio.aclose_forcefully(stream)
                    return
                held.pop(oldest).cancel()
            connection = _Connection(book=book, decide_cb=decide, joined_cb=joined)
            by_source[source] = by_source.get(source, 0) + 1
            with trio.CancelScope() as scope:
                held[connection] = scope
                try:
                    await ceremony(stream, connection)
                finally:
                    held.pop(connection, None)
                    by_source[source] -= 1
                    if not by_source[source]:
                        del by_source[source]

        async def ceremony(stream: trio.abc.Stream, connection: _Connection) -> None:
            core = Sponsor(
                me=me,
                mesh_id=mesh_id,
                nonce=secrets.token_bytes(16),
                now=trio.current_time(),
                sas_digits=sas_digits,
                sas_modulus=sas_modulus,
                step_timeout=step_timeout,
                sas_timeout=sas_timeout,
                pre_confirm_timeout=min(step_timeout, PRE_CONFIRM_TIMEOUT),
                spend_check=True,
            )
            result = await run_ceremony(stream, core, connection)
            if isinstance(result, Failed):
                outcome.failures.append(result)
            if connection.claimed is None:
                return  # crowded or no such window: the open window is untouched
            spent = isinstance(result, Joined) or result.code_spent
            book.release(
                connection.claimed,
                trio.current_time(),
                joined=isinstance(result, Joined),
                code_spent=spent,
                shared=True,
            )
            if isinstance(result, Joined):
                outcome.joined = result
                nursery.cancel_scope.cancel()
                return
            if spent and not (keep_open and await open_window()):
                outcome.failure = outcome.failure or result.reason
                nursery.cancel_scope.cancel()

        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handle, [listener])

        async def expire() -> None:
            # A window past its lifetime closes once no ceremony is using it.
            while True:
                expiry = book.next_expiry()
                now = trio.current_time()
                target = math.inf if expiry is None else max(expiry, now + 1.0)
                await trio.sleep_until(target)
                book.expire(trio.current_time())
                if len(book) == 0:
                    outcome.failure = FailureReason.TIMEOUT
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(expire)
    for listener in listeners:
        with trio.move_on_after(1):
            await listener.aclose()
    return outcome


# --- joiner --------------------------------------------------------------------------------------


@dataclass
class _JoinerApp:
    decide_cb: Callable[[SasReady], Awaitable[ConfirmSas | Abort]]
    joined_cb: Callable[[Joined], Awaitable[None]]

    async def decide(self, event: SasReady) -> ConfirmSas | Abort:
        return await self.decide_cb(event)

    async def joined(self, event: Joined) -> None:
        await self.joined_cb(event)


async def join(
    host: str,
    port: int,
    *,
    me: PartyInfo,
    code: JoinCode,
    endpoints: tuple[str, ...],
    decide: Callable[[SasReady], Awaitable[ConfirmSas | Abort]],
    joined: Callable[[Joined], Awaitable[None]],
    sas_digits: int = DEFAULT_SAS_DIGITS,
    step_timeout: float = 60.0,
    sas_timeout: float = 120.0,
    sas_modulus: int | None = None,
) -> Joined | Failed:
    """Connect to a sponsor's pairing port and run the joiner's side of the ceremony."""
    with trio.move_on_after(step_timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            return Failed(reason=FailureReason.UNREACHABLE, detail=connect_failure(exc, host, port))
    if scope.cancelled_caught:
        return Failed(reason=FailureReason.TIMEOUT)
    return await join_stream(
        stream,
        me=me,
        code=code,
        endpoints=endpoints,
        decide=decide,
        joined=joined,
        sas_digits=sas_digits,
        step_timeout=step_timeout,
        sas_timeout=sas_timeout,
        sas_modulus=sas_modulus,
    )


_CONNECT_REASONS = {
    errno.ECONNREFUSED: "connection refused (nothing listens there, or a firewall rejects it)",
    errno.EHOSTUNREACH: "no route to the host",
    errno.ENETUNREACH: "no route to the network",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "the connection timed out",
}


def connect_failure(exc: OSError, host: str, port: int) -> str:
    """Why connecting to ``host:port`` failed, as the operator should read it: refused, no
    route, or unknown host (trio wraps per-address errors in a group; the first one says)."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host!r} ({exc.strerror or exc})"
    causes: list[BaseException] = [exc]
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup):
        causes = list(group.exceptions) + causes
    for cause in causes:
        number = getattr(cause, "errno", None)
        if number in _CONNECT_REASONS:
            return f"{_CONNECT_REASONS[number]}: {host}:{port}"
    return f"{host}:{port}: {getattr(exc, 'strerror', None) or exc}"


async def join_stream(
    stream: trio.abc.Stream,
    *,
    me: PartyInfo,
    code: JoinCode,
    endpoints: tuple[str, ...],
    decide: Callable[[SasReady], Awaitable[ConfirmSas | Abort]],
    joined: Callable[[Joined], Awaitable[None]],
    sas_digits: int = DEFAULT_SAS_DIGITS,
    step_timeout: float = 60.0,
    sas_timeout: float = 120.0,
    sas_modulus: int | None = None,
) -> Joined | Failed:
    """The joiner's side over an already connected stream."""
    core = Joiner(
        me=me,
        code=code,
        endpoints=endpoints,
        nonce=secrets.token_bytes(16),
        now=trio.current_time(),
        sas_digits=sas_digits,
        sas_modulus=sas_modulus,
        step_timeout=step_timeout,
        sas_timeout=sas_timeout,
    )
    return await run_ceremony(stream, core, _JoinerApp(decide_cb=decide, joined_cb=joined))
