"""``ppn up``: the node agent process, wiring state directory, WireGuard device and control.

Start-up, in order: read the ceremony's files and the saved roster (or found / start one);
bring the WireGuard device up (a running device is adopted, never recreated) and reconcile it
once, which puts the mesh and control addresses on the interface; then serve PPN control on
the control address (RFC-NOTES §7.1),
pull from every member at once and every 30 s, push changes, reconcile every 5 s and after every
change, watch ``mesh.json`` for members admitted by a ceremony on this node, and take records
that commands signed (``ppn remove``'s tombstones) from ``outbox.bin``.

SIGTERM or SIGINT stops the agent after saving; the device and its peers stay as they are, so
traffic keeps flowing and a restart finds nothing to change.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ._agent import PULL_INTERVAL, MeshAgent
from ._bootstrap import sponsor_admissions
from ._control import CONTROL_PORT
from ._ids import node_address6
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
from ._io_wg import DeviceWireGuard, ensure_device
from ._names import hosts_fragment, replace_hosts_block
from ._records import MemberRecord, Record
from ._roster import MergeResult, Roster
from ._trio import MeshNode

__all__ = ["AgentOptions", "run_agent"]

log = logging.getLogger("ppn.mesh")

WG_PORT = 51820
WATCH_INTERVAL = 1.0


@dataclass(kw_only=True)
class AgentOptions:
    state: Path
    interface: str | None = None
    endpoints: Sequence[str] | None = None
    roles: Sequence[str] = ()
    control_port: int = CONTROL_PORT
    control_listen: str | None = None  # default: this node's mesh address
    listen_port: int | None = None  # WireGuard; default: port of the first endpoint, or 51820
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
    return WG_PORT


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
    kind = "removal" if not isinstance(record, MemberRecord) else "entry"
    return f"{kind} of {record.name}"


async def run_agent(
    opts: AgentOptions, *, ready: Callable[[dict[str, object]], None] | None = None
) -> None:
    """Run the agent until SIGTERM/SIGINT (or cancellation). Raises the I/O modules' errors."""
    files = load_mesh_files(opts.state)
    other = running_agent_pid(opts.state)
    if other is not None:
        raise AgentAlreadyRunning(f"another 'ppn up' (pid {other}) runs on {opts.state}")
    own = files.own_preliminary()
    saved = load_roster(files.directory, mesh=files.mesh, cidr=files.cidr)
    signed = saved.roster.get(files.identity.public) if saved else None
    signed_roles = signed.roles if isinstance(signed, MemberRecord) else ()
    # Roles only accumulate (a restart without --role relay keeps the hub where it is);
    # endpoints default to what this node last published, then to what it gave the ceremony.
    roles = sorted(set(own.roles if own else ()) | set(signed_roles) | set(opts.roles))
    if opts.endpoints is not None:
        endpoints = tuple(opts.endpoints)
    elif isinstance(signed, MemberRecord) and signed.signer == files.identity.public:
        endpoints = signed.endpoints
    else:
        endpoints = files.endpoints
    roster, generation, baseline = _initial_roster(files, roles, saved)
    interface = opts.interface or files.interface
    opts.progress(f"bringing up WireGuard interface {interface} ...")
    handle = await trio.to_thread.run_sync(ensure_device, interface)
    current = {"files": files}

    device = DeviceWireGuard(
        interface=interface,
        backend=handle.backend,
        private_key=files.wg.private,
        self_identity=files.identity.public,
        listen_port=_listen_port(files, endpoints, opts.listen_port),
        fallback_address=f"{files.address}/{roster.network.prefixlen}",
        fallback_control_address=f"{node_address6(files.mesh, files.identity.public)}/64",
        preliminary=lambda: current["files"].preliminary,
    )
    agent = MeshAgent(
        roster,
        identity=files.identity,
        now=trio.current_time(),
        endpoints=endpoints,
        roles=roles,
        bootstrap=[
            node_address6(files.mesh, m.identity)
            for m in files.preliminary
            if m.identity != files.identity.public
        ],
        pull_interval=opts.pull_interval,
    )
    admitted: list[Record] = list(
        sponsor_admissions(
            roster,
            files.preliminary,
            baseline=baseline,
            sponsor=files.identity,
            now=int(time.time()),
        )
    )
    # Records a command queued while no agent ran (or just before this one started).
    queued, claim = _merge_queued(roster, opts.state)
    admitted += queued
    if admitted:
        agent.roster_changed(MergeResult(changed=tuple(admitted)))
    await trio.to_thread.run_sync(device.reconcile_now, roster)
    me = roster.view().member(files.identity.public)
    address = me.address if me is not None and me.routed else files.address
    control_host = opts.control_listen or node_address6(files.mesh, files.identity.public)
    state = {"generation": generation}

    def info(node: MeshNode | None) -> dict[str, object]:
        stats = node.stats if node is not None else None
        return {
            "pid": os.getpid(),
            "interface": interface,
            "backend": handle.kind,
            "wireguard_go_pid": handle.started_pid,
            "control": f"[{control_host}]:{node.bound_port if node else opts.control_port}",
            "generation": state["generation"],
            "pulls_ok": stats.pulls_ok if stats else 0,
            "pulls_failed": stats.pulls_failed if stats else 0,
            "pushes_ok": stats.pushes_ok if stats else 0,
            "pushes_failed": stats.pushes_failed if stats else 0,
            "rejected": [r.detail for r in stats.rejected[-10:]] if stats else [],
            "last_error": stats.last_error if stats else None,
            "wireguard_operations": device.operations_applied,
            "reconciles": stats.reconciles if stats else 0,
            "updated": int(time.time()),
        }

    node_box: list[MeshNode] = []

    def save(roster: Roster) -> None:
        state["generation"] += 1
        save_roster(opts.state, roster, generation=state["generation"], baseline=baseline)
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
        write_agent_info(opts.state, info(node_box[0] if node_box else None))

    if generation == 0 or admitted:
        save(roster)
    if claim is not None:
        claim.release()  # what it held is in the saved roster now
    node = MeshNode(
        agent,
        wireguard=device,
        save=save,
        listen_host=control_host,
        listen_port=opts.control_port,
    )
    node_box.append(node)

    async def watch_mesh_json() -> None:
        mtime = files.mesh_json_mtime
        reported: dict[str, object] = {}
        while True:
            await trio.sleep(WATCH_INTERVAL)
            report = info(node)
            report.pop("updated")
            if report != reported:
                reported = report
                try:
                    write_agent_info(opts.state, info(node))
                except OSError as exc:
                    log.info("writing agent.json failed: %s", exc)
            try:
                now_mtime = (opts.state / "mesh.json").stat().st_mtime
                if now_mtime != mtime:
                    current["files"] = load_mesh_files(opts.state)
                    mtime = now_mtime
            except Exception as exc:  # a half-written file is retried on the next tick
                log.info("re-reading mesh.json failed: %s", exc)
            # Every tick, not only when mesh.json changed: a sponsor whose own signed entry had
            # not arrived yet when the ceremony finished admits its joiner as soon as it has.
            admitted = sponsor_admissions(
                roster,
                current["files"].preliminary,
                baseline=baseline,
                sponsor=files.identity,
                now=int(time.time()),
            )
            if admitted:
                opts.progress("admitted " + ", ".join(f"{r.name} ({r.address})" for r in admitted))
                node.merged_locally(MergeResult(changed=tuple(admitted)))
            queued, claim = _merge_queued(roster, opts.state)
            if claim is not None:
                try:
                    save(roster)  # on disk before the claimed outbox is let go
                except OSError as exc:
                    log.warning("saving state failed; the outbox is kept: %s", exc)
                else:
                    claim.release()
            if queued:
                opts.progress("took " + ", ".join(_describe(r) for r in queued))
                node.merged_locally(MergeResult(changed=tuple(queued)))

    async def watch_signals(cancel: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                opts.progress(f"stopping on {signal.Signals(signum).name}; the tunnel stays up")
                cancel.cancel()
                return

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, nursery.cancel_scope)
            port = await nursery.start(node.run)
            nursery.start_soon(watch_mesh_json)
            write_agent_info(opts.state, info(node))
            details: dict[str, object] = {
                "interface": interface,
                "address": address,
                "control_port": port,
                "members": len(roster.view().members),
                "backend": handle.kind,
            }
            opts.progress(
                f"up: {files.name} {address} on {interface} ({handle.kind}); PPN control on "
                f"[{control_host}]:{port}"
            )
            if ready is not None:
                ready(details)
    finally:
        with trio.CancelScope(shield=True):
            try:
                save(roster)
            except OSError as exc:
                log.warning("final save failed: %s", exc)
