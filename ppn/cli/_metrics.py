"""What each long-running role exposes with ``--metrics HOST[:PORT]`` (issue 17; RFC-NOTES §3.1;
the flag itself is ``ppn.cli._main.add_metrics_flag``, so parsers stay light).

The cores know nothing of Prometheus and the adapters only keep plain counters or call an
observer they were given (``psp._trio.QueryObserver``, ``psp.aggregation._trio_server.
FanOutObserver``). This module, in the composition root, turns those into ``prometheus_client``
metrics in one registry per process and serves it with ``ppn._trio_metrics.serve_metrics``.
What is already counted somewhere (listener guards, the agent's stats, the fleet's tables) is
read at scrape time by a collector, so it costs the service nothing between scrapes; only the
vault's and the aggregator's per-request figures are observed as they happen.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from .._trio_listener import ListenerGuard
from .._trio_metrics import METRICS_LIMITS, ListenerMetrics, serve_metrics
from ._main import CommandError

if TYPE_CHECKING:
    from psp._errors import ErrorCode
    from psp._trio_replica import ReplicaFollower
    from psp.aggregation._merge import VaultStatus

    from ..fleet._trio_controller import FleetController
    from ..fleet._trio_host import VmHostService
    from ..mesh._trio_agent import NodeAgent

__all__ = [
    "AgentCollector",
    "FanOutMetrics",
    "FleetCollector",
    "Metrics",
    "ReplicaCollector",
    "VaultMetrics",
    "VmHostCollector",
]

log = logging.getLogger("ppn.metrics")


class Metrics:
    """One process's registry, its listeners' collector and its HTTP endpoint. ``bind_status``:
    the exit status of the role's command when the metrics address cannot be bound."""

    def __init__(self, bind_status: int) -> None:
        self.bind_status = bind_status
        # No ``*_created`` series: they double the text and no dashboard of ours reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.listeners = ListenerMetrics(self.registry)

    def listener(self, name: str, guard: ListenerGuard) -> None:
        self.listeners.add(name, guard)

    async def serve(
        self,
        address: tuple[str, int],
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``started`` gets the bound address (logged as ``metrics``)."""
        guard = ListenerGuard(METRICS_LIMITS)
        self.listener("metrics", guard)
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(
                    partial(serve_metrics, self.registry, address[0], address[1], guard=guard)
                )
            except OSError as exc:
                raise CommandError(
                    f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror or exc}",
                    self.bind_status,
                ) from None
            host, port = listeners[0].socket.getsockname()[:2]
            log.info(
                "metrics on http://%s:%d/metrics",
                f"[{host}]" if ":" in host else host,
                port,
                extra={"event": "metrics", "address": f"{host}:{port}"},
            )
            task_status.started((host, port))


# --- the vault -------------------------------------------------------------------------------

# Seconds: a warm query answers in about 0.1-0.3 ms on loopback; heavy ones run on workers.
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class VaultMetrics(Collector):
    """``psp_vault_*``: the vault's ``QueryObserver``.

    Counted in plain integers and turned into metric families only when scraped:
    ``prometheus_client``'s ``Counter.inc`` and ``Histogram.observe`` take a lock each, about
    7 µs a request together on a loaded build machine against about 1 µs for this
    (``benchmarks/bench_metrics.py`` measures the whole). No lock is needed: the vault calls the
    observer from its event loop only, and the endpoint scrapes on the same loop.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answered_ok = 0
        self.failures: dict[str, int] = {}  # error code name -> requests that ended with it
        self.denials: dict[str, int] = {}  # error code name -> requests admission refused
        self.bucket_counts = [0] * (len(_QUERY_BUCKETS) + 1)  # the last one: above them all
        self.seconds_total = 0.0
        registry.register(self)

    def ok(self, seconds: float) -> None:
        self.answered_ok += 1
        self.bucket_counts[bisect_left(_QUERY_BUCKETS, seconds)] += 1
        self.seconds_total += seconds

    def failed(self, code: ErrorCode, seconds: float, denied: bool) -> None:
        name = code.name.lower()
        self.failures[name] = self.failures.get(name, 0) + 1
        if denied:
            self.denials[name] = self.denials.get(name, 0) + 1
        self.bucket_counts[bisect_left(_QUERY_BUCKETS, seconds)] += 1
        self.seconds_total += seconds

    def collect(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "psp_vault_queries",
            "requests answered, by outcome: ok or the error code's name",
            labels=["outcome"],
        )
        queries.add_metric(["ok"], self.answered_ok)
        for name, count in sorted(self.failures.items()):
            queries.add_metric([name], count)
        yield queries
        cumulative, buckets = 0, []
        for bound, count in zip((*_QUERY_BUCKETS, math.inf), self.bucket_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
        yield HistogramMetricFamily(
            "psp_vault_query_seconds",
            "from a request's arrival to its end or error frame",
            buckets=buckets,
            sum_value=self.seconds_total,
        )
        denials = CounterMetricFamily(
            "psp_vault_denials",
            "requests admission refused (RFC-NOTES §9.4), by error code",
            labels=["code"],
        )
        for name, count in sorted(self.denials.items()):
            denials.add_metric([name], count)
        yield denials


# --- the aggregator --------------------------------------------------------------------------

_FANOUT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_FANOUT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FanOutMetrics:
    """``psp_orchestration_*``: the aggregator's ``FanOutObserver``. Statuses are counted by
    status only: targets are named by clients, so a label per vault would let any client grow
    the registry without bound."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.targets = Histogram(
            "psp_orchestration_fanout_targets",
            "vaults a request named",
            buckets=_FANOUT_BUCKETS,
            registry=registry,
        )
        self.seconds = Histogram(
            "psp_orchestration_fanout_seconds",
            "from a request's last target to its done frame",
            buckets=_FANOUT_SECONDS,
            registry=registry,
        )
        self.statuses = Counter(
            "psp_orchestration_vault_statuses",
            "per-vault outcomes of fanned-out requests (RFC-NOTES §10.6)",
            ["status"],
            registry=registry,
        )

    def finished(self, targets: int, seconds: float, statuses: Iterable[VaultStatus]) -> None:
        self.targets.observe(targets)
        self.seconds.observe(seconds)
        for status in statuses:
            self.statuses.labels(status.name.lower()).inc()


# --- the node agent --------------------------------------------------------------------------


class AgentCollector(Collector):
    """``ppn_agent_*``, read from the running agent at scrape time."""

    def __init__(self, agent: NodeAgent, registry: CollectorRegistry) -> None:
        self.agent = agent
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        agent, node = self.agent, self.agent.node
        device = agent.device
        yield _gauge("ppn_agent_roster_generation", "roster generations saved", agent.generation)
        yield _gauge("ppn_agent_roster_records", "records in the signed roster", len(agent.roster))
        state = device.last_state
        yield _gauge(
            "ppn_agent_peers",
            "WireGuard peers on the device at the last reconcile",
            len(state.peers) if state is not None else 0,
        )
        ages = GaugeMetricFamily(
            "ppn_agent_peer_handshake_age_seconds",
            "seconds since the last WireGuard handshake with each member (none yet: absent)",
            labels=["peer"],
        )
        topology = device.last_topology
        if state is not None and topology is not None:
            now = time.time()
            for path in topology.paths:
                peer = state.peers.get(path.member.record.wg_key)
                if peer is not None and peer.last_handshake is not None:
                    ages.add_metric([path.member.name], max(0.0, now - peer.last_handshake))
        yield ages
        yield _counter(
            "ppn_agent_reconcile_operations",
            "WireGuard operations the reconcile passes applied",
            device.operations_applied,
        )
        stats = node.stats if node is not None else None
        passes = CounterMetricFamily(
            "ppn_agent_reconciles", "reconcile passes, by result", labels=["result"]
        )
        passes.add_metric(["ok"], stats.reconciles if stats else 0)
        passes.add_metric(["error"], stats.reconcile_errors if stats else 0)
        yield passes
        yield SummaryMetricFamily(
            "ppn_agent_reconcile_seconds",
            "wall time of the reconcile passes",
            count_value=(stats.reconciles + stats.reconcile_errors) if stats else 0,
            sum_value=stats.reconcile_seconds if stats else 0.0,
        )
        sync = CounterMetricFamily(
            "ppn_agent_syncs", "roster pulls and pushes, by result", labels=["kind", "result"]
        )
        if stats is not None:
            sync.add_metric(["pull", "ok"], stats.pulls_ok)
            sync.add_metric(["pull", "error"], stats.pulls_failed)
            sync.add_metric(["push", "ok"], stats.pushes_ok)
            sync.add_metric(["push", "error"], stats.pushes_failed)
        yield sync


# --- the fleet -------------------------------------------------------------------------------


class FleetCollector(Collector):
    """``ppn_fleet_*``, read from the fleet controller at scrape time."""

    def __init__(self, controller: FleetController, registry: CollectorRegistry) -> None:
        self.controller = controller
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        c = self.controller
        heartbeats = CounterMetricFamily(
            "ppn_fleet_heartbeats", "heartbeats received, by result", labels=["result"]
        )
        heartbeats.add_metric(["accepted"], c.heartbeats_accepted)
        heartbeats.add_metric(["refused"], c.heartbeats_refused)
        yield heartbeats
        yield _counter("ppn_fleet_evictions", "nodes evicted for silence", c.evictions)
        live = len(c.table.live_nodes())
        yield _gauge("ppn_fleet_live_nodes", "nodes whose heartbeats are current", live)


class VmHostCollector(Collector):
    """``ppn_vmhost_*``, read from the vm-host at scrape time."""

    def __init__(self, host: VmHostService, registry: CollectorRegistry) -> None:
        self.host = host
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "ppn_vmhost_heartbeats", "heartbeats sent, by result", labels=["result"]
        )
        sent.add_metric(["accepted"], self.host.heartbeats_sent)
        sent.add_metric(["missed"], self.host.heartbeats_missed)
        yield sent
        yield _gauge("ppn_vmhost_vms", "VMs this host knows", len(self.host.vms))


# --- a vault's replica -----------------------------------------------------------------------


class ReplicaCollector(Collector):
    """``psp_replica_*``, read from the follower (``ppn vault follow``) at scrape time."""

    def __init__(self, follower: ReplicaFollower, registry: CollectorRegistry) -> None:
        self.follower = follower
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        f = self.follower
        seq = f.stored_seq  # what is on disk, not what is checked and still being written
        # Staleness: how long since the replica last held the primary's head (since the start
        # while it never has): it grows while the follower is behind or the primary is gone.
        since = f.caught_up_at if f.caught_up_at is not None else f.started
        yield _counter(
            "psp_replica_entries_replicated",
            "entries written to the replica by this run",
            f.written,
        )
        yield _gauge("psp_replica_head", "the replica's last entry (seq)", seq)
        yield _gauge(
            "psp_replica_primary_head", "the primary's head at its last answer", f.primary_head
        )
        yield _gauge(
            "psp_replica_lag_entries",
            "entries the primary had at its last answer that the replica does not",
            max(0, f.primary_head - seq),
        )
        yield _gauge(
            "psp_replica_lag_seconds",
            "seconds since the replica last held the primary's head",
            time.monotonic() - since,
        )
        yield _gauge("psp_replica_connected", "1 while connected to the primary", int(f.connected))
        yield _counter(
            "psp_replica_reconnects",
            "connections to the primary lost or refused, and tried again",
            f.reconnects,
        )
        yield _counter(
            "psp_replica_verify_failures",
            "answers refused by the checks of RFC-NOTES §9.5.1 (each ends the follower, exit 45)",
            f.verify_failures,
        )


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)
