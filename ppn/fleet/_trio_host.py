"""service-vm-host on trio: heartbeats to the fleet controller and the spawn listener.

Every ``interval`` seconds (10 by default) the service reads the machine's facts, signs a
heartbeat and sends it to the controller (TCP 9203). A send that fails or times out is logged
and counted, never fatal: the next one is attempted on schedule. Spawn requests arrive on TCP
9220 on the node's mesh address; once authenticated as the controller's (see ``_spawn``)
the configured provisioner command runs, and its outcome is reported in the next heartbeat.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import trio

from .. import wire
from .._errors import PPNError
from .._keys import IdentityKey
from .._trio_listener import Connection, ListenerGuard, ListenerLimits
from ..ports import FLEET_PORT, SPAWN_PORT
from ._directory import Member, MemberDirectory
from ._heartbeat import (
    MAX_VMS,
    Heartbeat,
    decode_heartbeat_reply,
    encode_heartbeat,
)
from ._io_host import (
    HostFacts,
    ProvisionerResult,
    SequenceClock,
    read_boot_id,
    read_host_facts,
    run_provisioner,
)
from ._spawn import MAX_SPAWN_FRAME, SpawnDecision, SpawnRequested, SpawnServer, SpawnState
from ._vm import VmRecord, VmSpec, VmState

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "SPAWN_LIMITS", "VmHostConfig", "VmHostService"]

log = logging.getLogger("ppn.fleet.vmhost")

DEFAULT_HEARTBEAT_INTERVAL = 10.0
# Spawn requests come from one controller, in frames of at most 4 KiB: 64 connections bound the
# listener's memory at 64 × (4 KiB + the 4 KiB receive buffer) (RFC-NOTES §8.9).
SPAWN_LIMITS = ListenerLimits(
    max_connections=64,
    per_source=8,
    first_frame_deadline=10.0,
    idle_timeout=10.0,
    pre_auth_bytes=MAX_SPAWN_FRAME,
)


@dataclass(kw_only=True)
class VmHostConfig:
    identity: IdentityKey
    directory: MemberDirectory
    controller_port: int = FLEET_PORT
    controller_address: str | None = None  # default: the controller member's mesh address
    listen_address: str | None = None  # default: this node's mesh address
    spawn_port: int = SPAWN_PORT
    interval: float = DEFAULT_HEARTBEAT_INTERVAL
    send_timeout: float = 5.0
    reserved: bool = False
    provisioner: Sequence[str] = ()
    provisioner_timeout: float = 600.0
    max_ram_mb: int | None = None  # advertise at most this much RAM to the pool
    facts: Callable[[], HostFacts] = read_host_facts
    # Seams for embedders and tests: how to reach the controller, how to launch a VM.
    connect: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream
    provision: Callable[[VmSpec, bytes], Awaitable[ProvisionerResult]] | None = None
    boot_id: bytes = field(default_factory=read_boot_id)
    sequence: Callable[[], int] = field(default_factory=lambda: SequenceClock().next)


class VmHostService:
    """One node's vm-host. ``await service.run()`` (or ``nursery.start(service.run)``)."""

    def __init__(self, config: VmHostConfig) -> None:
        self.config = config
        member = config.directory.member_by_identity(config.identity.public)
        if member is None:
            raise PPNError("this node's identity key is not a member of the fleet directory")
        self.member: Member = member
        self.vms: dict[bytes, VmRecord] = {}
        self.heartbeats_sent = 0
        self.heartbeats_missed = 0
        self.spawn_port: int | None = None
        self.guard = ListenerGuard(SPAWN_LIMITS)

    # --- heartbeats --------------------------------------------------------------------------

    def build_heartbeat(self) -> Heartbeat:
        facts = self.config.facts()
        total, available = facts.ram_total_mb, facts.ram_available_mb
        if self.config.max_ram_mb is not None:
            # A cap is the share of this machine the operator gives the pool; our own VMs use it.
            committed = sum(
                vm.spec.ram_mb for vm in self.vms.values() if vm.state is not VmState.FAILED
            )
            total = min(total, self.config.max_ram_mb)
            available = max(0, min(available, self.config.max_ram_mb - committed))
        return Heartbeat(
            node_id=self.member.node_id,
            mesh_address=self.member.mesh_address,
            hostname=facts.hostname,
            ram_total_mb=total,
            ram_available_mb=available,
            cpu_cores=facts.cpu_cores,
            load_milli=facts.load_milli,
            kvm=facts.kvm,
            reserved=self.config.reserved,
            # The newest records, within what one heartbeat may carry.
            vms=tuple(self.vms.values())[-MAX_VMS:],
            boot_id=self.config.boot_id,
            seq=self.config.sequence(),
        )

    def _controller_address(self) -> str:
        if self.config.controller_address:
            return self.config.controller_address
        controller = self.config.directory.controller()
        if controller is None:
            raise PPNError("the fleet directory names no fleet controller")
        return controller.mesh_address

    async def send_heartbeat(self) -> bool:
        """Send one heartbeat; True if the controller accepted it. Never raises for I/O trouble."""
        try:
            address = self._controller_address()
            payload = encode_heartbeat(self.build_heartbeat(), self.config.identity)
            frame = wire.encode_frame(payload, max_size=len(payload))
            with trio.fail_after(self.config.send_timeout):
                stream = await self.config.connect(address, self.config.controller_port)
                async with stream:
                    await stream.send_all(frame)
                    decoder = wire.FrameDecoder(max_size=1024)
                    reply = None
                    while reply is None:
                        data = bytes(await stream.receive_some(2048))
                        decoder.feed(data)
                        reply = decoder.next_frame()
                        if reply is None and not data:
                            raise PPNError("controller closed the connection without a reply")
            accepted, reason = decode_heartbeat_reply(reply)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, PPNError, ValueError) as exc:
            self.heartbeats_missed += 1
            what = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc) or repr(exc)
            log.warning("heartbeat not delivered (%s); will retry on schedule", what)
            return False
        if not accepted:
            self.heartbeats_missed += 1
            log.warning("controller refused our heartbeat: %s", reason)
            return False
        self.heartbeats_sent += 1
        return True

    async def heartbeat_loop(self) -> None:
        """Send on a fixed schedule (start + k * interval), skipping slots already past."""
        interval = self.config.interval
        start = trio.current_time()
        slot = 0
        while True:
            await self.send_heartbeat()
            now = trio.current_time()
            slot = max(slot + 1, math.floor((now - start) / interval) + 1)
            await trio.sleep_until(start + slot * interval)

    # --- spawn -------------------------------------------------------------------------------

    def _decide(self, event: SpawnRequested) -> SpawnDecision:
        if not self.config.provisioner and self.config.provision is None:
            reason = "this node has no provisioner command configured"
        elif event.request_id in self.vms:
            reason = "this request was already received"
        elif any(
            vm.spec.name == event.spec.name and vm.state is not VmState.FAILED
            for vm in self.vms.values()
        ):
            reason = f"a VM named {event.spec.name!r} already exists on this node"
        else:
            return SpawnDecision(request_id=event.request_id, accepted=True)
        return SpawnDecision(request_id=event.request_id, accepted=False, reason=reason)

    async def _provision(self, request_id: bytes) -> None:
        record = self.vms[request_id]
        if self.config.provision is not None:
            result = await self.config.provision(record.spec, request_id)
        else:
            result = await run_provisioner(
                self.config.provisioner,
                record.spec,
                request_id,
                timeout=self.config.provisioner_timeout,
            )
        state = VmState.RUNNING if result.ok else VmState.FAILED
        self.vms[request_id] = replace(record, state=state, detail=result.detail)
        log.info(
            "VM %s is %s (provisioner: %s)", record.spec.name, state.value, result.detail or "-"
        )

    async def _serve_guarded(self, stream: trio.abc.Stream, _connection: Connection) -> None:
        await self.serve_spawn_stream(stream)

    async def serve_spawn_stream(self, stream: trio.abc.Stream) -> None:
        """Handle one spawn connection; if accepted, run the provisioner after answering."""
        accepted: bytes | None = None
        core = SpawnServer(
            node_id=self.member.node_id,
            directory=self.config.directory,
            nonce=secrets.token_bytes(16),
        )
        try:
            with trio.fail_after(10):
                await stream.send_all(core.data_to_send())
                while core.state is SpawnState.AWAIT_REQUEST:
                    core.receive_data(bytes(await stream.receive_some(MAX_SPAWN_FRAME)))
                event = core.next_event()
                if not isinstance(event, SpawnRequested):  # pragma: no cover - core invariant
                    raise PPNError("spawn core advanced without a request")
                decision = self._decide(event)
                if decision.accepted:
                    self.vms[event.request_id] = VmRecord(
                        request_id=event.request_id, spec=event.spec, state=VmState.PROVISIONING
                    )
                    accepted = event.request_id
                    log.info("spawn request accepted: %s", event.spec)
                else:
                    log.warning("spawn request refused: %s", decision.reason)
                core.send(decision)
                await stream.send_all(core.data_to_send())
        except (PPNError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.warning("spawn connection dropped: %s", exc or "timed out")
        finally:
            await trio.aclose_forcefully(stream)
        if accepted is not None:
            await self._provision(accepted)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve spawn requests and heartbeat forever. ``started`` reports the spawn port."""
        host = self.config.listen_address or self.member.mesh_address
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(self.config.spawn_port, host=host)
            self.spawn_port = listeners[0].socket.getsockname()[1]

            nursery.start_soon(self.guard.serve, self._serve_guarded, listeners)
            nursery.start_soon(self.heartbeat_loop)
            log.info(
                "vm-host %s serving spawn on %s port %d; heartbeats every %g s",
                self.member.name,
                host,
                self.spawn_port,
                self.config.interval,
            )
            task_status.started(self.spawn_port)
