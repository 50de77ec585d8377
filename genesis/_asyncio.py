"""The asyncio adapter for both sides of the ceremony (RFC-NOTES §12).

The same loop as :func:`genesis._trio.run_ceremony`, on asyncio streams: the peer's bytes go
into the :class:`Joiner` or :class:`Sponsor` core, the core's events are handled (the operator's SAS decision runs in
its own task, so a timer or the peer's abort is handled while the operator thinks), and the
core's bytes go out. The clock is the event loop's (``loop.time()``), which the core only ever
compares with itself. Nothing here decides anything the trio adapter does not.

:func:`serve_windows` is the sponsor's pairing server on asyncio: the trio one's window book,
claims and spends, held within the same limits (64 connections, 4 per source, the oldest
unconfirmed one evicted at the cap), which :class:`ppn._listener_limits.ConnectionBook` decides
for both loops' guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ppn._listener_limits import ConnectionBook, ListenerLimits

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
    "ServeOutcome",
    "join",
    "join_asyncio",
    "join_streams",
    "run_joiner",
    "serve_windows",
    "serve_windows_asyncio",
]

# The pairing listener's limits, as in genesis._trio (RFC-NOTES §5.7, §5.11).
MAX_PAIRING_CONNECTIONS = 64
PAIRING_PER_SOURCE = 4
PRE_CONFIRM_TIMEOUT = 10.0

RECEIVE_SIZE = 65536
Decide = Callable[[SasReady], Awaitable[ConfirmSas | Abort]]
Persist = Callable[[Joined], Awaitable[None]]


async def run_joiner(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    core: CeremonyCore[Any],
    *,
    decide: Decide,
    joined: Persist,
    window_requested: Callable[[JoinRequested], AcceptWindow | Abort] | None = None,
    spend_requested: Callable[[SpendRequested], SpendCode | Abort] | None = None,
) -> Joined | Failed:
    """Drive ``core`` over the stream pair to its end; closes the writer. Never raises for the
    peer's behaviour (a failure is a :class:`Failed`). A sponsor's core also asks
    ``window_requested`` and ``spend_requested``."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    result: Joined | Failed | None = None
    asking: set[asyncio.Task[None]] = set()
    reading: asyncio.Task[bytes] | None = None

    async def ask(event: SasReady) -> None:
        decision = await decide(event)
        if not core.wants_close:
            core.send(decision, loop.time())
            wake.set()

    try:
        while True:
            while (event := core.next_event()) is not None:
                if isinstance(event, JoinRequested):
                    assert window_requested is not None, "a sponsor's core needs window_requested"
                    core.send(window_requested(event), loop.time())
                elif isinstance(event, SpendRequested):
                    assert spend_requested is not None, "a sponsor's core needs spend_requested"
                    core.send(spend_requested(event), loop.time())
                elif isinstance(event, SasReady):
                    task = asyncio.create_task(ask(event))
                    asking.add(task)
                    task.add_done_callback(asking.discard)
                elif isinstance(event, Joined):
                    try:
                        await joined(event)
                    except GenesisError as exc:
                        # Not recorded: drop the last message and hang up (as the trio adapter).
                        core.data_to_send()
                        return Failed(reason=FailureReason.STATE, detail=str(exc))
                    result = event
                elif isinstance(event, Failed):
                    result = event
            data = core.data_to_send()
            if data:
                try:
                    writer.write(data)
                    await writer.drain()
                except OSError:
                    if not core.wants_close:
                        core.receive_data(b"", loop.time())
                    continue
            if core.wants_close:
                break
            if reading is None:
                reading = asyncio.create_task(reader.read(RECEIVE_SIZE))
            waking = asyncio.create_task(wake.wait())
            deadline = core.get_timer()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(
                {reading, waking}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            waking.cancel()
            wake.clear()
            if reading in done:
                try:
                    received = reading.result()
                except OSError:
                    received = b""
                reading = None
                try:
                    core.receive_data(received, loop.time())
                except RemoteProtocolError:
                    pass  # the core queued an abort and a Failed event; loop to send them
            elif not done:
                core.handle_timer(loop.time())
    finally:
        if reading is not None:
            reading.cancel()
        for task in asking:
            task.cancel()
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)
    assert result is not None
    return result


async def join_streams(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    me: PartyInfo,
    code: JoinCode,
    endpoints: tuple[str, ...],
    decide: Decide,
    joined: Persist,
    sas_digits: int = DEFAULT_SAS_DIGITS,
    step_timeout: float = 60.0,
    sas_timeout: float = 120.0,
) -> Joined | Failed:
    """The joiner's side over an already connected stream pair."""
    core = Joiner(
        me=me,
        code=code,
        endpoints=endpoints,
        nonce=secrets.token_bytes(16),
        now=asyncio.get_running_loop().time(),
        sas_digits=sas_digits,
        step_timeout=step_timeout,
        sas_timeout=sas_timeout,
    )
    return await run_joiner(reader, writer, core, decide=decide, joined=joined)


async def join(
    host: str,
    port: int,
    *,
    me: PartyInfo,
    code: JoinCode,
    endpoints: tuple[str, ...],
    decide: Decide,
    joined: Persist,
    sas_digits: int = DEFAULT_SAS_DIGITS,
    step_timeout: float = 60.0,
    sas_timeout: float = 120.0,
) -> Joined | Failed:
    """Connect to a sponsor's pairing port and run the joiner's side of the ceremony
    (the asyncio twin of :func:`genesis._trio.join`)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout=step_timeout
        )
    except TimeoutError:
        return Failed(reason=FailureReason.TIMEOUT)
    except OSError:
        return Failed(reason=FailureReason.UNREACHABLE)
    return await join_streams(
        reader,
        writer,
        me=me,
        code=code,
        endpoints=endpoints,
        decide=decide,
        joined=joined,
        sas_digits=sas_digits,
        step_timeout=step_timeout,
        sas_timeout=sas_timeout,
    )


join_asyncio = join  # the name ``genesis`` exports (beside the trio adapter's ``join``)


# --- sponsor -------------------------------------------------------------------------------------


@dataclass
class ServeOutcome:
    """How a sponsor's pairing server ended: the joined member, or why it stopped."""

    joined: Joined | None = None
    failure: FailureReason | None = None
    failures: list[Failed] = field(default_factory=list)


class _Pairing:
    """One pairing connection: the glue between its Sponsor core and the window book, and
    what the connection book needs of it (source, admitted = key confirmed, close)."""

    def __init__(self, book: WindowBook, source: str, task: asyncio.Task[Any] | None) -> None:
        self.book = book
        self.source = source
        self.task = task
        self.claimed: int | None = None
        self.admitted = False  # the joiner proved the code: never evicted to make room
        self.closing = False

    def close(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()

    def window_requested(self, event: JoinRequested) -> AcceptWindow | Abort:
        now = asyncio.get_running_loop().time()
        status, code = self.book.claim(event.window, now, shared=True)
        if status is WindowStatus.BUSY:
            return Abort(reason=FailureReason.CROWDED)
        if status is WindowStatus.MISSING or code is None:
            return Abort(reason=FailureReason.NO_WINDOW)
        self.claimed = event.window
        return AcceptWindow(code=code)

    def spend_requested(self, event: SpendRequested) -> SpendCode | Abort:
        status = self.book.spend(event.window, asyncio.get_running_loop().time())
        if status is WindowStatus.BUSY:
            return Abort(reason=FailureReason.CROWDED)
        if status is WindowStatus.MISSING:
            return Abort(reason=FailureReason.NO_WINDOW)
        return SpendCode()


async def serve_windows(
    listeners: list[socket.socket],
    *,
    me: PartyInfo,
    mesh_id: bytes,
    book: WindowBook,
    decide: Decide,
    joined: Persist,
    show_code: Callable[[JoinCode], Awaitable[None]],
    keep_open: bool = False,
    sas_digits: int = DEFAULT_SAS_DIGITS,
    step_timeout: float = 60.0,
    sas_timeout: float = 120.0,
    sas_modulus: int | None = None,
) -> ServeOutcome:
    """Open a window, show its code, serve joiners on ``listeners`` (listening sockets, e.g.
    ``socket.create_server``) until one joins or the window is spent; as
    :func:`genesis.serve_windows` (trio) does, with the same arguments but the listeners."""
    loop = asyncio.get_running_loop()
    outcome = ServeOutcome()
    finished = asyncio.Event()
    held: ConnectionBook[_Pairing] = ConnectionBook(
        ListenerLimits(max_connections=MAX_PAIRING_CONNECTIONS, per_source=PAIRING_PER_SOURCE)
    )

    async def open_window() -> bool:
        try:
            # A random number: a window's number must not be guessable (issue 14, finding 11).
            pick = secrets.randbelow(MAX_WINDOW)
            code = book.open(loop.time(), secrets.token_bytes(5), pick=pick)
        except RateLimited:
            outcome.failure = FailureReason.RATE_LIMITED
            return False
        await show_code(code)
        return True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "local"
        if finished.is_set() or not held.make_room(source):
            writer.transport.abort()
            return
        pairing = _Pairing(book, source, asyncio.current_task())
        held.add(pairing)
        try:
            await ceremony(reader, writer, pairing)
        except asyncio.CancelledError:
            if not pairing.closing:
                raise  # the server is stopping, not an eviction
        finally:
            held.remove(pairing)
            writer.transport.abort()

    async def ceremony(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pairing: _Pairing
    ) -> None:
        core = Sponsor(
            me=me,
            mesh_id=mesh_id,
            nonce=secrets.token_bytes(16),
            now=loop.time(),
            sas_digits=sas_digits,
            sas_modulus=sas_modulus,
            step_timeout=step_timeout,
            sas_timeout=sas_timeout,
            pre_confirm_timeout=min(step_timeout, PRE_CONFIRM_TIMEOUT),
            spend_check=True,
        )

        async def confirmed(event: SasReady) -> ConfirmSas | Abort:
            pairing.admitted = True
            return await decide(event)

        result = await run_joiner(
            reader, writer, core, decide=confirmed, joined=joined,
            window_requested=pairing.window_requested, spend_requested=pairing.spend_requested,
        )  # fmt: skip
        if isinstance(result, Failed):
            outcome.failures.append(result)
        if pairing.claimed is None:
            return  # crowded or no such window: the open window is untouched
        spent = isinstance(result, Joined) or result.code_spent
        book.release(
            pairing.claimed,
            loop.time(),
            joined=isinstance(result, Joined),
            code_spent=spent,
            shared=True,
        )
        if isinstance(result, Joined):
            outcome.joined = result
            finished.set()
        elif spent and not (keep_open and await open_window()):
            outcome.failure = outcome.failure or result.reason
            finished.set()

    async def expire() -> None:
        # A window past its lifetime closes once no ceremony is using it.
        while True:
            expiry = book.next_expiry()
            delay = math.inf if expiry is None else max(expiry - loop.time(), 1.0)
            await asyncio.sleep(min(delay, 3600.0))
            book.expire(loop.time())
            if len(book) == 0:
                outcome.failure = FailureReason.TIMEOUT
                finished.set()
                return

    if not await open_window():
        return outcome
    servers = [await asyncio.start_server(handle, sock=sock) for sock in listeners]
    expiring = asyncio.ensure_future(expire())
    try:
        await finished.wait()
    finally:
        expiring.cancel()
        for server in servers:
            server.close()
        for pairing in list(held.connections):
            pairing.close()
        tasks = [p.task for p in held.connections if p.task is not None]
        await asyncio.gather(expiring, *tasks, return_exceptions=True)
    return outcome


serve_windows_asyncio = serve_windows  # the name ``genesis`` exports
