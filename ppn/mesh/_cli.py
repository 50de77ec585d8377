"""``ppn up``, ``ppn status``, ``ppn resolve``, ``ppn remove`` and ``ppn admin``: the node agent and its views
(RFC-NOTES §7.11).

Module top stays light; trio, the agent and the WireGuard backends load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli._main import CommandError, add_metrics_flag
from ..ports import AGENT_METRICS_PORT, CONTROL_PORT

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._io_state import MeshFiles
    from ._records import Record
    from ._roster import Roster
    from ._topology import Topology
    from ._view import Member, RosterView

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_NOT_MEMBER = 30
EXIT_BAD_STATE = 31
EXIT_UNKNOWN_NAME = 32
EXIT_WIREGUARD = 33
EXIT_CONTROL = 34
EXIT_UNREACHABLE = 35
EXIT_AGENT_RUNNING = 36
EXIT_REMOVE_REFUSED = 37
EXIT_NOT_CONFIRMED = 38
EXIT_AGENT_SLOW = 39

# How long 'ppn remove' waits for a running agent to take the tombstone (it looks every second).
REMOVE_WAIT = 10.0

EXIT_STATUSES = """\
exit status:
  0   success
  30  the state directory is not a mesh member yet (run 'ppn genesis' or 'ppn join')
  31  the state directory is damaged or belongs to another mesh
  32  (resolve, remove, admin) no member has that name; (admin revoke) it is no admin
  33  the WireGuard device cannot be brought up or configured
  34  the PPN control port cannot be opened
  35  (status --check) some member is not reachable
  36  (up) another 'ppn up' already runs on this state directory
  37  (remove, admin) this node may not sign that: only the member itself, the genesis
      node or an admin may remove a member, only a delegated admin the genesis node;
      only the genesis node or an admin may grant or revoke admin rights
  38  (remove, admin) not confirmed; nothing changed
  39  (remove, admin) the running agent did not take the record within 10 s (it stays
      queued)
  130 interrupted
"""

DEFAULT_STATE = os.environ.get("PPN_STATE", "/var/lib/ppn")


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        default=Path(DEFAULT_STATE),
        metavar="DIR",
        help="the node's state directory (default: $PPN_STATE or /var/lib/ppn)",
    )


def register(subparsers: Subparsers) -> None:
    """Add ``up``, ``status``, ``resolve``, ``remove`` and ``admin`` to ``ppn``."""
    _add_up(subparsers)
    _add_status(subparsers)
    _add_resolve(subparsers)
    _add_remove(subparsers)
    _add_admin(subparsers)


def _add_up(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "up",
        help="run the node agent: WireGuard up, roster sync, reconcile (until SIGTERM)",
        description=(
            "Bring this node's WireGuard interface up and keep it matching the signed roster: "
            f"serve PPN control (TCP {CONTROL_PORT} on this node's IPv6 control address in the mesh), push roster changes to every "
            "member, pull from every member every 30 s, reconcile WireGuard peers with minimal "
            "changes every 5 s, and admit members that a 'ppn invite' on this node let in. "
            "SIGTERM stops the agent (exit 0) and Ctrl-C interrupts it (130); either way the "
            "tunnel stays up, and running it again changes nothing "
            "on a correctly configured interface."
        ),
        epilog=EXIT_STATUSES
        + "\nexample:\n  ppn up --state /var/lib/ppn --role relay --endpoint 203.0.113.7:51820\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _state_arg(p)
    p.add_argument(
        "--interface", metavar="NAME", help="WireGuard interface (default: from mesh.json, ppn0)"
    )
    p.add_argument(
        "--endpoint",
        action="append",
        metavar="HOST:PORT",
        help="where members reach this node (repeatable; default: as given at genesis/join)",
    )
    p.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="ROLE",
        help="add a role to this node's entry, e.g. 'relay' to be the mesh's hub (repeatable)",
    )
    p.add_argument("--listen-port", type=int, metavar="PORT", help="WireGuard UDP port")
    p.add_argument(
        "--control-port",
        type=int,
        default=CONTROL_PORT,
        metavar="PORT",
        help=f"PPN control TCP port ({CONTROL_PORT})",
    )
    p.add_argument(
        "--control-listen",
        metavar="ADDR",
        help="address PPN control listens on (default: this node's control address)",
    )
    p.add_argument(
        "--hosts-file",
        type=Path,
        metavar="PATH",
        help="also keep the mesh's block in this hosts file",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line when up (for scripts)")
    add_metrics_flag(p, AGENT_METRICS_PORT)
    p.set_defaults(handler=_up, daemon=True)  # daemon: the log set-up (ppn/cli/_logging.py)


def _add_status(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "status",
        help="members, addresses, roles, handshake age, endpoints and path (direct or via hub)",
        description=(
            "Show the mesh as this node sees it: every member with its address, roles, the "
            "path this node uses to reach it (direct, via the relay hub), the age of the last "
            "WireGuard handshake and the endpoint in use; then any roster problems "
            "(address conflicts, broken admission chains)."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _state_arg(p)
    p.add_argument("--interface", metavar="NAME", help="WireGuard interface (default: the agent's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 35 unless every member is reachable")
    p.set_defaults(handler=_status)


def _add_resolve(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "resolve",
        help="a member's mesh address by name (also NAME.ppn or a node id prefix)",
        description="Print the mesh address of the member called NAME.",
        epilog=EXIT_STATUSES + "\nexample:\n  ping $(ppn resolve cloud)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME")
    _state_arg(p)
    p.add_argument("--json", action="store_true", help="address, endpoints and node id as JSON")
    p.set_defaults(handler=_resolve)


def _add_remove(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "remove",
        help="remove a member from the mesh for good (signs its removal)",
        description=(
            "Remove the member called NAME (or NAME.ppn, or a node id prefix) from the mesh: "
            "sign its removal with this node's identity key and hand it to this node's agent, "
            "which pushes it to every member; each member's agent then drops the member's "
            "WireGuard peer. The member itself or the genesis node signs a tombstone; an admin "
            "(see 'ppn admin') signs an admin act, which also removes the genesis node when it "
            "is lost for good. Removal is final: the removed identity can never rejoin, but "
            "its name is free again — a new node (a fresh state directory) may join under it "
            "and gets its address back if no live member holds it. Without a running agent "
            "the removal is written to the roster and pushed when 'ppn up' next runs."
        ),
        epilog=EXIT_STATUSES
        + "\nexamples:\n  ppn remove laptop --state /var/lib/ppn          # asks first\n"
        "  ppn remove laptop --state /var/lib/ppn --yes\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="member name, NAME.ppn, or a node id prefix")
    _state_arg(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(handler=_remove)


def _load(state: Path) -> tuple[Any, Any]:
    from ._io_state import StateDirError, load_mesh_files, load_roster
    from ._roster import Roster

    try:
        files = load_mesh_files(state)
        saved = load_roster(state, mesh=files.mesh, cidr=files.cidr)
    except StateDirError as exc:
        raise CommandError(str(exc), EXIT_NOT_MEMBER if exc.missing else EXIT_BAD_STATE) from exc
    roster = saved.roster if saved else Roster(mesh=files.mesh, network=files.cidr)
    return files, (roster, saved.generation if saved else 0)


def _up(args: argparse.Namespace) -> int:
    import logging
    import signal
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    import trio

    from ..cli._main import trio_run
    from ._io_state import AgentAlreadyRunning, StateDirError
    from ._io_wg import MeshDeviceError
    from ._trio_agent import AgentOptions, NodeAgent, run_agent

    log = logging.getLogger("ppn.up")

    def progress(line: str) -> None:
        log.info("%s", line, extra={"event": "progress"})

    def ready(details: dict[str, object]) -> None:
        from .._io_sdnotify import notify_ready  # systemd Type=notify (issue 17)

        notify_ready()
        if args.json:
            print(json.dumps({"event": "up", **details}, sort_keys=True), flush=True)

    options = AgentOptions(
        state=args.state,
        interface=args.interface,
        endpoints=args.endpoint,
        roles=args.role,
        control_port=args.control_port,
        control_listen=args.control_listen,
        listen_port=args.listen_port,
        hosts_file=args.hosts_file,
        progress=progress,
    )

    beside = None
    if args.metrics:
        from ..cli._metrics import AgentCollector, Metrics

        @asynccontextmanager
        async def metrics_beside(agent: NodeAgent) -> AsyncIterator[None]:
            """The agent's metrics endpoint (RFC-NOTES §3.1), for as long as this agent runs."""
            metrics = Metrics(EXIT_CONTROL)
            AgentCollector(agent, metrics.registry)
            assert agent.node is not None  # start() builds it
            metrics.listener("control", agent.node.guard)
            async with trio.open_nursery() as nursery:
                await nursery.start(metrics.serve, args.metrics)
                yield
                nursery.cancel_scope.cancel()

        beside = metrics_beside

    async def run() -> signal.Signals | None:
        return await run_agent(options, ready=ready, beside=beside)

    try:
        stopped_by = trio_run(run)
    except AgentAlreadyRunning as exc:
        raise CommandError(str(exc), EXIT_AGENT_RUNNING) from exc
    except StateDirError as exc:
        raise CommandError(str(exc), EXIT_NOT_MEMBER if exc.missing else EXIT_BAD_STATE) from exc
    except MeshDeviceError as exc:
        raise CommandError(str(exc), EXIT_WIREGUARD) from exc
    except OSError as exc:
        raise CommandError(f"cannot open PPN control: {exc.strerror or exc}", EXIT_CONTROL) from exc
    if stopped_by is signal.SIGINT:
        # Ctrl-C is an interruption like everywhere else (RFC-NOTES §1.4): the agent stopped
        # and saved as on SIGTERM, the tunnel stays up, and ppn's one handler of interruptions
        # prints ``ppn: interrupted`` (a JSON record under --log-format json) and exits 130.
        raise KeyboardInterrupt
    return 0


def _address_key(address: str) -> tuple[int, int]:
    import ipaddress

    parsed = ipaddress.ip_address(address)
    return parsed.version, int(parsed)


def _handshake_cell(row: dict[str, Any], rows: list[dict[str, Any]], hub: str) -> str:
    if row["path"] == "self":
        return "-"
    if row["path"] == "via-hub":
        hub_row = next((r for r in rows if r["name"] == hub), None)
        return f"({hub}) {_age(hub_row['handshake_age'] if hub_row else None)}"
    return _age(row["handshake_age"])


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _status(args: argparse.Namespace) -> int:
    import time

    from ._topology import plan_topology

    files, (roster, generation) = _load(args.state)
    agent = _agent_info(args.state)
    interface = args.interface or agent.get("interface") or files.interface
    observations, device_note = _observe_device(interface)
    view = roster.view()
    topology = plan_topology(
        view,
        network=roster.network,
        self_identity=files.identity.public,
        observations=observations,
        now=int(time.time()),
    )
    report = _StatusReport(
        files=files,
        roster=roster,
        view=view,
        generation=generation,
        interface=interface,
        device_note=device_note,
        agent=agent,
        agent_running=_agent_running(agent),
        topology=topology,
        rows=_member_rows(topology) or _ceremony_rows(files),
        applied=bool(view.members),
    )
    if args.json:
        _print_status_json(report)
    else:
        _print_status_text(report)
    unreachable: list[str] = [r["name"] for r in report.rows if not r["reachable"]]
    if args.check and unreachable:
        raise CommandError("not reachable: " + ", ".join(unreachable), EXIT_UNREACHABLE)
    return 0


def _agent_info(state: Path) -> dict[str, Any]:
    from ._io_state import read_agent_info

    return read_agent_info(state) or {}


def _agent_running(agent: dict[str, Any]) -> bool:
    """Whether the process ``agent.json`` names still exists."""
    if not isinstance(agent.get("pid"), int):
        return False
    try:
        os.kill(agent["pid"], 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _observe_device(interface: str) -> tuple[dict[Any, Any], str]:
    """The device's peer observations, and a note on the device (its backend, down, or why it
    cannot be read: status still shows the roster then)."""
    from .. import wg
    from ._io_wg import observations_from

    try:
        choice = wg.select_backend(interface)
        if choice.backend is not None and choice.running:
            return observations_from(choice.backend.read()), choice.kind
        return {}, "down"
    # A malformed answer (either reader may report it when a peer is first decoded, here in
    # observations_from) is one more way a device cannot be read.
    except (wg.DeviceError, wg.UAPIProtocolError, OSError) as exc:
        return {}, f"unreadable ({exc})"


def _ceremony_rows(files: MeshFiles) -> list[dict[str, Any]]:
    """Before 'ppn up' ever ran there is no signed roster: the members the join ceremony
    recorded (mesh.json), marked as not yet applied, so a fresh join does not look failed."""
    from ._ids import node_id

    rows: list[dict[str, Any]] = []
    for m in sorted(files.preliminary, key=lambda m: _address_key(m.address)):
        me = m.identity == files.identity.public
        rows.append(
            {
                "name": m.name,
                "node_id": node_id(m.identity).hex(),
                "address": m.address,
                "roles": list(m.roles),
                "path": "self" if me else "not applied",
                "reachable": me,
                "handshake_age": None,
                "endpoint": m.endpoints[0] if m.endpoints else None,
                "version": None,
                "applied": False,
            }
        )
    return rows


def _member_rows(topology: Topology) -> list[dict[str, Any]]:
    """One row per member, in address order: how this node reaches it and how recently."""
    rows: list[dict[str, Any]] = []
    for path in sorted(topology.paths, key=lambda p: _address_key(p.member.address)):
        m = path.member
        rows.append(
            {
                "name": m.name,
                "node_id": m.node_id.hex(),
                "address": m.address,
                "roles": list(m.roles),
                "path": path.kind.value,
                "reachable": path.reachable,
                "handshake_age": path.handshake_age,
                "endpoint": path.endpoint or (m.endpoints[0] if m.endpoints else None),
                "version": m.version,
                "applied": True,
            }
        )
    return rows


@dataclass(frozen=True, kw_only=True)
class _StatusReport:
    """What ``ppn status`` prints, in either form."""

    files: MeshFiles
    roster: Roster
    view: RosterView
    generation: int
    interface: str
    device_note: str
    agent: dict[str, Any]
    agent_running: bool
    topology: Topology
    rows: list[dict[str, Any]]
    applied: bool = True  # False: no signed roster yet, the rows are the ceremony's

    def problems(self) -> list[dict[str, Any]]:
        from ._ids import short_id

        return [
            {
                "kind": p.kind.value,
                "node_id": short_id(p.identity),
                "detail": p.detail,
                "suggested_address": p.suggested_address,
            }
            for p in self.view.problems
        ]


def _rotations(r: _StatusReport) -> dict[str, Any]:
    """Identities on the roster that moved to a new key, and this node's rotations that are
    signed but not yet handed over (RFC-NOTES §7.15)."""
    from genesis import StateError, staged_node_key

    from .._keys import IdentityKey, WireGuardKeyPair
    from ._ids import node_id
    from ._rotation import KeyStatus, identity_rotation_pending, wireguard_key_status

    me = r.files.identity.public
    pending: list[str] = []
    try:
        wg_staged = staged_node_key(r.files.directory, "wireguard")
        id_staged = staged_node_key(r.files.directory, "identity")
    except StateError:
        wg_staged = id_staged = None
    if wg_staged is not None and (
        wireguard_key_status(
            r.roster,
            me,
            current=r.files.wg.public,
            staged=WireGuardKeyPair.from_private(wg_staged).public,
        )
        is KeyStatus.PENDING
    ):
        pending.append("wireguard")
    if id_staged is not None and identity_rotation_pending(
        r.roster, me, staged=IdentityKey.from_seed(id_staged).public
    ):
        pending.append("identity")
    rotated = []
    for old, new in r.view.rotated:
        record = r.roster.get(old)
        rotated.append(
            {
                "name": record.name if record is not None and hasattr(record, "name") else None,
                "old_node_id": node_id(old).hex(),
                "new_node_id": node_id(new).hex(),
            }
        )
    return {"rotated": rotated, "rotation_pending": pending}


def _print_status_json(r: _StatusReport) -> None:
    hub = r.topology.hub
    print(
        json.dumps(
            {
                "mesh": r.files.mesh.hex(),
                "cidr": str(r.roster.network),
                "node": r.files.name,
                "interface": r.interface,
                "device": r.device_note,
                "agent_running": r.agent_running,
                "generation": r.generation,
                "agent": r.agent,
                "hub": hub.name if hub else None,
                "roster_applied": r.applied,
                "members": r.rows,
                "removed": [t.name for t in r.view.removed],
                "admins": [m.name for m in _admins(r.roster)],
                "problems": r.problems(),
                **_rotations(r),
            },
            indent=2,
            sort_keys=True,
        )
    )


def _print_status_text(r: _StatusReport) -> None:
    from ._ids import short_id
    from ._topology import PathKind

    hub = r.topology.hub.name if r.topology.hub else "none"
    print(
        f"mesh {short_id(r.files.mesh)} {r.roster.network} · node {r.files.name} · {r.interface} "
        f"({r.device_note}) · agent {'running' if r.agent_running else 'not running'} · "
        f"roster generation {r.generation} · hub {hub}"
    )
    if not r.applied:
        print(
            "roster not yet applied: these are the members the join ceremony recorded; "
            "'ppn up' applies them"
        )
    header = ("NAME", "ADDRESS", "ROLES", "PATH", "HANDSHAKE", "ENDPOINT")
    table: list[tuple[str, ...]] = [header] + [
        (
            row["name"],
            row["address"],
            ",".join(row["roles"]) or "-",
            row["path"] if row["path"] != PathKind.VIA_HUB.value else f"via {hub}",
            _handshake_cell(row, r.rows, hub),
            "-" if row["path"] == PathKind.VIA_HUB.value else (row["endpoint"] or "-"),
        )
        for row in r.rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for line in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    for p in r.problems():
        print(f"problem: {p['node_id']} {p['kind']}: {p['detail']}")
    removed = r.view.removed
    if removed:
        print("removed: " + ", ".join(sorted(t.name for t in removed)))
    rotations = _rotations(r)
    for moved in rotations["rotated"]:
        print(
            f"rotated: {moved['name']} node {moved['old_node_id'][:8]} -> "
            f"{moved['new_node_id'][:8]}"
        )
    for kind in rotations["rotation_pending"]:
        print(
            f"{kind} key rotation pending: signed, not handed over yet (the agent delivers it, "
            "then switches)"
        )
    if r.applied:
        held = _admins(r.roster)
        print("admins: " + ", ".join(m.name for m in held))
        if len(held) == 1 and len(r.view.members) > 1 and held[0].record.admission.is_genesis:
            print(
                f"note: only {held[0].name} (the genesis node) is an admin; if it is lost, no one "
                "can remove a member: 'ppn admin grant NAME' there names another (RFC-NOTES §7.14)"
            )
    rejected = r.agent.get("rejected") if r.agent_running else None
    if rejected:
        print(f"refused roster records (recent): {len(rejected)}, last: {rejected[-1]}")


def _resolve(args: argparse.Namespace) -> int:
    from ._names import resolve

    files, (roster, _) = _load(args.state)
    found = resolve(roster.view(), args.name)
    if found is not None:
        result = {
            "name": found.name,
            "address": found.address,
            "endpoints": list(found.endpoints),
            "node_id": found.node_id.hex(),
            "routed": found.routed,
            "signed": True,
        }
    else:
        # Not (yet) on the signed roster: the ceremony's preliminary list still binds names.
        wanted = args.name.strip().lower().removesuffix(".ppn")
        # (Only for members the signed roster does not know: not a removed one, nor a lost name.)
        pre = next(
            (m for m in files.preliminary if m.name == wanted and m.identity not in roster), None
        )
        if pre is None:
            raise CommandError(f"no member is called {args.name!r}", EXIT_UNKNOWN_NAME)
        result = {
            "name": pre.name,
            "address": pre.address,
            "endpoints": list(pre.endpoints),
            "node_id": None,
            "routed": True,
            "signed": False,
        }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(result["address"])
    return 0


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if not sys.stdin.isatty():
        print(answer or "(no answer)", file=sys.stderr, flush=True)
    return answer in ("y", "yes")


def _remove(args: argparse.Namespace) -> int:
    import time

    from ._ids import short_id
    from ._removal import RefusalKind, RemovalRefused, plan_removal, sign_removal

    files, (roster, _) = _load(args.state)
    try:
        plan = plan_removal(roster, files.identity, args.name)
    except RemovalRefused as exc:
        status = EXIT_UNKNOWN_NAME if exc.kind is RefusalKind.UNKNOWN else EXIT_REMOVE_REFUSED
        raise CommandError(str(exc), status) from exc
    member = plan.member
    label = f"{member.name} ({member.address}, node {short_id(member.identity)})"
    if not args.yes:
        what = "this node itself" if plan.self_removal else label
        question = (
            f"Remove {what} from mesh {short_id(roster.mesh)} for good? Its identity can never "
            "rejoin."
        )
        if not _confirm(question):
            raise CommandError(f"{member.name} not removed; nothing changed", EXIT_NOT_CONFIRMED)
    record = sign_removal(roster, files.identity, plan, now=int(time.time()))
    outcome, note = _hand_over(args.state, files, member, record)
    if args.json:
        print(
            json.dumps(
                {
                    "removed": member.name,
                    "address": member.address,
                    "node_id": member.node_id.hex(),
                    "self": plan.self_removal,
                    "signed": "admin-act" if plan.by_admin_act else "tombstone",
                    "agent": outcome,
                },
                sort_keys=True,
            )
        )
    else:
        print(f"removed {label}; {note}")
    return 0


def _hand_over(state: Path, files: MeshFiles, member: Member, record: Record) -> tuple[str, str]:
    """Queue a signed record (a removal, an admin act) for the agent; without one running, also
    merge it into the saved roster. Returns the outcome (``queued`` or ``taken``) and a
    sentence on what happens next."""
    from ._io_state import StateDirError, load_roster, queue_records, running_agent_pid, save_roster

    try:
        # The outbox is how signed records reach a running agent (it holds the roster in memory
        # and owns roster.bin); it also covers an agent that starts while this command runs.
        queue_records(state, [record])
        agent_pid = running_agent_pid(state)
        if agent_pid is None:
            saved = load_roster(state, mesh=files.mesh, cidr=files.cidr)
            if saved is not None:
                saved.roster.merge([record])
                save_roster(
                    state, saved.roster, generation=saved.generation + 1, baseline=saved.baseline
                )
            return "queued", "the agent pushes it to every member when 'ppn up' next runs"
        _wait_until_taken(state, files, member, record, agent_pid)
        return "taken", "the agent pushes it to every member"
    except (StateDirError, OSError) as exc:
        raise CommandError(f"cannot record the removal: {exc}", EXIT_BAD_STATE) from exc


def _wait_until_taken(
    state: Path, files: MeshFiles, member: Member, record: Record, agent_pid: int
) -> None:
    """Wait up to REMOVE_WAIT for the running agent to save ``record`` (or one that outranks
    it in its slot)."""
    import time

    from ._io_state import load_roster

    def taken() -> bool:
        saved = load_roster(state, mesh=files.mesh, cidr=files.cidr)
        held = saved.roster.get(record.identity) if saved is not None else None
        return held is not None and held.rank >= record.rank

    deadline = time.monotonic() + REMOVE_WAIT
    waited = False
    while not taken():
        if time.monotonic() > deadline:
            raise CommandError(
                f"the agent (pid {agent_pid}) did not take the record about {member.name} "
                f"within {REMOVE_WAIT:.0f} s; it stays queued in "
                f"{state / 'outbox.bin'}",
                EXIT_AGENT_SLOW,
            )
        if not waited:
            print(
                f"ppn: handing the signed record to the agent (pid {agent_pid}) ...",
                file=sys.stderr,
                flush=True,
            )
            waited = True
        time.sleep(0.1)


# --- ppn admin (RFC-NOTES §7.14) -------------------------------------------------------------


def _admins(roster: Roster) -> list[Member]:
    from ._admin import admins

    return admins(roster)


def _add_admin(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "admin",
        help="delegate admin rights, so the mesh outlives its genesis node",
        description=(
            "Admins may remove members ('ppn remove') and grant or revoke admin rights. The "
            "genesis node is an admin by definition; it names others with 'ppn admin grant', "
            "and they may name more. Every member, admin or not, may admit new members "
            "('ppn invite') and remove itself. An act is signed with this node's identity key "
            "and handed to this node's agent, which pushes it to every member; it counts "
            "while its signer is an admin (RFC-NOTES §7.14)."
        ),
        epilog=EXIT_STATUSES + "\nexamples:\n  ppn admin grant bravo --state /var/lib/ppn --yes\n"
        "  ppn admin list --state /var/lib/ppn --json\n"
        "  ppn admin revoke bravo --state /var/lib/ppn\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="admin_command", metavar="{grant,revoke,list}", required=True)
    for name, text, more in (
        (
            "grant",
            "give a live member admin rights (signed by the genesis node or an admin)",
            "The member may then remove members, the genesis node included, and name or "
            "revoke admins. Name one before the genesis node can be lost: a mesh whose only "
            "admin is gone can still admit members, but no one can remove another.",
        ),
        (
            "revoke",
            "take a member's admin rights away (an admin may also revoke its own)",
            "What it signed while an admin still counts; acts it signs from now on do not. "
            "To take away its membership as well, use 'ppn remove'.",
        ),
    ):
        sub = actions.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. {more} The act is handed to this "
            "node's agent, which pushes it to every member (RFC-NOTES §7.14).",
            epilog=EXIT_STATUSES
            + f"\nexample:\n  ppn admin {name} bravo --state /var/lib/ppn --yes --json\n",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("name", metavar="NAME", help="member name, NAME.ppn, or a node id prefix")
        _state_arg(sub)
        sub.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        sub.add_argument("--json", action="store_true", help="print the outcome as JSON")
        sub.set_defaults(handler=_admin_act, act=name)
    listing = actions.add_parser(
        "list",
        help="the members holding admin rights",
        description="Print the live members holding admin rights, the genesis node first.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _state_arg(listing)
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(handler=_admin_list)


def _admin_list(args: argparse.Namespace) -> int:
    from ._ids import short_id

    _, (roster, _) = _load(args.state)
    found = _admins(roster)
    if args.json:
        rows = [
            {
                "name": m.name,
                "address": m.address,
                "node_id": m.node_id.hex(),
                "genesis": m.record.admission.is_genesis,
            }
            for m in found
        ]
        print(json.dumps({"admins": rows}, indent=2, sort_keys=True))
        return 0
    for m in found:
        genesis = "  (genesis)" if m.record.admission.is_genesis else ""
        print(f"{m.name}  {m.address}  {short_id(m.identity)}{genesis}")
    return 0


def _admin_act(args: argparse.Namespace) -> int:
    import time

    from ._admin import AdminRefusal, AdminRefused, plan_admin_act, sign_admin_act
    from ._ids import short_id
    from ._records import ActKind

    act = ActKind.GRANT_ADMIN if args.act == "grant" else ActKind.REVOKE_ADMIN
    files, (roster, _) = _load(args.state)
    try:
        plan = plan_admin_act(roster, files.identity, args.name, act)
    except AdminRefused as exc:
        if exc.kind is AdminRefusal.UNCHANGED:
            if args.json:
                print(json.dumps({"admin": args.name, "act": act.value, "agent": "unchanged"}))
            else:
                print(f"{exc}; nothing signed")
            return 0
        status = EXIT_UNKNOWN_NAME if exc.kind is AdminRefusal.UNKNOWN else EXIT_REMOVE_REFUSED
        raise CommandError(str(exc), status) from exc
    member = plan.member
    label = f"{member.name} ({member.address}, node {short_id(member.identity)})"
    if not args.yes:
        question = (
            f"Give {label} admin rights (it may then remove any member and name admins)?"
            if act is ActKind.GRANT_ADMIN
            else f"Revoke the admin rights of {label}?"
        )
        if not _confirm(question):
            raise CommandError("nothing signed; nothing changed", EXIT_NOT_CONFIRMED)
    record = sign_admin_act(roster, files.identity, plan, now=int(time.time()))
    outcome, note = _hand_over(args.state, files, member, record)
    if args.json:
        print(
            json.dumps(
                {
                    "admin": member.name,
                    "node_id": member.node_id.hex(),
                    "act": act.value,
                    "agent": outcome,
                },
                sort_keys=True,
            )
        )
    else:
        done = (
            "granted admin rights to"
            if act is ActKind.GRANT_ADMIN
            else "revoked the admin rights of"
        )
        print(f"{done} {label}; {note}")
    return 0
