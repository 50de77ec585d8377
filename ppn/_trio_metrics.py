"""The Prometheus endpoint of a ppn process, and the metrics every listener has (issue 17;
RFC-NOTES §3.1).

:func:`serve_metrics` answers ``GET /metrics`` with the text exposition of one
``prometheus_client`` registry, the process's own (never the library's global one, so tests
and embedders running several services in one process keep them apart). It is served from a
trio listener behind a :class:`ListenerGuard` with small limits instead of
``prometheus_client.start_http_server``, whose threaded ``http.server`` gives every client a
thread and keeps a connection as long as the client likes: here a scrape is one request of at
most :data:`MAX_REQUEST` bytes, answered and closed within :data:`METRICS_LIMITS`'
``first_frame_deadline``, with at most a handful held at once.

:class:`ListenerMetrics` reads, at scrape time, what each guard of the process already counts
(held connections against the cap, refusals by reason, evictions, accept() shortages): the
listeners' own paths pay nothing for being observed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._trio_listener import Connection, ListenerGuard, ListenerLimits

__all__ = [
    "CONTENT_TYPE",
    "MAX_REQUEST",
    "METRICS_LIMITS",
    "ListenerMetrics",
    "answer",
    "serve_metrics",
]

log = logging.getLogger("ppn.metrics")

MAX_REQUEST = 8192  # bytes of request line and headers read before answering 431
METRICS_LIMITS = ListenerLimits(
    max_connections=16,  # Prometheus scrapes one at a time; a few operators may curl too
    per_source=4,
    first_frame_deadline=5.0,  # the whole exchange: a scrape is never admitted
    idle_timeout=5.0,
    pre_auth_bytes=MAX_REQUEST,
)
_PATHS = frozenset({"/metrics", "/"})
# generate_latest writes the classic text format; every name here is plain ASCII, so it is
# version 0.0.4, which every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ListenerMetrics(Collector):
    """``ppn_listener_*`` for every guard added, labelled by the listener's name."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.guards: dict[str, ListenerGuard] = {}
        if registry is not None:
            registry.register(self)

    def add(self, name: str, guard: ListenerGuard) -> None:
        self.guards[name] = guard

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "ppn_listener_connections", "connections the listener holds", labels=["listener"]
        )
        cap = GaugeMetricFamily(
            "ppn_listener_max_connections",
            "the listener's connection cap (RFC-NOTES §9.8)",
            labels=["listener"],
        )
        refused = CounterMetricFamily(
            "ppn_listener_refusals",
            "connections closed at once: per_source (the source's cap) or full (the cap, every "
            "held connection admitted)",
            labels=["listener", "reason"],
        )
        evicted = CounterMetricFamily(
            "ppn_listener_evictions",
            "unadmitted connections closed to make room for a new one",
            labels=["listener"],
        )
        shortages = CounterMetricFamily(
            "ppn_listener_accept_shortages",
            "accept() calls that failed for lack of descriptors or memory",
            labels=["listener"],
        )
        for name, guard in self.guards.items():
            book = guard.book
            held.add_metric([name], len(book.connections))
            cap.add_metric([name], guard.limits.max_connections)
            refused.add_metric([name, "per_source"], book.refused_per_source)
            refused.add_metric([name, "full"], book.refused_full)
            evicted.add_metric([name], book.evicted)
            shortages.add_metric([name], guard.shortages)
        yield from (held, cap, refused, evicted, shortages)


def _response(status: str, body: bytes, content_type: str, head: bool) -> bytes:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return header if head else header + body


def answer(request: bytes, registry: CollectorRegistry) -> bytes:
    """The HTTP response to one request head (request line and headers)."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _response("400 Bad Request", b"bad request\n", "text/plain", False)
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET only\n", "text/plain", False)
    if target not in _PATHS:
        return _response("404 Not Found", b"try /metrics\n", "text/plain", method == "HEAD")
    body = generate_latest(registry)
    return _response("200 OK", body, CONTENT_TYPE, method == "HEAD")


async def _scrape(registry: CollectorRegistry, stream: trio.SocketStream, _: Connection) -> None:
    received = b""
    while b"\r\n\r\n" not in received:
        if len(received) > MAX_REQUEST:
            big = _response("431 Request Header Fields Too Large", b"", "text/plain", False)
            await stream.send_all(big)
            return
        data = await stream.receive_some(MAX_REQUEST)
        if not data:
            return
        received += data
    # The collectors read the services' live objects: this runs on the loop that mutates them,
    # never on a thread. A scrape of a large agent (a gauge per peer) is a few milliseconds.
    await stream.send_all(answer(received, registry))


async def serve_metrics(
    registry: CollectorRegistry,
    host: str | None,
    port: int,
    *,
    guard: ListenerGuard | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` on ``host:port`` until cancelled (port 0 picks one: see the listeners
    passed to ``started``)."""
    guard = guard or ListenerGuard(METRICS_LIMITS)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)

    async def handler(stream: trio.SocketStream, connection: Connection) -> None:
        try:
            await _scrape(registry, stream, connection)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away

    await guard.serve(handler, listeners)
