"""The node agent's decisions, sans-IO: when to pull, whom to push to, when to reconcile and save.

The trio adapter (:mod:`ppn.mesh._trio`) owns sockets, the WireGuard backend and the clock; this
core only says what should happen next, as actions:

* :class:`PullFrom` every ``pull_interval`` (30 s) toward every other member's control address
  (and any bootstrap address, until the roster names another member), with up to 10 % jitter
  from the injected ``rng`` so a fleet that started together does not pull in lockstep; until
  one pull has succeeded *and* brought this node's own record (a joiner whose sponsor has not
  signed it yet pulls the others' records first), a pull is retried after ``BOOTSTRAP_RETRY``
  (3 s);
* :class:`PushTo` every other member when records change this node's roster, except the member
  they came from (flooding stops because a roster that did not change pushes nothing);
* :class:`Reconcile` after every change and every ``reconcile_interval`` (5 s), because paths
  depend on observed handshake age;
* :class:`SaveState` after every change;
* when this node lost an address conflict it re-addresses itself at once (RFC-NOTES §7.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._keys import IdentityKey
from ._ids import node_address6
from ._records import MemberRecord, Record
from ._roster import MergeResult, Rejection, Roster

__all__ = [
    "AgentStats",
    "WireGuardPort",
    "BOOTSTRAP_RETRY",
    "PULL_INTERVAL",
    "RECONCILE_INTERVAL",
    "Action",
    "MeshAgent",
    "PullFrom",
    "PushTo",
    "Reconcile",
    "SaveState",
]


class WireGuardPort(Protocol):
    """What the agent needs from WireGuard: make the device match the roster. The same for
    the trio and the asyncio adapter (an ``async def`` runs under either loop)."""

    async def reconcile(self, roster: Roster) -> None: ...


@dataclass
class AgentStats:
    """Counters an adapter keeps for ``ppn status`` and tests."""

    pulls_ok: int = 0
    pulls_failed: int = 0
    pushes_ok: int = 0
    pushes_failed: int = 0
    served: int = 0
    reconciles: int = 0
    reconcile_errors: int = 0
    reconcile_seconds: float = 0.0  # wall time of every pass, failed ones included
    saves: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    last_error: str | None = None


PULL_INTERVAL = 30.0
RECONCILE_INTERVAL = 5.0
# Until one pull has succeeded (a joiner, or a member cut off by an address conflict) failed
# pulls are retried this soon instead of waiting a whole period.
BOOTSTRAP_RETRY = 3.0


@dataclass(frozen=True, kw_only=True)
class PullFrom:
    address: str  # control address of the member (or bootstrap address) to pull from


@dataclass(frozen=True, kw_only=True)
class PushTo:
    address: str
    records: tuple[Record, ...]


@dataclass(frozen=True, kw_only=True)
class Reconcile:
    pass


@dataclass(frozen=True, kw_only=True)
class SaveState:
    pass


Action = PullFrom | PushTo | Reconcile | SaveState


class MeshAgent:
    """Decides what the node agent does next. Feed it time and roster changes; take actions."""

    def __init__(
        self,
        roster: Roster,
        *,
        identity: IdentityKey,
        now: float,
        endpoints: Sequence[str] | None = None,
        roles: Iterable[str] | None = None,
        bootstrap: Sequence[str] = (),
        pull_interval: float = PULL_INTERVAL,
        reconcile_interval: float = RECONCILE_INTERVAL,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.roster = roster
        self.identity = identity
        self.pull_interval = pull_interval
        self.reconcile_interval = reconcile_interval
        self._rng = rng or (lambda: 0.5)
        self._bootstrap = tuple(bootstrap)
        self._actions: list[Action] = []
        self._pending_push: dict[str, dict[bytes, Record]] = {}
        self._next_pull = now  # pull at once on start: catch up after downtime
        self._synced = False
        self._period_next = now
        self._next_reconcile = now
        # What this node wants its own entry to say; applied as soon as the entry exists.
        self._want_endpoints = None if endpoints is None else tuple(endpoints)
        self._want_roles = None if roles is None else tuple(sorted(set(roles)))
        self._publish_self(self._want_endpoints, self._want_roles)
        self._fix_own_address()
        self._actions.append(Reconcile())

    # --- inputs --------------------------------------------------------------------------

    def get_timer(self) -> float:
        """The time at which :meth:`handle_timer` next has work."""
        return min(self._next_pull, self._next_reconcile)

    def handle_timer(self, now: float) -> None:
        if now >= self._next_pull:
            for address in self.control_targets():
                self._actions.append(PullFrom(address=address))
            jitter = (self._rng() - 0.5) * 0.2 * self.pull_interval
            self._period_next = now + self.pull_interval + jitter
            self._next_pull = self._period_next
        if now >= self._next_reconcile:
            self._actions.append(Reconcile())
            self._next_reconcile = now + self.reconcile_interval

    def roster_changed(self, result: MergeResult, *, source: str | None = None) -> None:
        """Records merged into the roster (by a control connection or locally)."""
        if not result.changed:
            return
        self._queue_push(result.changed, exclude=source)
        if any(r.identity == self.identity.public for r in result.changed):
            self._publish_self(self._want_endpoints, self._want_roles)
        self._fix_own_address()
        self._actions.append(SaveState())
        self._actions.append(Reconcile())

    def pull_finished(self, *, ok: bool, now: float) -> None:
        """Feedback from the adapter: a pull succeeded or failed (RFC-NOTES §7.11)."""
        if ok and self.identity.public not in self.roster:
            ok = False  # answered, but our sponsor has not signed us yet: ask again soon
        if ok:
            if not self._synced:
                self._synced = True
                self._next_pull = self._period_next  # drop a retry a sibling's failure set
        elif not self._synced:
            self._next_pull = min(self._next_pull, now + BOOTSTRAP_RETRY)

    def update_self(
        self, *, endpoints: Sequence[str] | None = None, roles: Iterable[str] | None = None
    ) -> None:
        """Publish new endpoints/roles for this node (no-op when nothing differs)."""
        if endpoints is not None:
            self._want_endpoints = tuple(endpoints)
        if roles is not None:
            self._want_roles = tuple(sorted(set(roles)))
        self._publish_self(self._want_endpoints, self._want_roles)

    # --- outputs -------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        if not self._actions and self._pending_push:
            address, records = next(iter(self._pending_push.items()))
            del self._pending_push[address]
            return PushTo(address=address, records=tuple(records.values()))
        return self._actions.pop(0) if self._actions else None

    def control_targets(self) -> list[str]:
        """Control addresses (RFC-NOTES §7.1) this node talks PPN control with: every other live
        member, plus bootstrap addresses while no other member is known."""
        mine = node_address6(self.roster.mesh, self.identity.public)
        view = self.roster.view()
        # After an identity rotation this node is also its successor (RFC-NOTES §7.15).
        me = {self.identity.public, view.current_identity(self.identity.public)}
        targets = [
            node_address6(self.roster.mesh, m.identity)
            for m in view.members
            if m.identity not in me
        ]
        if not targets:
            targets = [a for a in self._bootstrap if a != mine]
        return targets

    # --- internals -----------------------------------------------------------------------

    def _queue_push(self, records: Iterable[Record], *, exclude: str | None) -> None:
        records = tuple(records)
        for address in self.control_targets():
            if address == exclude:
                continue
            pending = self._pending_push.setdefault(address, {})
            for record in records:
                pending[record.identity] = record

    def _publish_self(self, endpoints: Sequence[str] | None, roles: Iterable[str] | None) -> None:
        current = self.roster.get(self.identity.public)
        if not isinstance(current, MemberRecord):
            return
        want_endpoints = current.endpoints if endpoints is None else tuple(endpoints)
        want_roles = current.roles if roles is None else tuple(sorted(set(roles)))
        # A version signed by the admitter is replaced by our own as soon as we run, so only
        # this node's key can change its entry from then on (RFC-NOTES §11).
        if (
            want_endpoints == current.endpoints
            and want_roles == current.roles
            and current.signer == self.identity.public
        ):
            return
        record = self.roster.update_self(self.identity, endpoints=want_endpoints, roles=want_roles)
        self._after_local_change(record)

    def _fix_own_address(self) -> None:
        record = self.roster.readdress_if_needed(self.identity)
        if record is not None:
            self._after_local_change(record)

    def _after_local_change(self, record: Record) -> None:
        self._queue_push([record], exclude=None)
        self._actions.append(SaveState())
        self._actions.append(Reconcile())
