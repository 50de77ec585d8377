"""service-vm-fleet on trio: the heartbeat listener, the eviction timer, placement and dispatch.

Heartbeats arrive on TCP 9203 (one frame per connection, answered with one reply frame) and go
into the :class:`~ppn.fleet._table.NodeTable` stamped with trio's clock -- the receiver's clock.
A timer task sleeps until the table's next eviction deadline and evicts on time even when nobody
asks. The operator's commands (status, place, create) come over a local Unix socket; a create is
dispatched to the chosen node's vm-host (TCP 9220) as a request signed by this node's identity.

The heartbeat listener runs behind the listener guard (:data:`HEARTBEAT_LIMITS`), and the
replay state is saved (``replay_path``) after every accepted heartbeat, before the reply, so a
restarted controller refuses what it refused before it stopped (RFC-NOTES §8.3.1, §8.9).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .. import wire
from .._errors import PPNError, RemoteProtocolError
from .._keys import IdentityKey
from .._trio_listener import Connection, ListenerGuard, ListenerLimits, default_max_connections
from ..ports import FLEET_PORT, SPAWN_PORT
from ._directory import Member, MemberDirectory
from ._heartbeat import MAX_HEARTBEAT_SIZE, ReplayGuard, encode_heartbeat_reply
from ._io_state import StateDirError, load_replay_state, save_replay_state
from ._operator import (
    ACTION_OPS,
    MAX_CONTROL_FRAME,
    ControlRequest,
    candidates,
    decode_control_request,
    find_vm,
    status_document,
    vm_list_document,
)
from ._placement import DEFAULT_VCPU_OVERCOMMIT, Placed, place
from ._spawn import MAX_SPAWN_FRAME, SpawnAnswer, SpawnClient, SpawnState
from ._table import (
    DEFAULT_EVICTION_TIMEOUT,
    HeartbeatAccepted,
    NodeEvicted,
    NodeRecord,
    NodeTable,
)
from ._vm import VmAction, VmSpec, is_totebox

__all__ = ["HEARTBEAT_LIMITS", "FleetController", "FleetControllerConfig"]

log = logging.getLogger("ppn.fleet.controller")

# One frame of at most 64 KiB per connection, so the guard's cap is the memory bound:
# max_connections × (64 KiB frame + 64 KiB receive buffer) = 32 MiB (RFC-NOTES §8.9).
HEARTBEAT_LIMITS = ListenerLimits(
    max_connections=min(256, default_max_connections()),
    per_source=8,
    first_frame_deadline=10.0,
    idle_timeout=10.0,
    pre_auth_bytes=MAX_HEARTBEAT_SIZE,
)


@dataclass(kw_only=True)
class FleetControllerConfig:
    identity: IdentityKey
    directory: MemberDirectory
    listen_address: str | None = None  # default: this node's mesh address
    port: int = FLEET_PORT
    control_path: str | None = None  # the operator's Unix socket; None: no operator channel
    spawn_port: int = SPAWN_PORT
    eviction_timeout: float = DEFAULT_EVICTION_TIMEOUT
    # vCPUs placement lets a node carry per CPU core (RFC-NOTES §8.5).
    vcpu_overcommit: float = DEFAULT_VCPU_OVERCOMMIT
    connection_timeout: float = 10.0
    # Where the replay state is kept across restarts (RFC-NOTES §8.3.1); None: memory only.
    replay_path: str | None = None
    limits: ListenerLimits = HEARTBEAT_LIMITS
    # Seam for embedders and tests: how to reach a vm-host.
    connect: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream


async def _read_frame(stream: trio.abc.Stream, max_size: int) -> bytes:
    decoder = wire.FrameDecoder(max_size=max_size)
    while True:
        data = bytes(await stream.receive_some(65536))
        decoder.feed(data)
        try:
            frame = decoder.next_frame()
        except wire.FrameError as exc:  # an oversized header: the peer's fault, never ours
            raise RemoteProtocolError(str(exc)) from exc
        if frame is not None:
            return frame
        if not data:
            raise RemoteProtocolError("connection closed before a whole frame arrived")


def _answer(client: SpawnClient) -> SpawnAnswer | str:
    answer = client.next_event()
    if not isinstance(answer, SpawnAnswer):  # pragma: no cover - core invariant
        return "no answer from the vm-host"
    return answer


class FleetController:
    """The fleet controller. ``await controller.run()`` (or ``nursery.start(controller.run)``)."""

    def __init__(self, config: FleetControllerConfig) -> None:
        self.config = config
        member = config.directory.member_by_identity(config.identity.public)
        if member is None:
            raise PPNError("this node's identity key is not a member of the fleet directory")
        if not member.is_controller:
            raise PPNError(f"member {member.name!r} does not hold the fleet-controller role")
        if not 0 < config.vcpu_overcommit <= 1024:
            raise PPNError("the vCPU overcommit ratio must be above 0 and at most 1024")
        self.member: Member = member
        replay: ReplayGuard | None = None
        if config.replay_path is not None:
            try:
                replay = load_replay_state(Path(config.replay_path))
            except StateDirError as exc:
                raise PPNError(str(exc)) from exc
        self.table = NodeTable(
            config.directory, eviction_timeout=config.eviction_timeout, replay=replay
        )
        self.guard = ListenerGuard(config.limits)
        # Counted for the metrics endpoint (RFC-NOTES §3.1); read at scrape time.
        self.heartbeats_accepted = 0
        self.heartbeats_refused = 0
        self.evictions = 0
        self._save_lock = trio.Lock()
        self.port: int | None = None
        self._timer_scope: trio.CancelScope | None = None

    # --- heartbeats and the eviction timer ---------------------------------------------------

    def _after_table_change(self) -> None:
        while (event := self.table.next_event()) is not None:
            if isinstance(event, NodeEvicted):
                self.evictions += 1
                log.warning(
                    "node %s evicted: no heartbeat for %.1f s", event.name, event.silent_for
                )
            elif isinstance(event, HeartbeatAccepted):
                self.heartbeats_accepted += 1
                log.debug("heartbeat from %s (seq %d)", event.name, event.seq)
            else:
                log.info(
                    "node %s %s the fleet", event.name, "rejoined" if event.rejoined else "joined"
                )
        if self._timer_scope is not None:
            deadline = self.table.get_timer()
            self._timer_scope.deadline = math.inf if deadline is None else deadline

    async def eviction_timer(self) -> None:
        """Evict silent nodes on time: sleep until the table's next deadline, forever."""
        while True:
            deadline = self.table.get_timer()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self.table.handle_timer(trio.current_time())
            self._after_table_change()

    async def _save_replay_state(self) -> None:
        """Persist the replay state before the reply, on a worker thread (an fsync)."""
        path = self.config.replay_path
        if path is None:
            return
        async with self._save_lock:
            try:
                await trio.to_thread.run_sync(save_replay_state, Path(path), self.table.replay)
            except OSError as exc:
                log.warning("cannot save the replay state to %s: %s", path, exc.strerror or exc)

    async def _serve_guarded(self, stream: trio.abc.Stream, _connection: Connection) -> None:
        await self.serve_heartbeat_stream(stream)

    async def serve_heartbeat_stream(self, stream: trio.abc.Stream) -> None:
        """Handle one heartbeat connection: one frame in, one reply frame out."""
        try:
            with trio.fail_after(self.config.connection_timeout):
                payload = await _read_frame(stream, MAX_HEARTBEAT_SIZE)
                try:
                    self.table.receive_heartbeat(payload, trio.current_time())
                except RemoteProtocolError as exc:
                    self.heartbeats_refused += 1
                    log.warning("heartbeat refused: %s", exc)
                    reply = encode_heartbeat_reply(accepted=False, reason=str(exc))
                else:
                    reply = encode_heartbeat_reply(accepted=True)
                    await self._save_replay_state()
                finally:
                    self._after_table_change()
                await stream.send_all(wire.encode_frame(reply, max_size=1024))
        except (RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.info("heartbeat connection dropped: %s", exc or "timed out")
        finally:
            await trio.aclose_forcefully(stream)

    # --- operator requests -------------------------------------------------------------------

    def _now(self) -> float:
        """The loop's clock (the asyncio controller, ``ppn.fleet._asyncio``, overrides it)."""
        return trio.current_time()

    def status(self) -> dict[str, Any]:
        return status_document(self.table, self._now(), controller=self.member.name)

    def advise(self, request: ControlRequest) -> dict[str, Any]:
        """Advisory placement as a reply map (``ok`` false with ``message`` when refused)."""
        self.table.handle_timer(self._now())
        self._after_table_change()
        pool = candidates(self.table)
        overcommit = self.config.vcpu_overcommit
        decision = place(request.placement_request(), pool, vcpu_overcommit=overcommit)
        considered = [
            {
                "name": c.name,
                "ram_available_mb": c.ram_available_mb,
                "kvm": c.kvm,
                "reserved": c.reserved,
                "vcpus_committed": c.vcpus_committed,
                "vcpu_capacity": c.vcpu_capacity(overcommit),
            }
            for c in pool
        ]
        if not isinstance(decision, Placed):
            return {
                "ok": False,
                "error": "refused",
                "message": decision.reason,
                "nodes": considered,
            }
        return {
            "ok": True,
            "node": decision.node,
            "reason": decision.reason,
            "reserved_fallback": decision.reserved_fallback,
            "nodes": considered,
        }

    async def _exchange(self, address: str, client: SpawnClient) -> SpawnAnswer | str:
        """One spawn-protocol exchange with the vm-host at ``address``: its answer, or why there
        is none (the asyncio controller overrides this; everything around it is shared)."""
        try:
            with trio.fail_after(self.config.connection_timeout):
                stream = await self.config.connect(address, self.config.spawn_port)
                async with stream:
                    while client.state is not SpawnState.DONE:
                        client.receive_data(bytes(await stream.receive_some(MAX_SPAWN_FRAME)))
                        out = client.data_to_send()
                        if out:
                            await stream.send_all(out)
        except (PPNError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            return "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        return _answer(client)

    async def _dispatch(
        self, record: NodeRecord, client: SpawnClient
    ) -> SpawnAnswer | dict[str, Any]:
        """Send one request to ``record``'s vm-host: its acceptance, or the error reply."""
        address = record.member.mesh_address
        answer = await self._exchange(address, client)
        what = f"{client.action.value} of {client.name}"
        if isinstance(answer, str):
            log.warning("dispatch of %s to %s failed: %s", what, record.name, answer)
            return {
                "ok": False,
                "error": "dispatch",
                "message": f"could not dispatch to {record.name} ({address}): {answer}",
            }
        if not answer.accepted:
            log.warning("vm-host %s refused the %s: %s", record.name, what, answer.reason)
            return {
                "ok": False,
                "error": "dispatch",
                "message": f"{record.name} refused the {what}: {answer.reason}",
            }
        return answer

    async def create(self, request: ControlRequest) -> dict[str, Any]:
        """Dispatch a VM to the node the operator confirmed (re-checked against the live table,
        which counts VMs already dispatched there)."""
        if not request.node:
            return {
                "ok": False,
                "error": "refused",
                "message": "a create names the node the operator confirmed",
            }
        advice = self.advise(request)
        if not advice["ok"]:
            return advice
        record = self.table.live_node(request.node)
        if record is None:  # pragma: no cover - advise just checked it
            return {"ok": False, "error": "refused", "message": "node left the fleet"}
        request_id = secrets.token_bytes(16)
        name = request.name or f"{request.vm_type}-{request_id.hex()[:8]}"
        spec = VmSpec(
            vm_type=request.vm_type, name=name, ram_mb=request.ram_mb, vcpus=request.vcpus
        )
        client = SpawnClient(
            key=self.config.identity,
            node_id=record.member.node_id,
            request_id=request_id,
            spec=spec,
        )
        answer = await self._dispatch(record, client)
        if isinstance(answer, dict):
            return answer
        # Counted on its node from now on, until a heartbeat lists it (RFC-NOTES §8.5).
        self.table.note_dispatch(record.member.node_id, request_id, spec)
        log.info("VM %s (%s, %d MB) dispatched to %s", name, spec.vm_type, spec.ram_mb, record.name)
        return {
            "ok": True,
            "node": record.name,
            "vm": spec.to_wire(),
            "request_id": request_id.hex(),
            "totebox": is_totebox(spec.vm_type),
        }

    def vm_list(self) -> dict[str, Any]:
        self.table.handle_timer(self._now())
        self._after_table_change()
        return vm_list_document(self.table)

    async def act(self, request: ControlRequest) -> dict[str, Any]:
        """Stop, start or delete the VM ``request.name``: found among the live nodes' VMs (on
        ``request.node`` when given), then dispatched to its vm-host as a signed request."""
        action = ACTION_OPS[request.op]
        self.table.handle_timer(self._now())
        self._after_table_change()
        where = f" on node {request.node!r}" if request.node else " in the fleet"
        found = find_vm(self.table, request.name, request.node)
        if not found:
            return {"ok": False, "error": "vm", "message": f"no VM named {request.name!r}{where}"}
        if len(found) > 1:
            nodes = ", ".join(v["node"] for v in found)
            return {
                "ok": False,
                "error": "vm",
                "message": f"VMs named {request.name!r} are on nodes {nodes}: name one with --node",
            }
        (vm,) = found
        if action is VmAction.DELETE and vm["totebox"] and request.confirm != request.name:
            return {
                "ok": False,
                "error": "confirm",
                "message": f"{request.name!r} is a VM-Totebox: deleting it needs its name "
                "confirmed (--yes --confirm NAME); its vault data is kept either way",
            }
        record = self.table.live_node(vm["node"])
        if record is None:  # pragma: no cover - find_vm reads live nodes only
            return {"ok": False, "error": "vm", "message": "node left the fleet"}
        request_id = secrets.token_bytes(16)
        client = SpawnClient(
            key=self.config.identity,
            node_id=record.member.node_id,
            request_id=request_id,
            action=action,
            name=request.name,
        )
        answer = await self._dispatch(record, client)
        if isinstance(answer, dict):
            return answer
        log.info("%s of VM %s dispatched to %s", action.value, request.name, record.name)
        return {
            "ok": True,
            "action": action.value,
            "node": record.name,
            "name": request.name,
            "type": vm["type"],
            "totebox": vm["totebox"],
            "request_id": vm["request_id"],
            "action_id": request_id.hex(),
        }

    async def handle_control(self, request: ControlRequest) -> dict[str, Any]:
        if request.op == "status":
            return self.status()
        if request.op == "list":
            return self.vm_list()
        if request.op == "place":
            return self.advise(request)
        if request.op in ACTION_OPS:
            return await self.act(request)
        return await self.create(request)

    async def _serve_control(self, stream: trio.abc.Stream) -> None:
        try:
            with trio.fail_after(max(self.config.connection_timeout * 2, 30)):
                payload = await _read_frame(stream, MAX_CONTROL_FRAME)
                try:
                    request = decode_control_request(payload)
                except RemoteProtocolError as exc:
                    reply: dict[str, Any] = {"ok": False, "error": "request", "message": str(exc)}
                else:
                    try:
                        reply = await self.handle_control(request)
                    except PPNError as exc:  # a bug must not take the controller down
                        log.exception("control request %s failed", request.op)
                        reply = {"ok": False, "error": "request", "message": str(exc)}
                data = wire.pack_canonical(reply)
                await stream.send_all(wire.encode_frame(data, max_size=MAX_CONTROL_FRAME))
        except (RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.info("control connection dropped: %s", exc or "timed out")
        finally:
            await trio.aclose_forcefully(stream)

    async def _control_listener(self, path: str) -> trio.SocketListener:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            if os.path.exists(path):
                probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
                with probe:
                    try:
                        await probe.connect(path)
                    except OSError:
                        if stat.S_ISSOCK(os.lstat(path).st_mode):
                            os.unlink(path)  # a stale socket from a controller that died
                    else:
                        raise OSError(errno.EADDRINUSE, f"a controller already serves {path}")
            old_umask = os.umask(0o077)  # the socket is the operator's authority: owner only
            try:
                await sock.bind(path)
            finally:
                os.umask(old_umask)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        return trio.SocketListener(sock)

    # --- the service -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve forever. ``started`` reports the heartbeat port actually bound."""
        host = self.config.listen_address or self.member.mesh_address
        control = self.config.control_path
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(self.config.port, host=host)
            self.port = listeners[0].socket.getsockname()[1]
            log.info(
                "fleet controller %s on %s port %d (eviction after %g s)%s",
                self.member.name,
                host,
                self.port,
                self.config.eviction_timeout,
                f", operator socket {control}" if control else "",
                extra={"event": "listening", "address": f"{host}:{self.port}"},
            )
            nursery.start_soon(self.guard.serve, self._serve_guarded, listeners)
            if control:
                control_listener = await self._control_listener(control)
                nursery.start_soon(trio.serve_listeners, self._serve_control, [control_listener])
            nursery.start_soon(self.eviction_timer)
            task_status.started(self.port)
            try:
                await trio.sleep_forever()
            finally:
                if control:
                    try:
                        os.unlink(control)
                    except OSError:
                        pass
