"""``ppn up``: the node agent process, wiring state directory, WireGuard device and control.

Start-up, in order: read the ceremony's files and the saved roster (or found / start one);
bring the WireGuard device up (a running device is adopted, never recreated) and reconcile it
once, which puts the mesh and control addresses on the interface; then serve PPN control on
the control address (RFC-NOTES §7.1),
pull from every member at once and every 30 s, push changes, reconcile every 5 s and after every
change, watch ``mesh.json`` for members admitted by a ceremony on this node, and take records
that commands signed (``ppn remove``'s tombstones) from ``outbox.bin``.

SIGTERM or SIGINT stops the agent after saving; the device and its peers stay as they are, so
traffic keeps flowing and a restart finds nothing to change. SIGTERM is the clean stop (exit 0),
SIGINT an interruption (exit 130; :func:`run_agent` returns the signal, the command reports it).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .._keys import IdentityKey, WireGuardKeyPair, encode_key
from ..ports import CONTROL_PORT, WIREGUARD_PORT
from ._agent import PULL_INTERVAL, MeshAgent
from ._bootstrap import sponsor_admissions
from ._ids import node_address6, node_id, short_id
from ._io_state import (
    AgentAlreadyRunning,
    MeshFiles,
    OutboxClaim,
    RosterFile,
    claim_queued_records,
    load_mesh_files,
    load_roster,
    running_agent_pid,
    save_roster,
    write_agent_info,
    write_hosts,
)
from ._io_wg import DeviceHandle, DeviceWireGuard, ensure_device, nudge
from ._names import hosts_fragment, replace_hosts_block
from ._records import AdminAct, MemberRecord, Record, Rotation
from ._roster import MergeResult, Roster
from ._rotation import (
    HANDOVER_RETRY,
    Handover,
    KeyStatus,
    identity_rotation_pending,
    wireguard_key_status,
)
from ._trio import MeshNode

__all__ = ["AgentOptions", "NodeAgent", "run_agent"]

log = logging.getLogger("ppn.mesh")

WATCH_INTERVAL = 1.0


@dataclass(kw_only=True)
class AgentOptions:
    state: Path
    interface: str | None = None
    endpoints: Sequence[str] | None = None
    roles: Sequence[str] = ()
    control_port: int = CONTROL_PORT
    control_listen: str | None = None  # default: this node's mesh address
    listen_port: int | None = None  # WireGuard; default: the first endpoint's port, or 51820
    hosts_file: Path | None = None
    pull_interval: float = PULL_INTERVAL
    progress: Callable[[str], None] = field(default=lambda line: None)


def _listen_port(files: MeshFiles, endpoints: Sequence[str], override: int | None) -> int:
    if override is not None:
        return override
    for endpoint in endpoints:
        _, _, port = endpoint.rpartition(":")
        if port.isdigit():
            return int(port)
    return WIREGUARD_PORT


def _initial_roster(
    files: MeshFiles, roles: Sequence[str], saved: RosterFile | None
) -> tuple[Roster, int, frozenset[bytes]]:
    if saved is not None:
        return saved.roster, saved.generation, saved.baseline
    if files.is_genesis:
        roster = Roster.found(
            files.identity,
            name=files.name,
            wg_key=files.wg.public,
            now=int(time.time()),
            endpoints=files.endpoints,
            roles=roles,
            network=files.cidr,
        )
        # Every other member in the genesis node's mesh.json was admitted by this node.
        return roster, 0, frozenset({files.identity.public})
    roster = Roster(mesh=files.mesh, network=files.cidr)
    # Members already listed when the agent first runs were sponsored by someone else.
    return roster, 0, frozenset(m.identity for m in files.preliminary)


def _merge_queued(roster: Roster, state: Path) -> tuple[list[Record], OutboxClaim | None]:
    """Merge the outbox's records (already verified) into ``roster``: the ones that changed it,
    and the claim to release once the roster is saved (``None``: nothing was queued)."""
    try:
        claim = claim_queued_records(state)
    except OSError as exc:
        log.warning("cannot take the outbox: %s", exc)
        return [], None
    for problem in claim.damaged:
        log.warning("the outbox was damaged: %s", problem)
    if not claim.files:
        return [], None
    return list(roster.merge(claim.records).changed) if claim.records else [], claim


def _describe(record: Record) -> str:
    if isinstance(record, AdminAct):
        return f"admin act {record.act.value} on {short_id(node_id(record.subject))}"
    if isinstance(record, Rotation):
        return f"identity rotation of {record.name}"
    kind = "removal" if not isinstance(record, MemberRecord) else "entry"
    return f"{kind} of {record.name}"


@dataclass(frozen=True, kw_only=True)
class _Published:
    """What this node publishes about itself at start: its roles and underlay endpoints."""

    roles: list[str]
    endpoints: Sequence[str]


def _published(files: MeshFiles, saved: RosterFile | None, opts: AgentOptions) -> _Published:
    own = files.own_preliminary()
    signed = saved.roster.get(files.identity.public) if saved else None
    signed_roles = signed.roles if isinstance(signed, MemberRecord) else ()
    # Roles only accumulate (a restart without --role relay keeps the hub where it is);
    # endpoints default to what this node last published, then to what it gave the ceremony.
    roles = sorted(set(own.roles if own else ()) | set(signed_roles) | set(opts.roles))
    if opts.endpoints is not None:
        endpoints: Sequence[str] = tuple(opts.endpoints)
    elif isinstance(signed, MemberRecord) and signed.signer == files.identity.public:
        endpoints = signed.endpoints
    else:
        endpoints = files.endpoints
    return _Published(roles=roles, endpoints=endpoints)


class NodeAgent:
    """One ``ppn up`` process. :meth:`start` loads the state directory, brings the device up
    and reconciles it once; :meth:`serve` runs PPN control, the mesh.json/outbox watch and the
    signal watch until SIGTERM/SIGINT (or cancellation), then saves.

    The decisions are :class:`MeshAgent`'s and the network side is :class:`MeshNode`'s; this
    object owns what lives between them: the files, the device handle, the generation counter,
    and the saving of the roster, hosts and ``agent.json``.
    """

    def __init__(
        self,
        opts: AgentOptions,
        *,
        files: MeshFiles,
        handle: DeviceHandle,
        interface: str,
        published: _Published,
        roster: Roster,
        generation: int,
        baseline: frozenset[bytes],
    ) -> None:
        self.opts = opts
        self.files = files
        # The latest mesh.json; ``files`` stays the one read at start (identity, keys, mesh).
        self.current = files
        self.handle = handle
        self.interface = interface
        self.roster = roster
        self.generation = generation
        self.baseline = baseline
        self.control_host = opts.control_listen or node_address6(files.mesh, files.identity.public)
        # The WireGuard key the device uses: the ceremony's, until a rotation is handed over
        # (RFC-NOTES §7.15); a rotated key waits staged in wireguard.key.next until then.
        self.wg: WireGuardKeyPair = files.wg
        self._handover_wanted = trio.Event()
        # Set when an identity rotation was handed over: run_agent starts again as the successor.
        self.restart_requested = False
        self.stopped_by: signal.Signals | None = None  # the signal that ended serve(), if one did
        self._serve_scope: trio.CancelScope | None = None
        self.node: MeshNode | None = None  # set once the initial state is saved
        self.address = files.address  # the routed address, once the device is reconciled
        self.device = DeviceWireGuard(
            interface=interface,
            backend=handle.backend,
            private_key=self.wg.private,
            self_identity=files.identity.public,
            listen_port=_listen_port(files, published.endpoints, opts.listen_port),
            fallback_address=f"{files.address}/{roster.network.prefixlen}",
            fallback_control_address=f"{node_address6(files.mesh, files.identity.public)}/64",
            preliminary=lambda: self.current.preliminary,
        )
        self.agent = MeshAgent(
            roster,
            identity=files.identity,
            now=trio.current_time(),
            endpoints=published.endpoints,
            roles=published.roles,
            bootstrap=[
                node_address6(files.mesh, m.identity)
                for m in files.preliminary
                if m.identity != files.identity.public
            ],
            pull_interval=opts.pull_interval,
        )

    @classmethod
    async def start(cls, opts: AgentOptions) -> NodeAgent:
        """Load the state, bring the device up and reconcile it once, save, and return the
        agent ready to :meth:`serve`. Raises the I/O modules' errors."""
        files = load_mesh_files(opts.state)
        other = running_agent_pid(opts.state)
        if other is not None:
            raise AgentAlreadyRunning(f"another 'ppn up' (pid {other}) runs on {opts.state}")
        saved = load_roster(files.directory, mesh=files.mesh, cidr=files.cidr)
        published = _published(files, saved, opts)
        roster, generation, baseline = _initial_roster(files, published.roles, saved)
        interface = opts.interface or files.interface
        opts.progress(f"bringing up WireGuard interface {interface} ...")
        handle = await trio.to_thread.run_sync(ensure_device, interface)
        self = cls(
            opts,
            files=files,
            handle=handle,
            interface=interface,
            published=published,
            roster=roster,
            generation=generation,
            baseline=baseline,
        )
        await self._catch_up()
        return self

    async def _catch_up(self) -> None:
        """Take what happened while no agent ran: members a ceremony on this node admitted and
        records a command queued; reconcile the device once and save if anything is new."""
        admitted: list[Record] = list(self._admissions())
        # Records a command queued while no agent ran (or just before this one started).
        queued, claim = _merge_queued(self.roster, self.opts.state)
        admitted += queued
        if admitted:
            self.agent.roster_changed(MergeResult(changed=tuple(admitted)))
        await trio.to_thread.run_sync(self.device.reconcile_now, self.roster)
        me = self.roster.view().member(self.files.identity.public)
        self.address = me.address if me is not None and me.routed else self.files.address
        if self.generation == 0 or admitted:
            self.save(self.roster)
        if claim is not None:
            claim.release()  # what it held is in the saved roster now
        self._check_handover()
        self.node = MeshNode(
            self.agent,
            wireguard=self.device,
            save=self.save,
            listen_host=self.control_host,
            listen_port=self.opts.control_port,
        )

    def _admissions(self) -> list[MemberRecord]:
        return sponsor_admissions(
            self.roster,
            self.current.preliminary,
            baseline=self.baseline,
            sponsor=self.files.identity,
            now=int(time.time()),
        )

    def info(self) -> dict[str, object]:
        """The contents of ``agent.json`` (what ``ppn status`` reads)."""
        node = self.node
        stats = node.stats if node is not None else None
        return {
            "pid": os.getpid(),
            "interface": self.interface,
            "backend": self.handle.kind,
            "wireguard_go_pid": self.handle.started_pid,
            "control": f"[{self.control_host}]:"
            f"{node.bound_port if node else self.opts.control_port}",
            "generation": self.generation,
            "pulls_ok": stats.pulls_ok if stats else 0,
            "pulls_failed": stats.pulls_failed if stats else 0,
            "pushes_ok": stats.pushes_ok if stats else 0,
            "pushes_failed": stats.pushes_failed if stats else 0,
            "rejected": [r.detail for r in stats.rejected[-10:]] if stats else [],
            "last_error": stats.last_error if stats else None,
            "wireguard_operations": self.device.operations_applied,
            "wireguard_key": encode_key(self.wg.public),
            "reconciles": stats.reconciles if stats else 0,
            "updated": int(time.time()),
        }

    def save(self, roster: Roster) -> None:
        """Save the roster as the next generation, then the hosts fragment (and the hosts file,
        if one is managed) and ``agent.json``. Raises OSError."""
        self.generation += 1
        opts = self.opts
        save_roster(opts.state, roster, generation=self.generation, baseline=self.baseline)
        fragment = hosts_fragment(roster.view(), mesh=roster.mesh)
        write_hosts(opts.state, fragment)
        if opts.hosts_file is not None:
            try:
                text = opts.hosts_file.read_text()
            except FileNotFoundError:
                text = ""
            updated = replace_hosts_block(text, fragment, mesh=roster.mesh)
            if updated != text:
                opts.hosts_file.write_text(updated)
        write_agent_info(opts.state, self.info())

    async def serve(self, *, ready: Callable[[dict[str, object]], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation); save on the way out, whatever ends it."""
        node = self.node
        assert node is not None, "start() builds the node"
        try:
            async with trio.open_nursery() as nursery:
                self._serve_scope = nursery.cancel_scope
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                port = await nursery.start(node.run)
                nursery.start_soon(self._watch, node)
                nursery.start_soon(self._hand_over_keys, node)
                write_agent_info(self.opts.state, self.info())
                self._announce(port, ready)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    self.save(self.roster)
                except OSError as exc:
                    log.warning("final save failed: %s", exc)

    def _announce(self, port: int, ready: Callable[[dict[str, object]], None] | None) -> None:
        address = self.address
        self.opts.progress(
            f"up: {self.files.name} {address} on {self.interface} ({self.handle.kind}); "
            f"PPN control on [{self.control_host}]:{port}"
        )
        if ready is not None:
            ready(
                {
                    "interface": self.interface,
                    "address": address,
                    "control_port": port,
                    "members": len(self.roster.view().members),
                    "backend": self.handle.kind,
                }
            )

    async def _watch(self, node: MeshNode) -> None:
        """Every second: refresh ``agent.json``, re-read a changed ``mesh.json``, admit the
        members this node sponsored and take the outbox."""
        mtime = self.files.mesh_json_mtime
        reported: dict[str, object] = {}
        while True:
            await trio.sleep(WATCH_INTERVAL)
            reported = self._publish_info(reported)
            mtime = self._reread_mesh_json(mtime)
            # Every tick, not only when mesh.json changed: a sponsor whose own signed entry had
            # not arrived yet when the ceremony finished admits its joiner as soon as it has.
            admitted = self._admissions()
            if admitted:
                self.opts.progress(
                    "admitted " + ", ".join(f"{r.name} ({r.address})" for r in admitted)
                )
                node.merged_locally(MergeResult(changed=tuple(admitted)))
            self._take_outbox(node)

    def _publish_info(self, reported: dict[str, object]) -> dict[str, object]:
        """Rewrite ``agent.json`` if anything but its timestamp changed; returns what it holds."""
        report = self.info()
        report.pop("updated")
        if report != reported:
            try:
                write_agent_info(self.opts.state, self.info())
            except OSError as exc:
                log.info("writing agent.json failed: %s", exc)
        return report

    def _reread_mesh_json(self, mtime: float) -> float:
        try:
            now_mtime = (self.opts.state / "mesh.json").stat().st_mtime
            if now_mtime != mtime:
                self.current = load_mesh_files(self.opts.state)
                mtime = now_mtime
        except Exception as exc:  # a half-written file is retried on the next tick
            log.info("re-reading mesh.json failed: %s", exc)
        return mtime

    def _take_outbox(self, node: MeshNode) -> None:
        queued, claim = _merge_queued(self.roster, self.opts.state)
        if claim is not None:
            try:
                self.save(self.roster)  # on disk before the claimed outbox is let go
            except OSError as exc:
                log.warning("saving state failed; the outbox is kept: %s", exc)
            else:
                claim.release()
        if queued:
            self.opts.progress("took " + ", ".join(_describe(r) for r in queued))
            node.merged_locally(MergeResult(changed=tuple(queued)))
            self._check_handover()

    # --- key rotation (RFC-NOTES §7.15) ------------------------------------------------------

    def _staged(self, kind: str) -> bytes | None:
        """The staged ``kind`` key ("wireguard" or "identity"), or None (also when unreadable:
        the handover then waits, and says why in the log)."""
        from genesis import StateError, staged_node_key

        try:
            return staged_node_key(self.opts.state, kind)
        except StateError as exc:
            log.warning("cannot read the staged %s key: %s", kind, exc)
            return None

    def _staged_wireguard(self) -> WireGuardKeyPair | None:
        staged = self._staged("wireguard")
        return None if staged is None else WireGuardKeyPair.from_private(staged)

    def _wireguard_status(self) -> tuple[KeyStatus, WireGuardKeyPair | None]:
        staged = self._staged_wireguard()
        status = wireguard_key_status(
            self.roster,
            self.files.identity.public,
            current=self.wg.public,
            staged=None if staged is None else staged.public,
        )
        return status, staged

    def _check_handover(self) -> None:
        if self._wireguard_status()[0] is KeyStatus.PENDING or self._identity_pending():
            self._handover_wanted.set()

    def _staged_identity(self) -> IdentityKey | None:
        staged = self._staged("identity")
        return None if staged is None else IdentityKey.from_seed(staged)

    def _identity_pending(self) -> bool:
        staged = self._staged_identity()
        return (
            identity_rotation_pending(
                self.roster,
                self.files.identity.public,
                staged=None if staged is None else staged.public,
            )
            is not None
        )

    async def _hand_over_keys(self, node: MeshNode) -> None:
        while True:
            await self._handover_wanted.wait()
            self._handover_wanted = trio.Event()
            await self._hand_over_wireguard(node)
            await self._hand_over_identity(node)

    async def _hand_over_identity(self, node: MeshNode) -> None:
        """Deliver this node's rotation and its successor's entry as the old identity (its
        control address is the one the members route to it), then promote the new identity
        key and restart as the successor (RFC-NOTES §7.15)."""
        from genesis import StateError, promote_node_key

        while True:
            staged = self._staged_identity()
            rotation = identity_rotation_pending(
                self.roster,
                self.files.identity.public,
                staged=None if staged is None else staged.public,
            )
            successor = None if staged is None else self.roster.get(staged.public)
            if rotation is None or successor is None:
                return
            acked = await node.deliver((rotation, successor))
            if acked:
                break
            log.info("no member took the identity rotation yet; retrying")
            await trio.sleep(HANDOVER_RETRY)
        try:
            await trio.to_thread.run_sync(promote_node_key, self.opts.state, "identity")
        except StateError as exc:
            log.warning("promoting the new identity key failed (retried at restart): %s", exc)
            return
        self.opts.progress(
            f"identity rotated; {acked} member(s) had it first; restarting as the successor"
        )
        self.restart_requested = True
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    async def _hand_over_wireguard(self, node: MeshNode) -> None:
        """Deliver this node's record naming the staged key, then promote the key and switch
        the device to it (attempts alternate keys until one is acknowledged: :class:`Handover`)."""
        from genesis import StateError, promote_node_key

        handover = Handover()
        while True:
            status, staged = self._wireguard_status()
            record = self.roster.get(self.files.identity.public)
            if status is not KeyStatus.PENDING or staged is None or record is None:
                return
            trying = staged if handover.use_new_key() else self.wg
            await self._use_wireguard_key(trying)
            acked = await node.deliver((record,))
            if handover.attempt_finished(delivered=acked > 0):
                break
            log.info("no member took the new WireGuard key yet; retrying")
            await trio.sleep(HANDOVER_RETRY)
        try:
            await trio.to_thread.run_sync(promote_node_key, self.opts.state, "wireguard")
        except StateError as exc:
            # The record is out: use the new key anyway (the peers have it), and keep retrying
            # the promotion on the next rotation check.
            log.warning("promoting the new WireGuard key failed: %s", exc)
        self.wg = staged
        await self._use_wireguard_key(staged)
        self.opts.progress(f"WireGuard key rotated; {acked} member(s) had the new key first")
        write_agent_info(self.opts.state, self.info())

    async def _use_wireguard_key(self, pair: WireGuardKeyPair) -> None:
        if self.device.private_key == pair.private:
            return
        self.device.private_key = pair.private
        await self.device.reconcile(self.roster)
        # The key change dropped every session; one datagram per member starts the handshakes
        # now instead of at the next packet that happens to be sent.
        targets = [
            m.address
            for m in self.roster.view().members
            if m.identity != self.files.identity.public
        ]
        await trio.to_thread.run_sync(nudge, targets)

    async def _watch_signals(self, cancel: trio.CancelScope) -> None:
        # Both signals stop the agent the same way (a cancellation, so the final save runs and
        # the device is left up); only the exit differs (RFC-NOTES §1.4): SIGTERM is the clean
        # stop (its progress line, exit 0), SIGINT an interruption (``ppn: interrupted``, 130),
        # which the command reports from ``stopped_by``.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.stopped_by = signal.Signals(signum)
                if self.stopped_by is signal.SIGTERM:
                    self.opts.progress("stopping on SIGTERM; the tunnel stays up")
                cancel.cancel()
                return


async def run_agent(
    opts: AgentOptions,
    *,
    ready: Callable[[dict[str, object]], None] | None = None,
    beside: Callable[[NodeAgent], AbstractAsyncContextManager[object]] | None = None,
) -> signal.Signals | None:
    """Run the agent until SIGTERM/SIGINT (or cancellation) and return the signal that stopped
    it (None after a cancellation). Raises the I/O modules' errors.

    After an identity rotation is handed over the agent starts again in the same process under
    the new identity (the device is adopted as it is; RFC-NOTES §7.15). ``beside``, if given,
    is entered around each agent's life (``ppn up --metrics`` serves its endpoint there), so
    whatever runs next to the agent follows it through that restart too."""
    while True:
        agent = await NodeAgent.start(opts)
        if beside is None:
            await agent.serve(ready=ready)
        else:
            async with beside(agent):
                await agent.serve(ready=ready)
        if not agent.restart_requested:
            return agent.stopped_by
        ready = None  # announced once
