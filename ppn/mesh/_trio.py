"""Trio adapter for the mesh: PPN control server and client, and the node agent loop.

Owns sockets, tasks, timeouts and cancellation; every decision is made by the sans-IO cores
(:class:`ControlConnection` for the wire, :class:`MeshAgent` for what to do when). Received
records are verified on a worker thread (``defer_checks``): a 4,096-record message is about
1.4 s of Ed25519 work that would otherwise stop the loop. The control listener runs behind the
listener guard (:mod:`ppn._trio_listener`) and a per-peer record budget (RFC-NOTES §7.6). The WireGuard
side is behind :class:`WireGuardPort`, so tests run the whole agent against in-memory devices
and the CLI plugs in the real backend (:mod:`ppn.mesh._io_wg`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from .._errors import PPNError
from .._trio_listener import Connection, ListenerGuard, ListenerLimits
from ..ports import CONTROL_PORT
from ._agent import (
    AgentStats,
    MeshAgent,
    PullFrom,
    PushTo,
    Reconcile,
    SaveState,
    WireGuardPort,
)
from ._control import (
    ConnectionClosed,
    ControlConnection,
    Pull,
    Push,
    PushAcknowledged,
    RecordBudget,
    RecordsToCheck,
    Role,
    RosterUpdated,
    SyncComplete,
)
from ._records import Record
from ._roster import MergeResult, Roster

__all__ = [
    "CONNECT_TIMEOUT",
    "CONTROL_LIMITS",
    "EXCHANGE_TIMEOUT",
    "AgentStats",
    "MeshNode",
    "WireGuardPort",
    "pull_once",
    "push_once",
    "serve_connection",
]

log = logging.getLogger("ppn.mesh")

CONNECT_TIMEOUT = 5.0
EXCHANGE_TIMEOUT = 10.0
_RECEIVE_SIZE = 65536
# The control listener's limits (RFC-NOTES §7.12): every member is one source (its control
# address), and an admitted connection may buffer one whole 8 MiB frame, so the cap on
# connections is what bounds memory: 128 × 8 MiB in the worst case.
CONTROL_LIMITS = ListenerLimits(
    max_connections=128,
    per_source=4,
    first_frame_deadline=EXCHANGE_TIMEOUT,
    idle_timeout=EXCHANGE_TIMEOUT * 3,
    pre_auth_bytes=64 * 1024,
)


# Up to this many received records are verified on the loop (a few milliseconds); a thread
# hop would cost more than it saves. Larger messages go to a worker thread.
INLINE_CHECK = 16


async def _check(conn: ControlConnection, event: RecordsToCheck) -> None:
    """Verify received records (on a worker thread unless they are few), then let the core
    merge them on the loop."""
    if event.count <= INLINE_CHECK:
        batch = conn.roster.check(event.values)
    else:
        batch = await trio.to_thread.run_sync(conn.roster.check, event.values)
    conn.checked(batch)


async def _pump_client(
    stream: trio.abc.Stream, conn: ControlConnection, done: type
) -> list[object]:
    """Send what the core has, feed what arrives, until an event of type ``done``."""
    events: list[object] = []
    while True:
        out = conn.data_to_send()
        if out:
            await stream.send_all(out)
        checked = False
        while (event := conn.next_event()) is not None:
            if isinstance(event, RecordsToCheck):
                await _check(conn, event)
                checked = True
                continue
            events.append(event)
            if isinstance(event, done):
                return events
        if checked:
            continue  # the merge queued events (and maybe output): take them first
        data = await stream.receive_some(_RECEIVE_SIZE)
        conn.receive_data(bytes(data))


async def _client_operation(
    connect: Callable[[], Awaitable[trio.abc.Stream]],
    roster: Roster,
    operation: Pull | Push,
    done: type,
) -> list[object]:
    with trio.fail_after(CONNECT_TIMEOUT):
        stream = await connect()
    async with stream:
        conn = ControlConnection(roster, role=Role.CLIENT, defer_checks=True)
        conn.send(operation)
        with trio.fail_after(EXCHANGE_TIMEOUT):
            events = await _pump_client(stream, conn, done)
    return events


def _tcp(host: str, port: int) -> Callable[[], Awaitable[trio.abc.Stream]]:
    async def connect() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return connect


async def pull_once(host: str, port: int, roster: Roster) -> list[object]:
    """One anti-entropy exchange with the node at host:port; returns the core's events."""
    return await _client_operation(_tcp(host, port), roster, Pull(), SyncComplete)


async def push_once(
    host: str, port: int, roster: Roster, records: tuple[Record, ...]
) -> list[object]:
    """Push ``records`` to the node at host:port and wait for its ack."""
    return await _client_operation(
        _tcp(host, port), roster, Push(records=records), PushAcknowledged
    )


async def serve_connection(
    stream: trio.abc.Stream,
    roster: Roster,
    on_update: Callable[[RosterUpdated], None],
    *,
    guarded: Connection | None = None,
    limits: ListenerLimits = CONTROL_LIMITS,
    budget: RecordBudget | None = None,
    source: str | None = None,
) -> None:
    """Serve one PPN control connection until the peer closes it (or breaks the grammar).

    Behind the listener guard (``guarded``), the connection is admitted once the peer's hello
    arrived; until then no frame above ``limits.pre_auth_bytes`` is buffered. Received records
    are charged to ``budget`` under ``source`` and verified on a worker thread."""
    conn = ControlConnection(roster, role=Role.SERVER, defer_checks=True)
    # Only the first frame (the hello) comes before admission; a client sends its operation
    # right behind it, so the cap applies to the first frame's header alone.
    first = b"" if guarded is not None else None
    try:
        with trio.move_on_after(EXCHANGE_TIMEOUT * 3):
            while True:
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
                data = await stream.receive_some(_RECEIVE_SIZE)
                if first is not None and len(first) < 4:
                    first += data[: 4 - len(first)]
                    if len(first) == 4 and int.from_bytes(first, "big") > limits.pre_auth_bytes:
                        log.info("control connection from %s: oversized first frame", source)
                        return
                conn.receive_data(bytes(data))
                if guarded is not None and first is not None and conn.hello_received:
                    guarded.admit()  # the hello arrived: only the idle timeout applies now
                    first = None
                closed = False
                while (event := conn.next_event()) is not None:
                    if isinstance(event, RecordsToCheck):
                        if budget is not None and source is not None:
                            wait = budget.take(source, event.count, time.monotonic())
                            if wait:
                                await trio.sleep(wait)
                        await _check(conn, event)
                    elif isinstance(event, RosterUpdated):
                        on_update(event)
                    elif isinstance(event, ConnectionClosed):
                        closed = True
                if guarded is not None:
                    guarded.touch()
                out = conn.data_to_send()
                if out:
                    await stream.send_all(out)
                if closed:
                    return
    except (PPNError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info("control connection ended: %s", exc)
    finally:
        await trio.aclose_forcefully(stream)


_REJECTIONS_KEPT = 64


class MeshNode:
    """The node agent: serves PPN control, pulls, pushes, reconciles WireGuard, saves state.

    ``control_address(address)`` maps a member's control address (what :class:`MeshAgent`
    names) to where its PPN control server listens (the identity map plus
    :data:`CONTROL_PORT` in production; loopback ports in tests). ``connect`` replaces TCP entirely (in-memory tests: it hands the other end to
    another node's :meth:`accept_stream`); ``listen_host=None`` opens no listener. ``save``
    persists the roster (called after every change).
    """

    def __init__(
        self,
        agent: MeshAgent,
        *,
        wireguard: WireGuardPort,
        save: Callable[[Roster], None],
        listen_host: str | None,
        listen_port: int = CONTROL_PORT,
        control_address: Callable[[str], tuple[str, int]] | None = None,
        connect: Callable[[str], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        self.agent = agent
        self.roster = agent.roster
        self.wireguard = wireguard
        self.save = save
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.control_address = control_address or (lambda address: (address, CONTROL_PORT))
        self._connect = connect or self._connect_tcp
        self._nursery: trio.Nursery | None = None
        self._listen_scope: trio.CancelScope | None = None
        self.stats = AgentStats()
        self._wakeup = trio.Event()
        self._reconcile_wanted = trio.Event()
        self._in_flight: set[str] = set()
        self.bound_port: int | None = None
        self.guard = ListenerGuard(CONTROL_LIMITS)
        self.budget = RecordBudget()
        # Refusals and held-back records are counted, and logged at most once a minute, so a
        # peer sending thousands of bad records neither fills the log nor the status file.
        self.held_back = 0
        self._last_refusal_log = -60.0
        self._unlogged_refusals = 0

    # --- entry point ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started`` gets the bound control port."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.listen_host is not None:
                await nursery.start(self._listen, self.listen_host)
            nursery.start_soon(self._reconciler)
            task_status.started(self.bound_port or 0)
            while True:
                self._drain(nursery)
                with trio.move_on_at(self.agent.get_timer()):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                self.agent.handle_timer(trio.current_time())

    async def _listen(self, host: str, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        self.listen_host = host
        with trio.CancelScope() as scope:
            self._listen_scope = scope
            task_status.started()
            await self.guard.serve(self._serve, listeners)

    async def rebind(self, host: str) -> None:
        """Move the control listener to ``host`` (after this node was re-addressed)."""
        if self._nursery is None or host == self.listen_host:
            return
        old = self._listen_scope
        # Same port: close the old listener first (its sockets close when the scope unwinds).
        if old is not None:
            old.cancel()
            await trio.sleep(0)
        await self._nursery.start(self._listen, host)

    def accept_stream(self, stream: trio.abc.Stream, peer: str | None = None) -> None:
        """Serve a control connection that arrived by other means than the TCP listener."""
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        self._nursery.start_soon(self._serve_stream, stream, peer)

    def merged_locally(self, result: MergeResult) -> None:
        """Tell the agent about records merged outside a control connection (e.g. admissions)."""
        self.agent.roster_changed(result)
        self._wakeup.set()

    # --- actions ---------------------------------------------------------------------------

    def _drain(self, nursery: trio.Nursery) -> None:
        while (action := self.agent.next_action()) is not None:
            if isinstance(action, PullFrom):
                key = "pull " + action.address
                if key not in self._in_flight:
                    self._in_flight.add(key)
                    nursery.start_soon(self._pull, action.address, key)
            elif isinstance(action, PushTo):
                nursery.start_soon(self._push, action.address, action.records)
            elif isinstance(action, Reconcile):
                self._reconcile_wanted.set()
            elif isinstance(action, SaveState):
                try:
                    self.save(self.roster)
                    self.stats.saves += 1
                except OSError as exc:
                    self.stats.last_error = f"saving state failed: {exc}"
                    log.warning("saving state failed: %s", exc)

    def _on_update(self, event: RosterUpdated, source: str | None) -> None:
        self.held_back += event.held_back
        if event.rejected:
            # Recent rejections only: ppn status shows a few, a hostile peer sends thousands.
            self.stats.rejected.extend(event.rejected)
            del self.stats.rejected[:-_REJECTIONS_KEPT]
            self._log_refusals(event, source)
        if event.changed:
            self.agent.roster_changed(
                MergeResult(changed=event.changed, rejected=event.rejected), source=source
            )
            self._wakeup.set()

    async def _pull(self, address: str, key: str) -> None:
        try:
            events = await _client_operation(
                lambda: self._connect(address), self.roster, Pull(), SyncComplete
            )
        except (OSError, PPNError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.stats.pulls_failed += 1
            self.stats.last_error = f"pull from {address}: {exc or type(exc).__name__}"
            log.info("pull from %s failed: %r", address, exc)
            self.agent.pull_finished(ok=False, now=trio.current_time())
            self._wakeup.set()
        else:
            self.stats.pulls_ok += 1
            self.agent.pull_finished(ok=True, now=trio.current_time())
            for event in events:
                if isinstance(event, RosterUpdated):
                    self._on_update(event, address)
        finally:
            self._in_flight.discard(key)

    async def _push(self, address: str, records: tuple[Record, ...]) -> bool:
        """Push ``records`` to one member; True when it acknowledged."""
        try:
            events = await _client_operation(
                lambda: self._connect(address),
                self.roster,
                Push(records=records),
                PushAcknowledged,
            )
        except (OSError, PPNError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            # Not retried: the periodic pull repairs whatever a lost push leaves behind.
            self.stats.pushes_failed += 1
            log.info("push to %s failed: %r", address, exc)
            return False
        self.stats.pushes_ok += 1
        for event in events:
            if isinstance(event, RosterUpdated):
                self._on_update(event, address)
        return True

    async def deliver(self, records: tuple[Record, ...]) -> int:
        """Push ``records`` to every other live member at once and wait for every answer;
        returns how many acknowledged (a key rotation's handover, RFC-NOTES §7.15)."""
        acked = 0

        async def one(address: str) -> None:
            nonlocal acked
            acked += await self._push(address, records)

        async with trio.open_nursery() as nursery:
            for address in self.agent.control_targets():
                nursery.start_soon(one, address)
        return acked

    async def _connect_tcp(self, address: str) -> trio.abc.Stream:
        host, port = self.control_address(address)
        return await trio.open_tcp_stream(host, port)

    def _log_refusals(self, event: RosterUpdated, source: str | None) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log < 60.0:
            self._unlogged_refusals += len(event.rejected)
            return
        more = self._unlogged_refusals
        self._last_refusal_log, self._unlogged_refusals = now, 0
        log.warning(
            "refused %d roster record(s) from %s: %s%s",
            len(event.rejected),
            source,
            event.rejected[0].detail,
            f" ({more} more refused since the last report)" if more else "",
        )

    async def _serve(self, stream: trio.SocketStream, guarded: Connection) -> None:
        await self._serve_stream(stream, guarded.source, guarded)

    async def _serve_stream(
        self, stream: trio.abc.Stream, peer: str | None, guarded: Connection | None = None
    ) -> None:
        await serve_connection(
            stream,
            self.roster,
            partial(self._on_update, source=peer),
            guarded=guarded,
            budget=self.budget,
            source=peer,
        )

    async def _reconciler(self) -> None:
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted = trio.Event()
            began = time.perf_counter()
            try:
                await self.wireguard.reconcile(self.roster)
                self.stats.reconciles += 1
            except (PPNError, OSError) as exc:
                self.stats.reconcile_errors += 1
                self.stats.last_error = f"reconcile: {exc}"
                log.warning("reconciling WireGuard failed: %s", exc)
            finally:
                self.stats.reconcile_seconds += time.perf_counter() - began
