"""The asyncio adapter for the node agent (RFC-NOTES §7.11, §12).

:class:`AsyncioMeshNode` is the asyncio twin of :class:`ppn.mesh.MeshNode`: it serves PPN
control (TCP 9206), pulls, pushes, reconciles WireGuard and saves the roster, doing exactly what
the sans-IO :class:`MeshAgent` says and speaking the wire through :class:`ControlConnection`.
The WireGuard side is the embedder's: any object with ``async def reconcile(roster)`` (for a real
device, call ``ppn.mesh._io_wg.DeviceWireGuard.reconcile_now`` in ``asyncio.to_thread`` on
``roster.copy()``, made before the call: the loop goes on merging into ``roster`` meanwhile).
:func:`pull_once` and :func:`push_once` are one-shot client operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine

from .._asyncio_listener import Connection, ListenerGuard, ListenerLimits, open_tcp_listeners
from .._errors import PPNError
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
    Role,
    RosterUpdated,
    SyncComplete,
)
from ._records import Record
from ._roster import MergeResult, Roster

__all__ = ["AsyncWireGuardPort", "AsyncioMeshNode", "pull_once", "push_once"]

log = logging.getLogger("ppn.mesh")

CONNECT_TIMEOUT = 5.0
EXCHANGE_TIMEOUT = 10.0
RECEIVE_SIZE = 65536


# The agent's WireGuard port is loop-agnostic; this name is kept for asyncio embedders.
AsyncWireGuardPort = WireGuardPort


async def _exchange(
    host: str, port: int, roster: Roster, operation: Pull | Push, done: type
) -> list[object]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), timeout=CONNECT_TIMEOUT
    )
    try:
        conn = ControlConnection(roster, role=Role.CLIENT)
        conn.send(operation)

        async def pump() -> list[object]:
            events: list[object] = []
            while True:
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
                while (event := conn.next_event()) is not None:
                    events.append(event)
                    if isinstance(event, done):
                        return events
                conn.receive_data(await reader.read(RECEIVE_SIZE))

        return await asyncio.wait_for(pump(), timeout=EXCHANGE_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def pull_once(host: str, port: int, roster: Roster) -> list[object]:
    """One anti-entropy exchange with the node at host:port; returns the core's events."""
    return await _exchange(host, port, roster, Pull(), SyncComplete)


async def push_once(
    host: str, port: int, roster: Roster, records: tuple[Record, ...]
) -> list[object]:
    """Push ``records`` to the node at host:port and wait for its ack."""
    return await _exchange(host, port, roster, Push(records=records), PushAcknowledged)


class AsyncioMeshNode:
    """The node agent on asyncio. ``control_address(mesh_address)`` maps a member's mesh address
    to where its PPN control listens (identity + 9206 in production, loopback ports in tests);
    ``listen_host=None`` opens no listener; ``save`` persists the roster after every change."""

    def __init__(
        self,
        agent: MeshAgent,
        *,
        wireguard: AsyncWireGuardPort,
        save: Callable[[Roster], None],
        listen_host: str | None,
        listen_port: int = CONTROL_PORT,
        control_address: Callable[[str], tuple[str, int]] | None = None,
    ) -> None:
        self.agent = agent
        self.roster = agent.roster
        self.wireguard = wireguard
        self.save = save
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.control_address = control_address or (lambda address: (address, CONTROL_PORT))
        self.stats = AgentStats()
        self.bound_port: int | None = None
        self._wakeup = asyncio.Event()
        self._reconcile_wanted = asyncio.Event()
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.guard = ListenerGuard(_control_limits())

    async def run(self, started: asyncio.Future[int] | None = None) -> None:
        """Run until cancelled; ``started`` gets the bound control port once it listens."""
        loop = asyncio.get_running_loop()
        server: asyncio.Task[None] | None = None
        if self.listen_host is not None:
            # Behind the listener guard with the trio agent's limits (ppn._listener_limits).
            listeners = open_tcp_listeners(self.listen_host, self.listen_port)
            self.bound_port = listeners[0].getsockname()[1]
            server = asyncio.ensure_future(self.guard.serve(self._serve, listeners))
        reconciler = asyncio.create_task(self._reconciler())
        if started is not None and not started.done():
            started.set_result(self.bound_port or 0)
        try:
            while True:
                self._drain()
                timeout = max(0.0, self.agent.get_timer() - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                self._wakeup.clear()
                self.agent.handle_timer(loop.time())
        finally:
            reconciler.cancel()
            for task in list(self._tasks):
                task.cancel()
            if server is not None:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)

    def merged_locally(self, result: MergeResult) -> None:
        """Records merged outside a control connection (e.g. admissions)."""
        self.agent.roster_changed(result)
        self._wakeup.set()

    # --- actions -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drain(self) -> None:
        while (action := self.agent.next_action()) is not None:
            if isinstance(action, PullFrom):
                key = "pull " + action.address
                if key not in self._in_flight:
                    self._in_flight.add(key)
                    self._spawn(self._pull(action.address, key))
            elif isinstance(action, PushTo):
                self._spawn(self._push(action.address, action.records))
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
        if event.rejected:
            self.stats.rejected.extend(event.rejected)
        if event.changed:
            self.agent.roster_changed(
                MergeResult(changed=event.changed, rejected=event.rejected), source=source
            )
            self._wakeup.set()

    async def _pull(self, address: str, key: str) -> None:
        host, port = self.control_address(address)
        try:
            events = await pull_once(host, port, self.roster)
        except (OSError, PPNError, TimeoutError) as exc:
            self.stats.pulls_failed += 1
            self.stats.last_error = f"pull from {address}: {exc or type(exc).__name__}"
        else:
            self.stats.pulls_ok += 1
            for event in events:
                if isinstance(event, RosterUpdated):
                    self._on_update(event, address)
        finally:
            self._in_flight.discard(key)

    async def _push(self, address: str, records: tuple[Record, ...]) -> None:
        host, port = self.control_address(address)
        try:
            events = await push_once(host, port, self.roster, records)
        except (OSError, PPNError, TimeoutError) as exc:
            # Not retried: the periodic pull repairs whatever a lost push leaves behind.
            self.stats.pushes_failed += 1
            self.stats.last_error = f"push to {address}: {exc or type(exc).__name__}"
        else:
            self.stats.pushes_ok += 1
            for event in events:
                if isinstance(event, RosterUpdated):
                    self._on_update(event, address)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        guarded: Connection | None = None,
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if peer else None
        conn = ControlConnection(self.roster, role=Role.SERVER)
        self.stats.served += 1
        limits = self.guard.limits
        # Only the first frame (the hello) comes before admission: its header is capped.
        first: bytes | None = b"" if guarded is not None else None

        async def converse() -> None:
            nonlocal first
            while True:
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
                data = await reader.read(RECEIVE_SIZE)
                if first is not None and len(first) < 4:
                    first += data[: 4 - len(first)]
                    if len(first) == 4 and int.from_bytes(first, "big") > limits.pre_auth_bytes:
                        log.info("control connection from %s: oversized first frame", source)
                        return
                conn.receive_data(data)
                if guarded is not None and first is not None and conn.hello_received:
                    guarded.admit()  # the hello arrived: only the idle timeout applies now
                    first = None
                if guarded is not None:
                    guarded.touch()
                closed = False
                while (event := conn.next_event()) is not None:
                    if isinstance(event, RosterUpdated):
                        self._on_update(event, source)
                    elif isinstance(event, ConnectionClosed):
                        closed = True
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
                if closed:
                    return

        try:
            await asyncio.wait_for(converse(), EXCHANGE_TIMEOUT * 3)
        except (PPNError, OSError, TimeoutError) as exc:
            log.info("control connection ended: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _reconciler(self) -> None:
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            try:
                await self.wireguard.reconcile(self.roster)
                self.stats.reconciles += 1
            except (PPNError, OSError) as exc:
                self.stats.last_error = f"reconcile: {exc}"
                log.warning("reconciling WireGuard failed: %s", exc)


def _control_limits() -> ListenerLimits:
    """The trio agent's ``CONTROL_LIMITS`` (RFC-NOTES §7.12), as asyncio's guard takes them."""
    from ._trio import CONTROL_LIMITS

    return CONTROL_LIMITS
