"""The asyncio adapter for the joiner's side of the ceremony (RFC-NOTES §12).

The same loop as :func:`genesis._trio.run_ceremony`, on asyncio streams: bytes from the sponsor go
into the :class:`Joiner` core, the core's events are handled (the operator's SAS decision runs in
its own task, so a timer or the peer's abort is handled while the operator thinks), and the
core's bytes go out. The clock is the event loop's (``loop.time()``), which the core only ever
compares with itself. Nothing here decides anything the trio adapter does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from ._code import JoinCode
from ._core import CeremonyCore
from ._derive import PartyInfo
from ._errors import GenesisError, RemoteProtocolError
from ._events import Abort, ConfirmSas, Failed, FailureReason, Joined, SasReady
from ._joiner import Joiner
from ._sponsor import DEFAULT_SAS_DIGITS

__all__ = ["join", "join_asyncio", "join_streams", "run_joiner"]

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
) -> Joined | Failed:
    """Drive ``core`` over the stream pair to its end; closes the writer. Never raises for the
    peer's behaviour (a failure is a :class:`Failed`)."""
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
                if isinstance(event, SasReady):
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
