"""The metrics endpoint (ppn/_trio_metrics.py) against well-behaved and hostile clients, over real
TCP on loopback: what it answers, and that a client cannot hold it (RFC-NOTES §3.1)."""

from __future__ import annotations

from functools import partial

import trio
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from ppn._trio_listener import ListenerGuard, ListenerLimits
from ppn._trio_metrics import MAX_REQUEST, ListenerMetrics, serve_metrics


async def _start(
    nursery: trio.Nursery, limits: ListenerLimits
) -> tuple[int, CollectorRegistry, ListenerGuard]:
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    guard = ListenerGuard(limits)
    ListenerMetrics(registry).add("metrics", guard)
    listeners = await nursery.start(partial(serve_metrics, registry, "127.0.0.1", 0, guard=guard))
    return listeners[0].socket.getsockname()[1], registry, guard


async def _exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                received += data
    return received


LIMITS = ListenerLimits(
    max_connections=16, per_source=4, first_frame_deadline=0.5, idle_timeout=0.5
)


async def test_get_answers_the_registry_in_the_text_format() -> None:
    async with trio.open_nursery() as nursery:
        port, _, _ = await _start(nursery, LIMITS)
        answer = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert f"Content-Length: {len(body)}".encode() in head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["demo_things"].samples[0].value == 3
        held = [
            s
            for s in families["ppn_listener_connections"].samples
            if s.labels["listener"] == "metrics"
        ]
        assert held[0].value == 1  # the scrape itself
        nursery.cancel_scope.cancel()


async def test_everything_else_gets_a_short_refusal() -> None:
    async with trio.open_nursery() as nursery:
        port, _, _ = await _start(nursery, LIMITS)
        head_only = await _exchange(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
        assert b"demo_things" not in head_only
        for request, status in (
            (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
            (b"GET /secrets HTTP/1.1\r\n\r\n", b"404"),
            (b"\x16\x03\x01 hello\r\n\r\n", b"400"),  # a TLS client hello, say
        ):
            answer = await _exchange(port, request)
            assert answer.startswith(b"HTTP/1.1 " + status), answer
            assert b"demo_things" not in answer
        nursery.cancel_scope.cancel()


async def test_an_endless_request_head_is_cut_off() -> None:
    async with trio.open_nursery() as nursery:
        port, _, _ = await _start(nursery, LIMITS)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST + 10))
            received = b""
            with trio.fail_after(10):
                try:
                    while data := await stream.receive_some(65536):
                        received += data
                except trio.BrokenResourceError:
                    pass  # closed with our bytes unread: a reset
        assert received.startswith(b"HTTP/1.1 431")
        nursery.cancel_scope.cancel()


async def test_a_silent_or_slow_client_is_closed_and_a_flood_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        port, _, guard = await _start(nursery, LIMITS)
        # Four silent connections (the per-source cap) are held, a fifth is closed at once.
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        with trio.fail_after(10):
            while guard.active < 4:
                await trio.sleep(0.01)
        fifth = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            assert await fifth.receive_some(1) == b""
        assert guard.book.refused_per_source == 1
        # The silent ones are closed by the deadline (0.5 s here, 5 s by default).
        with trio.fail_after(10):
            for stream in silent:
                try:
                    assert await stream.receive_some(1) == b""
                except trio.BrokenResourceError:
                    pass
        with trio.fail_after(10):
            while guard.active:
                await trio.sleep(0.01)
        # A trickled request (one byte at a time) does not stretch the deadline.
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        began = trio.current_time()
        closed = False
        with trio.fail_after(10):
            for byte in b"GET /metrics HTTP/1.1\r\n" * 100:
                try:
                    await slow.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    closed = True
                    break
                await trio.sleep(0.05)
        assert closed and trio.current_time() - began < 5
        for stream in [*silent, fifth, slow]:
            await stream.aclose()
        # It still answers afterwards, and counted the refusal by reason.
        answer = await _exchange(port, b"GET / HTTP/1.1\r\n\r\n")
        body = answer.split(b"\r\n\r\n", 1)[1].decode()
        refusals = {
            (s.labels["listener"], s.labels["reason"]): s.value
            for f in text_string_to_metric_families(body)
            if f.name == "ppn_listener_refusals"
            for s in f.samples
        }
        assert refusals[("metrics", "per_source")] == 1 and refusals[("metrics", "full")] == 0
        nursery.cancel_scope.cancel()


def test_vault_metrics_count_into_the_right_buckets() -> None:
    from prometheus_client.exposition import generate_latest

    from ppn.cli._metrics import VaultMetrics
    from psp import ErrorCode

    registry = CollectorRegistry()
    vault = VaultMetrics(registry)
    for seconds in (0.0005, 0.0007, 0.003, 9.0):  # a bound itself counts in its bucket (le)
        vault.ok(seconds)
    vault.failed(ErrorCode.REPLAYED, 0.001, True)
    vault.failed(ErrorCode.INTERNAL, 0.001, False)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    bucket = "psp_vault_query_seconds_bucket"
    assert samples[(bucket, (("le", "0.0005"),))] == 1
    assert samples[(bucket, (("le", "0.001"),))] == 4
    assert samples[(bucket, (("le", "0.0025"),))] == 4
    assert samples[(bucket, (("le", "0.005"),))] == 5
    assert samples[(bucket, (("le", "5.0"),))] == 5
    assert (
        samples[(bucket, (("le", "+Inf"),))] == samples[("psp_vault_query_seconds_count", ())] == 6
    )
    assert abs(samples[("psp_vault_query_seconds_sum", ())] - 9.0062) < 1e-9
    assert samples[("psp_vault_queries_total", (("outcome", "ok"),))] == 4
    assert samples[("psp_vault_queries_total", (("outcome", "replayed"),))] == 1
    assert samples[("psp_vault_queries_total", (("outcome", "internal"),))] == 1
    assert samples[("psp_vault_denials_total", (("code", "replayed"),))] == 1
    assert ("psp_vault_denials_total", (("code", "internal"),)) not in samples
