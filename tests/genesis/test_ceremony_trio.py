"""The trio adapter: both roles over in-memory streams, every timeout under autojump_clock."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from genesis import (
    Abort,
    AttemptLimiter,
    ConfirmSas,
    Failed,
    FailureReason,
    Grant,
    JoinCode,
    Joined,
    SasReady,
    WindowBook,
    make_code,
    mesh_id_for,
)
from genesis import _messages as m
from genesis._trio import ServeOutcome, join_stream, serve_windows
from ppn import wire

from .ceremony_kit import party, record

ALPHA = party("alpha")
MESH = mesh_id_for(ALPHA.identity)


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs made by :meth:`connect`."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](16)

    async def connect(self) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        await self._send.send(theirs)
        return ours

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()


@dataclass
class SponsorHarness:
    listener: MemoryListener = field(default_factory=MemoryListener)
    book: WindowBook = field(default_factory=WindowBook)
    codes: list[JoinCode] = field(default_factory=list)
    code_shown: trio.Event = field(default_factory=trio.Event)
    answer: bool | None = True  # None: never answer
    joined: list[Joined] = field(default_factory=list)
    outcome: ServeOutcome | None = None

    async def show_code(self, code: JoinCode) -> None:
        self.codes.append(code)
        self.code_shown.set()

    async def decide(self, event: SasReady) -> ConfirmSas | Abort:
        if self.answer is None:
            await trio.sleep_forever()
        grant = Grant(cidr="10.8.0.0/24", address="10.8.0.2", roster=(record(ALPHA, "10.8.0.1"),))
        return ConfirmSas(accept=self.answer, grant=grant if self.answer else None)

    async def on_joined(self, event: Joined) -> None:
        self.joined.append(event)

    async def serve(self, keep_open: bool = False) -> None:
        self.outcome = await serve_windows(
            [self.listener],
            me=ALPHA,
            mesh_id=MESH,
            book=self.book,
            decide=self.decide,
            joined=self.on_joined,
            show_code=self.show_code,
            keep_open=keep_open,
        )


async def _yes(event: SasReady) -> ConfirmSas | Abort:
    return ConfirmSas(accept=True)


async def _never(event: SasReady) -> ConfirmSas | Abort:
    await trio.sleep_forever()
    raise AssertionError


async def _nothing(event: Joined) -> None:
    pass


async def _join(
    harness: SponsorHarness, code: JoinCode, decide=_yes, name: str = "beta"
) -> Joined | Failed:  # type: ignore[no-untyped-def]
    stream = await harness.listener.connect()
    return await join_stream(
        stream, me=party(name), code=code, endpoints=(), decide=decide, joined=_nothing
    )


async def test_join_over_streams() -> None:
    harness = SponsorHarness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        result = await _join(harness, harness.codes[0])
    assert isinstance(result, Joined) and result.member.name == "beta"
    assert harness.outcome is not None and harness.outcome.joined == result
    assert harness.joined == [result]


async def test_wrong_code_stops_both_and_burns_the_window() -> None:
    harness = SponsorHarness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        guess = make_code(harness.codes[0].window, secrets.token_bytes(5))
        result = await _join(harness, guess)
    assert isinstance(result, Failed) and result.reason is FailureReason.WRONG_CODE
    assert harness.outcome is not None and harness.outcome.failure is FailureReason.WRONG_CODE
    assert not harness.book.is_open(guess.window) and harness.joined == []


async def test_window_lifetime(autojump_clock: trio.testing.MockClock) -> None:
    harness = SponsorHarness()
    await harness.serve()
    assert harness.outcome is not None and harness.outcome.failure is FailureReason.TIMEOUT
    assert trio.current_time() == pytest.approx(600, abs=1.5)


async def test_silent_joiner_times_out_after_a_step_and_the_window_stays_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = SponsorHarness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        stream = await harness.listener.connect()  # connects, says nothing
        await trio.sleep(61)
        assert harness.book.is_open(harness.codes[0].window)  # no guess was made
        result = await _join(harness, harness.codes[0])
        await stream.aclose()
    assert isinstance(result, Joined)
    assert harness.outcome is not None
    assert [f.reason for f in harness.outcome.failures] == [FailureReason.TIMEOUT]


async def test_silent_sponsor_times_out_the_joiner(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    result = await join_stream(
        ours,
        me=party("beta"),
        code=make_code(1, bytes(5)),
        endpoints=(),
        decide=_yes,
        joined=_nothing,
    )
    assert isinstance(result, Failed) and result.reason is FailureReason.TIMEOUT
    assert trio.current_time() == pytest.approx(60)
    await theirs.aclose()


async def test_sas_confirmation_times_out(autojump_clock: trio.testing.MockClock) -> None:
    harness = SponsorHarness(answer=None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        start = trio.current_time()
        result = await _join(harness, harness.codes[0], decide=_never)
    assert isinstance(result, Failed) and result.reason is FailureReason.TIMEOUT
    assert trio.current_time() - start == pytest.approx(120, abs=1)
    assert harness.outcome is not None and harness.outcome.failure is FailureReason.TIMEOUT


async def test_sas_rejected_by_the_sponsor() -> None:
    harness = SponsorHarness(answer=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        result = await _join(harness, harness.codes[0])
    assert isinstance(result, Failed) and result.reason is FailureReason.SAS_REJECTED
    assert result.by_peer
    assert harness.outcome is not None and harness.outcome.failure is FailureReason.SAS_REJECTED


async def test_joiner_rejecting_interrupts_a_waiting_sponsor_operator() -> None:
    harness = SponsorHarness(answer=None)  # the sponsor's operator never answers

    async def no(event: SasReady) -> ConfirmSas | Abort:
        return ConfirmSas(accept=False)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(harness.serve)
            await harness.code_shown.wait()
            result = await _join(harness, harness.codes[0], decide=no)
    assert isinstance(result, Failed) and result.reason is FailureReason.SAS_REJECTED
    assert harness.outcome is not None and harness.outcome.failure is FailureReason.SAS_REJECTED


async def test_crowded_window() -> None:
    harness = SponsorHarness()
    release = trio.Event()
    second: list[Joined | Failed] = []

    async def slow_yes(event: SasReady) -> ConfirmSas | Abort:
        second.append(await _join(harness, harness.codes[0], name="gamma"))
        release.set()
        return ConfirmSas(accept=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        first = await _join(harness, harness.codes[0], decide=slow_yes)
    assert release.is_set()
    (crowded,) = second
    assert isinstance(crowded, Failed) and crowded.reason is FailureReason.CROWDED
    assert isinstance(first, Joined)


async def test_unknown_window() -> None:
    harness = SponsorHarness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        result = await _join(harness, make_code(harness.codes[0].window + 1, bytes(5)))
        assert isinstance(result, Failed) and result.reason is FailureReason.NO_WINDOW
        assert isinstance(await _join(harness, harness.codes[0]), Joined)


async def test_peer_vanishing_mid_ceremony() -> None:
    harness = SponsorHarness(answer=None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        stream = await harness.listener.connect()
        async with trio.open_nursery() as joiner:
            joiner.start_soon(
                partial(
                    join_stream,
                    stream,
                    me=party("beta"),
                    code=harness.codes[0],
                    endpoints=(),
                    decide=_never,
                    joined=_nothing,
                )
            )
            await trio.sleep(0.5)
            # The joiner's machine goes away while both look at the SAS: its socket closes
            # under it, so nothing more reaches the sponsor.
            await stream.aclose()
            joiner.cancel_scope.cancel()
    assert harness.outcome is not None
    assert harness.outcome.failure is FailureReason.PEER_VANISHED
    assert harness.joined == []


async def test_cancelled_joiner_tells_the_sponsor() -> None:
    """Ctrl-C (any cancellation) at the SAS prompt sends `abort cancelled` before closing, so
    the other operator reads "the other operator cancelled" at once (RFC-NOTES §5.8)."""
    harness = SponsorHarness(answer=None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        stream = await harness.listener.connect()
        with trio.move_on_after(0.5):
            await join_stream(
                stream,
                me=party("beta"),
                code=harness.codes[0],
                endpoints=(),
                decide=_never,
                joined=_nothing,
            )
    assert harness.outcome is not None
    assert harness.outcome.failure is FailureReason.CANCELLED
    assert [f.by_peer for f in harness.outcome.failures] == [True]
    assert harness.joined == []


@pytest.mark.parametrize(
    "garbage",
    [(m.MAX_FRAME + 1).to_bytes(4, "big"), wire.encode_frame(b"\xc1", max_size=16)],
    ids=["oversized", "malformed"],
)
async def test_bad_frames_end_that_connection_only(garbage: bytes) -> None:
    harness = SponsorHarness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        stream = await harness.listener.connect()
        await stream.send_all(garbage)
        reply = await stream.receive_some(1000)
        assert m.decode_message(reply[4:]) == m.Abort(reason="protocol")
        assert await _join(harness, harness.codes[0]) is not None
    assert harness.outcome is not None and harness.outcome.joined is not None
    assert [f.reason for f in harness.outcome.failures] == [FailureReason.PROTOCOL]


async def test_guessing_limit_then_recovery(autojump_clock: trio.testing.MockClock) -> None:
    limiter = AttemptLimiter()
    harness = SponsorHarness(book=WindowBook(limiter=limiter))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve, True)
        await harness.code_shown.wait()
        for attempt in range(5):
            guess = make_code(harness.codes[-1].window, secrets.token_bytes(5))
            result = await _join(harness, guess)
            assert isinstance(result, Failed) and result.reason is FailureReason.WRONG_CODE, attempt
            await trio.sleep(1)
    assert harness.outcome is not None and harness.outcome.failure is FailureReason.RATE_LIMITED
    assert len(harness.codes) == 5  # a new window after each of the first four failures
    # The operator asks again within the hour: still refused; after it: a window opens.
    again = SponsorHarness(book=WindowBook(limiter=limiter))
    await again.serve()
    assert again.outcome is not None and again.outcome.failure is FailureReason.RATE_LIMITED
    await trio.sleep(3600)
    later = SponsorHarness(book=WindowBook(limiter=limiter))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(later.serve)
        await later.code_shown.wait()
        assert isinstance(await _join(later, later.codes[0]), Joined)


async def test_a_sponsor_that_cannot_record_the_joiner_does_not_confirm_it() -> None:
    from genesis import StateError

    harness = SponsorHarness()

    async def broken(event: Joined) -> None:
        raise StateError("disk full")

    harness.on_joined = broken  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.serve)
        await harness.code_shown.wait()
        result = await _join(harness, harness.codes[0])
    assert isinstance(result, Failed) and result.reason is FailureReason.PEER_VANISHED
    assert harness.outcome is not None and harness.outcome.joined is None
    (failed,) = harness.outcome.failures
    assert failed.reason is FailureReason.STATE and failed.detail == "disk full"


async def _join_unreachable(host: str, port: int) -> tuple[Failed | object, float]:
    from genesis._trio import join

    start = trio.current_time()
    result = await join(
        host,
        port,
        me=party("beta"),
        code=make_code(1, secrets.token_bytes(5)),
        endpoints=(),
        decide=_never,
        joined=_nothing,
    )
    return result, trio.current_time() - start


async def test_unreachable_sponsor_is_reported_at_once_with_the_reason() -> None:
    """Issue 16: refused and unknown host are told apart and reported at once (not "timed out"
    after a step)."""
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: the kernel refuses
        result, took = await _join_unreachable("127.0.0.1", port)
    assert isinstance(result, Failed) and result.reason is FailureReason.UNREACHABLE
    assert "refused" in result.detail and took < 2
    result, took = await _join_unreachable("no-such-sponsor.invalid", 9205)
    assert isinstance(result, Failed) and result.reason is FailureReason.UNREACHABLE
    assert "unknown host" in result.detail and took < 10


def test_connect_failure_names_no_route() -> None:
    import errno

    from genesis._trio import connect_failure

    for number in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        group = ExceptionGroup("all attempts failed", [OSError(number, "x")])
        error = OSError("all attempts to connect failed")
        error.__cause__ = group
        assert "no route" in connect_failure(error, "10.9.9.9", 9205)
