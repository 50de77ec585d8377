"""The fleet controller's live node table: heartbeats in, evictions out, on the receiver's clock.

A node is live from its first accepted heartbeat until ``eviction_timeout`` seconds (30 by
default) of *receiver* time pass without another; it is then evicted by :meth:`handle_timer`,
which the adapter calls at :meth:`get_timer` -- so a silent node leaves the table on time even if
nobody asks (RFC-NOTES §8.4). An evicted node that heartbeats again rejoins.

The table also remembers VMs dispatched to a node that its heartbeats do not list yet
(:meth:`note_dispatch`), so placement counts them and two quick creates cannot overcommit a node
(RFC-NOTES §8.5). One is forgotten when a heartbeat lists it, when two heartbeats in a row do not
(the first may have been built before the vm-host accepted it), or when its node is evicted.

Sans-IO: ``now`` is any monotonic clock in seconds the caller chooses, used consistently.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .._errors import LocalProtocolError, RemoteProtocolError
from ._directory import Member, MemberDirectory
from ._heartbeat import Heartbeat, HeartbeatAuthError, ReplayGuard, decode_heartbeat
from ._vm import VmSpec

__all__ = [
    "DEFAULT_EVICTION_TIMEOUT",
    "Dispatched",
    "FleetEvent",
    "HeartbeatAccepted",
    "NodeEvicted",
    "NodeJoined",
    "NodeRecord",
    "NodeTable",
]

DEFAULT_EVICTION_TIMEOUT = 30.0
MAX_EVICTED_REMEMBERED = 64
# Heartbeats that may arrive without a dispatched VM before it is forgotten: the first may have
# been built before the vm-host accepted the request.
UNLISTED_HEARTBEATS_BEFORE_FORGETTING = 2


@dataclass(frozen=True, kw_only=True)
class Dispatched:
    """A VM a vm-host accepted that its heartbeats do not list yet."""

    request_id: bytes
    spec: VmSpec
    unlisted: int = 0  # heartbeats since the dispatch that did not list it


@dataclass(frozen=True, kw_only=True)
class NodeJoined:
    """A node's first accepted heartbeat, or its first after an eviction (``rejoined``)."""

    node_id: str
    name: str
    at: float
    rejoined: bool


@dataclass(frozen=True, kw_only=True)
class HeartbeatAccepted:
    node_id: str
    name: str
    seq: int
    at: float


@dataclass(frozen=True, kw_only=True)
class NodeEvicted:
    """A node silent for the eviction timeout. ``silent_for`` = ``at`` - ``last_heartbeat_at``."""

    node_id: str
    name: str
    last_heartbeat_at: float
    at: float

    @property
    def silent_for(self) -> float:
        return self.at - self.last_heartbeat_at


FleetEvent = NodeJoined | HeartbeatAccepted | NodeEvicted


@dataclass(frozen=True, kw_only=True)
class NodeRecord:
    """What the controller knows of one node: the member entry and its latest heartbeat."""

    member: Member
    heartbeat: Heartbeat
    last_heartbeat_at: float

    @property
    def name(self) -> str:
        return self.member.name


class NodeTable:
    """Live nodes keyed by node id, fed with verified heartbeats and driven by a timer."""

    def __init__(
        self,
        directory: MemberDirectory,
        *,
        eviction_timeout: float = DEFAULT_EVICTION_TIMEOUT,
        replay: ReplayGuard | None = None,
    ) -> None:
        if not eviction_timeout > 0:
            raise LocalProtocolError("the eviction timeout must be positive")
        self.directory = directory
        self.eviction_timeout = eviction_timeout
        self._live: dict[str, NodeRecord] = {}
        self._evicted: deque[NodeEvicted] = deque(maxlen=MAX_EVICTED_REMEMBERED)
        self._events: deque[FleetEvent] = deque()
        # Passed in when the adapter restored it from disk, so a restart opens no replay window.
        self._replay = replay or ReplayGuard()
        self._last_now = -math.inf
        self._dispatched: dict[str, dict[bytes, Dispatched]] = {}

    # --- input -------------------------------------------------------------------------------

    def receive_heartbeat(self, payload: bytes, now: float) -> NodeRecord:
        """Verify and apply one heartbeat envelope received at ``now``.

        Raises RemoteProtocolError for anything malformed, unauthenticated, from a non-member,
        inconsistent with the member entry, or replayed; the table is then unchanged.
        """
        self._advance(now)
        signed = decode_heartbeat(payload)
        member = self.directory.member_by_identity(signed.identity)
        if member is None:
            raise HeartbeatAuthError()
        heartbeat = signed.heartbeat
        if heartbeat.node_id != member.node_id:
            raise RemoteProtocolError(f"heartbeat names node {heartbeat.node_id!r}, signer is not")
        if heartbeat.mesh_address != member.mesh_address:
            raise RemoteProtocolError("heartbeat mesh address differs from the member's")
        self._replay.check(signed.identity, heartbeat.boot_id, heartbeat.seq)
        self._replay.record(signed.identity, heartbeat.boot_id, heartbeat.seq)
        # Evict anything overdue first, so a late heartbeat can never resurrect a node silently.
        self.handle_timer(now)
        record = NodeRecord(member=member, heartbeat=heartbeat, last_heartbeat_at=now)
        if member.node_id not in self._live:
            rejoined = any(e.node_id == member.node_id for e in self._evicted)
            self._events.append(
                NodeJoined(node_id=member.node_id, name=member.name, at=now, rejoined=rejoined)
            )
        self._live[member.node_id] = record
        self._settle_dispatched(member.node_id, heartbeat)
        self._events.append(
            HeartbeatAccepted(node_id=member.node_id, name=member.name, seq=heartbeat.seq, at=now)
        )
        return record

    def note_dispatch(self, node_id: str, request_id: bytes, spec: VmSpec) -> None:
        """A vm-host accepted a VM: count it on its node until a heartbeat lists it."""
        if node_id in self._live:
            self._dispatched.setdefault(node_id, {})[request_id] = Dispatched(
                request_id=request_id, spec=spec
            )

    def dispatched(self, node_id: str) -> list[Dispatched]:
        """VMs accepted by ``node_id`` that its heartbeats do not list yet, oldest first."""
        return list(self._dispatched.get(node_id, {}).values())

    def _settle_dispatched(self, node_id: str, heartbeat: Heartbeat) -> None:
        waiting = self._dispatched.get(node_id)
        if not waiting:
            return
        listed = {vm.request_id for vm in heartbeat.vms}
        for request_id, entry in list(waiting.items()):
            unlisted = entry.unlisted + 1
            if request_id in listed or unlisted >= UNLISTED_HEARTBEATS_BEFORE_FORGETTING:
                del waiting[request_id]
            else:
                waiting[request_id] = Dispatched(
                    request_id=request_id, spec=entry.spec, unlisted=unlisted
                )
        if not waiting:
            del self._dispatched[node_id]

    # --- timer -------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next run: the earliest eviction deadline, or None."""
        if not self._live:
            return None
        return min(r.last_heartbeat_at for r in self._live.values()) + self.eviction_timeout

    def handle_timer(self, now: float) -> None:
        """Evict every node whose last heartbeat is ``eviction_timeout`` or more before ``now``."""
        self._advance(now)
        overdue = [
            r for r in self._live.values() if now - r.last_heartbeat_at >= self.eviction_timeout
        ]
        for record in sorted(overdue, key=lambda r: (r.last_heartbeat_at, r.member.node_id)):
            del self._live[record.member.node_id]
            self._dispatched.pop(record.member.node_id, None)
            event = NodeEvicted(
                node_id=record.member.node_id,
                name=record.name,
                last_heartbeat_at=record.last_heartbeat_at,
                at=now,
            )
            self._evicted.append(event)
            self._events.append(event)

    # --- output ------------------------------------------------------------------------------

    @property
    def replay(self) -> ReplayGuard:
        """The replay state: the adapter persists it after every accepted heartbeat."""
        return self._replay

    def next_event(self) -> FleetEvent | None:
        return self._events.popleft() if self._events else None

    def live_nodes(self) -> list[NodeRecord]:
        return sorted(self._live.values(), key=lambda r: r.name)

    def live_node(self, name: str) -> NodeRecord | None:
        for record in self._live.values():
            if record.name == name:
                return record
        return None

    def evicted_nodes(self) -> list[NodeEvicted]:
        """Recent evictions (newest last) of nodes that have not come back since."""
        latest = {e.node_id: e for e in self._evicted}
        return [e for e in latest.values() if e.node_id not in self._live]

    def _advance(self, now: float) -> None:
        if now < self._last_now:
            raise LocalProtocolError("time went backwards: use one monotonic clock for 'now'")
        self._last_now = now
