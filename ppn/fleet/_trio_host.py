"""service-vm-host on trio: heartbeats to the fleet controller and the spawn listener.

Every ``interval`` seconds (10 by default) the service reads the machine's facts, signs a
heartbeat and sends it to the controller (TCP 9203). A send that fails or times out is logged
and counted, never fatal: the next one is attempted on schedule. Spawn, stop, start and delete
requests arrive on TCP 9220 on the node's mesh address; once authenticated as the controller's
(see ``_spawn``) the configured provisioner command runs with the action, and its outcome is
reported in the next heartbeat. The VM records are saved atomically (``vm_state_path``) before
a request is answered and after every provisioner run, so a restart forgets no VM.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    VmFileError,
    load_vm_file,
    read_boot_id,
    read_host_facts,
    run_provisioner,
    save_vm_file,
)
from ._spawn import (
    MAX_SPAWN_FRAME,
    SpawnDecision,
    SpawnRequested,
    SpawnServer,
    SpawnState,
    VmActionRequested,
)
from ._vm import HostVm, VmAction, VmRecord, VmSpec, VmState

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "MAX_HOST_VMS",
    "SPAWN_LIMITS",
    "VmHostConfig",
    "VmHostService",
]

log = logging.getLogger("ppn.fleet.vmhost")

DEFAULT_HEARTBEAT_INTERVAL = 10.0
# VMs one vm-host keeps: at the longest names and details a VM record is about 420 bytes, so
# 128 of them keep a heartbeat well under its 64 KiB limit (RFC-NOTES §8.7).
MAX_HOST_VMS = 128
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
    # Where the VM records survive restarts (RFC-NOTES §8.7.1); None: memory only.
    vm_state_path: str | None = None
    facts: Callable[[], HostFacts] = read_host_facts
    # Seams for embedders and tests: how to reach the controller, how to launch a VM.
    connect: Callable[[str, int], Awaitable[trio.abc.Stream]] = trio.open_tcp_stream
    provision: Callable[[VmSpec, bytes, VmAction], Awaitable[ProvisionerResult]] | None = None
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
        # Keyed by each VM's create request id, in creation order; ``_settled`` holds the state
        # each returns to when the action under way fails.
        self.vms: dict[bytes, VmRecord] = {}
        self._settled: dict[bytes, VmState] = {}
        if config.vm_state_path is not None:
            try:
                saved = load_vm_file(Path(config.vm_state_path))
            except VmFileError as exc:
                raise PPNError(str(exc)) from exc
            for vm in saved:
                self.vms[vm.record.request_id] = vm.record
                self._settled[vm.record.request_id] = vm.settled
        self._unsaved = False
        self._save_lock = trio.Lock()
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
            # Stopped VMs keep their share: a start must find it free.
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
            if self._unsaved:
                await self._persist()  # a disk that refused earlier may take it now
            await self.send_heartbeat()
            now = trio.current_time()
            slot = max(slot + 1, math.floor((now - start) / interval) + 1)
            await trio.sleep_until(start + slot * interval)

    # --- VM records ---------------------------------------------------------------------------

    def _host_vms(self) -> list[HostVm]:
        return [HostVm(record=r, settled=self._settled[k]) for k, r in self.vms.items()]

    async def _persist(self) -> bool:
        """Save the records on a worker thread; False (logged, retried before each heartbeat)
        when the disk refuses. The asyncio service overrides it."""
        path = self.config.vm_state_path
        if path is None:
            return True
        async with self._save_lock:
            try:
                # The snapshot is taken here, on the loop; the thread only writes it.
                await trio.to_thread.run_sync(save_vm_file, Path(path), self._host_vms())
            except OSError as exc:
                return self._save_failed(exc)
        self._unsaved = False
        return True

    def _save_failed(self, exc: OSError) -> bool:
        self._unsaved = True
        log.warning(
            "cannot save the VM records to %s: %s", self.config.vm_state_path, exc.strerror or exc
        )
        return False

    # --- spawn and the VM actions ------------------------------------------------------------

    def _named(self, name: str) -> bytes | None:
        return next((k for k, r in self.vms.items() if r.spec.name == name), None)

    def _seen(self, request_id: bytes) -> bool:
        return any(request_id in (r.request_id, r.action_id) for r in self.vms.values())

    def _decide(self, event: SpawnRequested | VmActionRequested) -> SpawnDecision:
        name = event.spec.name if isinstance(event, SpawnRequested) else event.name
        key = self._named(name)
        existing = self.vms.get(key) if key is not None else None
        if not self.config.provisioner and self.config.provision is None:
            reason = "this node has no provisioner command configured"
        elif self._seen(event.request_id):
            reason = "this request was already received"
        elif isinstance(event, SpawnRequested):
            if existing is not None and existing.state is not VmState.FAILED:
                reason = f"a VM named {name!r} already exists on this node"
            elif existing is None and len(self.vms) >= MAX_HOST_VMS:
                reason = f"this node holds {MAX_HOST_VMS} VMs, the most it reports"
            else:
                return SpawnDecision(request_id=event.request_id, accepted=True)
        elif existing is None:
            reason = f"no VM named {name!r} on this node"
        elif existing.state not in event.action.allowed_from:
            reason = f"VM {name!r} is {existing.state.value}; cannot {event.action.value} it"
        else:
            return SpawnDecision(request_id=event.request_id, accepted=True)
        return SpawnDecision(request_id=event.request_id, accepted=False, reason=reason)

    def _begin(self, event: SpawnRequested | VmActionRequested) -> tuple[bytes, VmAction]:
        """Record an accepted request in memory: the key of its VM and the action to run."""
        if isinstance(event, SpawnRequested):
            old = self._named(event.spec.name)  # a failed VM of that name is replaced
            if old is not None:
                del self.vms[old], self._settled[old]
            self.vms[event.request_id] = VmRecord(
                request_id=event.request_id, spec=event.spec, state=VmState.PROVISIONING
            )
            self._settled[event.request_id] = VmState.FAILED
            return event.request_id, VmAction.CREATE
        key = self._named(event.name)
        assert key is not None  # _decide found it
        record = self.vms[key]
        self._settled[key] = record.state
        self.vms[key] = replace(
            record, state=event.action.busy_state, detail="", action_id=event.request_id
        )
        return key, event.action

    async def _accept(
        self, event: SpawnRequested | VmActionRequested
    ) -> tuple[SpawnDecision, tuple[bytes, VmAction] | None]:
        """Decide; for an accepted request, record it and save the records before answering, so
        an "accepted" is never lost to a restart. A disk that refuses refuses the request and
        leaves memory as it was."""
        decision = self._decide(event)
        if not decision.accepted:
            log.warning("%s request refused: %s", _kind(event), decision.reason)
            return decision, None
        name = event.spec.name if isinstance(event, SpawnRequested) else event.name
        touched = [event.request_id]
        if (same_name := self._named(name)) is not None:
            touched.append(same_name)
        before = {k: (self.vms.get(k), self._settled.get(k)) for k in touched}
        was_unsaved = self._unsaved
        job = self._begin(event)
        if not await self._persist():
            # Undo this request only: other connections may have changed other VMs meanwhile.
            for k, (record, settled) in before.items():
                self.vms.pop(k, None)
                self._settled.pop(k, None)
                if record is not None and settled is not None:
                    self.vms[k], self._settled[k] = record, settled
            self._unsaved = was_unsaved
            reason = "this node cannot record the VM: its state file cannot be written"
            return SpawnDecision(request_id=event.request_id, accepted=False, reason=reason), None
        log.info("%s request accepted: %s", _kind(event), self.vms[job[0]].spec)
        return decision, job

    async def _run_hook(
        self, spec: VmSpec, request_id: bytes, action: VmAction
    ) -> ProvisionerResult:
        """Run the provisioner for one action (the asyncio service overrides it)."""
        if self.config.provision is not None:
            return await self.config.provision(spec, request_id, action)
        return await run_provisioner(
            self.config.provisioner,
            spec,
            request_id,
            action=action,
            timeout=self.config.provisioner_timeout,
        )

    async def _provision(self, key: bytes, action: VmAction) -> None:
        """Run the action's provisioner, record how it ended, save."""
        record = self.vms[key]
        result = await self._run_hook(record.spec, record.request_id, action)
        record = self.vms[key]
        if result.ok and action is VmAction.DELETE:
            del self.vms[key], self._settled[key]
            log.info("VM %s deleted (provisioner: %s)", record.spec.name, result.detail or "-")
        else:
            if result.ok:
                state = VmState.STOPPED if action is VmAction.STOP else VmState.RUNNING
                detail = result.detail
            else:
                state = self._settled[key]  # FAILED for a create
                detail = (
                    result.detail
                    if action is VmAction.CREATE
                    else (f"{action.value} failed: {result.detail}")
                )
            self._settled[key] = state
            self.vms[key] = replace(record, state=state, detail=detail)
            log.info(
                "VM %s %s: %s (provisioner: %s)",
                record.spec.name,
                action.value,
                state.value,
                result.detail or "-",
            )
        await self._persist()

    async def _serve_guarded(self, stream: trio.abc.Stream, _connection: Connection) -> None:
        await self.serve_spawn_stream(stream)

    async def serve_spawn_stream(self, stream: trio.abc.Stream) -> None:
        """Handle one spawn connection; if accepted, run the provisioner after answering."""
        job: tuple[bytes, VmAction] | None = None
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
                if not isinstance(event, SpawnRequested | VmActionRequested):  # pragma: no cover
                    raise PPNError("spawn core advanced without a request")
                decision, job = await self._accept(event)
                core.send(decision)
                await stream.send_all(core.data_to_send())
        except (PPNError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.warning("spawn connection dropped: %s", exc or "timed out")
        finally:
            await trio.aclose_forcefully(stream)
        if job is not None:
            await self._provision(*job)

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
                extra={"event": "listening", "address": f"{host}:{self.spawn_port}"},
            )
            task_status.started(self.spawn_port)


def _kind(event: SpawnRequested | VmActionRequested) -> str:
    return "spawn" if isinstance(event, SpawnRequested) else event.action.value
