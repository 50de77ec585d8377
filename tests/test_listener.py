"""ppn._trio_listener: limits, frame metering, and the guard on real loopback sockets."""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import textwrap

import pytest
import trio

from ppn._trio_listener import (
    Connection,
    FrameMeter,
    ListenerGuard,
    ListenerLimits,
    default_max_connections,
)


def test_limits_are_positive_and_the_default_leaves_a_reserve() -> None:
    with pytest.raises(ValueError, match="per_source"):
        ListenerLimits(per_source=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        ListenerLimits(idle_timeout=-1)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 1 <= default_max_connections() < soft
    assert ListenerLimits().max_connections == default_max_connections()


def test_frame_meter_follows_boundaries_across_any_split() -> None:
    stream = b"".join(struct.pack(">I", n) + b"x" * n for n in (3, 0, 70000, 5))
    for step in (1, 2, 3, 7, 4096, len(stream)):
        meter = FrameMeter()
        largest = 0
        for i in range(0, len(stream), step):
            largest = max(largest, meter.feed(stream[i : i + step]))
        assert largest == 70000 and meter.pending == 0
    meter = FrameMeter()
    assert meter.feed(struct.pack(">I", 10) + b"abc") == 10 and meter.pending == 7
    assert meter.feed(b"defghij") == 0 and meter.pending == 0
    assert meter.feed(b"\0\0") == 0 and meter.pending == 2


async def _serve(guard: ListenerGuard, nursery: trio.Nursery, admit_on: bytes = b"") -> int:
    async def handler(stream: trio.SocketStream, conn: Connection) -> None:
        async with stream:
            while data := await stream.receive_some(100):
                if admit_on and admit_on in data:
                    conn.admit()
                conn.touch()
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(guard.serve, handler, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def _closed(stream: trio.SocketStream, timeout: float = 20.0) -> bool:
    """True if the guard closed the stream (EOF or reset) within ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(100):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def _echo(port: int, source: str = "127.0.0.1") -> bool:
    with trio.move_on_after(20):
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        async with stream:
            try:
                await stream.send_all(b"ping")
                return await stream.receive_some(100) == b"ping"
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
    return False


async def _open(port: int, source: str = "127.0.0.1") -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_per_source_cap_refuses_only_that_source(nursery: trio.Nursery) -> None:
    guard = ListenerGuard(ListenerLimits(max_connections=100, per_source=3))
    port = await _serve(guard, nursery)
    held = [await _open(port, "127.0.0.2") for _ in range(3)]
    for s in held:
        await s.send_all(b"x")
        assert await s.receive_some(10) == b"x"
    extra = await _open(port, "127.0.0.2")
    assert await _closed(extra)
    assert guard.refused == 1
    assert await _echo(port, "127.0.0.3")
    for s in (*held, extra):
        await s.aclose()


async def test_at_the_cap_the_oldest_unadmitted_goes_and_admitted_ones_stay(
    nursery: trio.Nursery,
) -> None:
    guard = ListenerGuard(ListenerLimits(max_connections=3, per_source=10))
    port = await _serve(guard, nursery, admit_on=b"AUTH")
    admitted = await _open(port)
    await admitted.send_all(b"AUTH")
    assert await admitted.receive_some(10) == b"AUTH"
    idlers = [await _open(port) for _ in range(2)]
    await trio.sleep(0.2)
    assert guard.active == 3
    assert await _echo(port)  # room is made: the oldest idler is closed
    assert guard.evicted == 1
    assert await _closed(idlers[0])
    await admitted.send_all(b"still")
    assert await admitted.receive_some(10) == b"still"
    # Every held connection admitted: a newcomer is refused instead.
    idlers.append(await _open(port))  # the echo client left: this one fills the cap again
    for s in idlers[1:]:
        await s.send_all(b"AUTH")
        assert await s.receive_some(10) == b"AUTH"
    assert guard.active == 3
    third = await _open(port)
    assert await _closed(third)
    assert guard.refused == 1 and guard.evicted == 1
    for s in idlers[1:]:
        await s.aclose()
    for s in (admitted, third):
        await s.aclose()


async def test_deadlines_close_silent_and_unadmitted_connections(nursery: trio.Nursery) -> None:
    limits = ListenerLimits(first_frame_deadline=0.5, idle_timeout=1.0)
    guard = ListenerGuard(limits)
    port = await _serve(guard, nursery, admit_on=b"AUTH")
    chatty = await _open(port)  # talks, but never admitted: the first-frame deadline holds
    admitted = await _open(port)
    await admitted.send_all(b"AUTH")
    assert await admitted.receive_some(10) == b"AUTH"
    start = trio.current_time()
    with trio.move_on_after(20):
        while guard.active > 1:
            await chatty.send_all(b"x")
            await trio.sleep(0.1)
            await admitted.send_all(b"y")  # the admitted one stays while it talks
    assert guard.active == 1
    assert trio.current_time() - start < 15
    assert await _closed(admitted)  # then silence ends it at the idle timeout
    await chatty.aclose()
    await admitted.aclose()


def test_out_of_descriptors_backs_off_with_one_log_line() -> None:
    """A real process at its fd limit: accept() fails with EMFILE; one line, no storm, and it
    accepts again once descriptors are free."""
    script = textwrap.dedent(
        """
        import logging, os, resource, socket, sys, threading, time
        import trio
        from ppn._trio_listener import ListenerGuard, ListenerLimits
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        served = []
        async def handler(stream, conn):
            async with stream:
                await stream.send_all(b"hi")
                await stream.receive_some(10)
        async def main():
            guard = ListenerGuard(ListenerLimits(max_connections=1000, per_source=1000))
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as n:
                await n.start(guard.serve, handler, listeners)
                hog = []
                while True:  # use up the descriptors
                    try:
                        hog.append(os.open("/dev/null", os.O_RDONLY))
                    except OSError:
                        break
                os.close(hog.pop())  # one free: the client below needs it
                def client(out):
                    s = socket.create_connection(("127.0.0.1", port))
                    s.settimeout(20)
                    out.append(s.recv(10))
                    s.close()
                got = []
                t = threading.Thread(target=client, args=(got,))
                t.start()
                await trio.sleep(3)
                assert guard.shortages >= 3, guard.shortages
                for fd in hog:
                    os.close(fd)
                await trio.to_thread.run_sync(t.join)
                print("shortages", guard.shortages, "got", got, flush=True)
                n.cancel_scope.cancel()
        trio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "got [b'hi']" in done.stdout, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot accept" in lines[0], done.stderr
