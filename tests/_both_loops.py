"""Run a role under trio or under asyncio, for the suites parametrised over both loops.

A server runs in a thread of its own, on its own event loop (:func:`served`), so the client in
the test's thread can be on either loop; every pairing goes over real TCP on loopback. The
servers are stopped by cancelling them, the way an embedding daemon stops them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import trio

LOOPS = ("trio", "asyncio")
T = TypeVar("T")

# A trio server: ``async def start(task_status)`` that reports its port through task_status and
# serves until cancelled. An asyncio server: ``async def start()`` returning (port, aclose).
TrioStart = Callable[..., Awaitable[None]]
AsyncioStart = Callable[[], Awaitable[tuple[Any, Callable[[], Awaitable[None]]]]]


def loop_param() -> Any:
    return pytest.mark.parametrize("loop", LOOPS)


def run(loop: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` to completion on a fresh ``loop``."""
    if loop == "trio":
        return trio.run(fn)
    return asyncio.run(fn())  # type: ignore[arg-type]


@contextmanager
def served(
    loop: str, trio_start: TrioStart, asyncio_start: AsyncioStart, *, timeout: float = 30.0
) -> Iterator[Any]:
    """Run a server on ``loop`` in a thread; yield what it reported (its port, usually)."""
    reported: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()
    stopper: list[Callable[[], None]] = []

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            token = trio.lowlevel.current_trio_token()
            stopper.append(
                lambda: trio.from_thread.run_sync(nursery.cancel_scope.cancel, trio_token=token)
            )
            value = await nursery.start(trio_start)
            reported.put(("ok", value))

    async def asyncio_main() -> None:
        value, aclose = await asyncio_start()
        done = asyncio.Event()
        running = asyncio.get_running_loop()
        stopper.append(lambda: running.call_soon_threadsafe(done.set))
        reported.put(("ok", value))
        try:
            await done.wait()
        finally:
            await aclose()

    def main() -> None:
        try:
            if loop == "trio":
                trio.run(trio_main)
            else:
                asyncio.run(asyncio_main())
        except BaseException as exc:  # reported to the test's thread
            reported.put(("error", exc))
        finally:
            stop.set()

    thread = threading.Thread(target=main, name=f"server-{loop}", daemon=True)
    thread.start()
    kind, value = reported.get(timeout=timeout)
    if kind == "error":
        raise value
    try:
        yield value
    finally:
        if not stop.is_set():
            try:
                stopper[0]()
            except (trio.RunFinishedError, RuntimeError):
                pass  # the server ended on its own meanwhile (its loop is gone)
        thread.join(timeout)
        assert not thread.is_alive(), "the server did not stop when cancelled"
        while not reported.empty():
            kind, value = reported.get()
            if kind == "error":
                raise value
