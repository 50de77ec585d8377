"""``ppn fleet …``, ``ppn vmhost …`` and ``ppn vm …``: the fleet's commands (RFC-NOTES §8.8).

Exit statuses (fleet range 60–69):
60 the fleet controller's operator socket cannot be reached · 61 placement refused ·
62 the operator did not confirm · 63 dispatch to the vm-host failed · 64 migration refused
(excluded by design) · 65 the provisioner reported failure (``--wait``) · 66 bad configuration
(identity, directory, addresses, the VM record file) · 67 timed out waiting for the provisioner
(``--wait``) · 68 no such VM, or more than one of that name (``ppn vm stop|start|delete``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli._main import CommandError, add_metrics_flag
from ..ports import FLEET_METRICS_PORT, FLEET_PORT, SPAWN_PORT, VMHOST_METRICS_PORT

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_UNREACHABLE = 60
EXIT_REFUSED = 61
EXIT_NOT_CONFIRMED = 62
EXIT_DISPATCH = 63
EXIT_MIGRATION = 64
EXIT_PROVISIONER_FAILED = 65
EXIT_CONFIG = 66
EXIT_WAIT_TIMEOUT = 67
EXIT_NO_SUCH_VM = 68

DEFAULT_CONTROL = "/run/ppn/fleet.sock"

_STATUSES = """exit statuses:
  0 success · 60 controller unreachable · 61 placement refused · 62 not confirmed ·
  63 dispatch failed · 64 migration refused · 65 provisioner failed · 66 bad configuration ·
  67 timed out waiting for the provisioner · 68 no such VM (or its name is on several nodes) ·
  130 interrupted"""

_DIRECTORY_HELP = (
    'JSON member directory: {"members": [{"name", "identity" (base64 Ed25519 public key), '
    '"mesh_address", "roles" (the controller has "cloud")}]}'
)


def _control_path(args: argparse.Namespace) -> str:
    return str(args.control or os.environ.get("PPN_FLEET_CONTROL") or DEFAULT_CONTROL)


def _add_control(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        metavar="PATH",
        help=f"the controller's operator socket (default $PPN_FLEET_CONTROL or {DEFAULT_CONTROL})",
    )


# --- talking to the controller ------------------------------------------------------------------


def _ask(path: str, message: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    import socket

    from .. import wire
    from ._operator import MAX_CONTROL_FRAME

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            payload = wire.pack_canonical(message)
            sock.sendall(wire.encode_frame(payload, max_size=MAX_CONTROL_FRAME))
            decoder = wire.FrameDecoder(max_size=MAX_CONTROL_FRAME)
            while (frame := decoder.next_frame()) is None:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the controller closed the connection")
                decoder.feed(data)
        reply = wire.unpack_canonical(frame)
    except (OSError, wire.WireError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(
            f"cannot reach the fleet controller at {path}: {reason} "
            "(is 'ppn fleet serve' running on this node?)",
            EXIT_UNREACHABLE,
        ) from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise CommandError("the fleet controller sent a malformed reply", EXIT_UNREACHABLE)
    return reply


# --- ppn fleet status ----------------------------------------------------------------------------


def _age(ms: int) -> str:
    return f"{ms / 1000:.1f}s"


def _print_status(doc: dict[str, Any]) -> None:
    nodes = doc.get("nodes", [])
    timeout_s = doc.get("eviction_timeout_ms", 0) / 1000
    print(
        f"fleet controller {doc.get('controller')}: {len(nodes)} live node(s), "
        f"eviction after {timeout_s:g} s without a heartbeat"
    )
    if nodes:
        header = (
            "NODE",
            "ADDRESS",
            "HEARTBEAT",
            "RAM AVAIL/TOTAL",
            "CPUS",
            "LOAD",
            "KVM",
            "RESERVED",
            "VMS",
        )
        rows = [
            (
                n["name"],
                n["mesh_address"],
                _age(n["heartbeat_age_ms"]) + " ago",
                f"{n['ram_available_mb']}/{n['ram_total_mb']} MB",
                str(n["cpu_cores"]),
                f"{n['load_milli'] / 1000:.2f}",
                "yes" if n["kvm"] else "no",
                "yes" if n["reserved"] else "no",
                str(len(n["vms"])),
            )
            for n in nodes
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for n in nodes:
            for vm in n["vms"]:
                detail = f": {vm['detail']}" if vm["detail"] else ""
                print(
                    f"  vm {vm['name']} ({vm['type']}, {vm['ram_mb']} MB, {vm['vcpus']} vCPU) "
                    f"on {n['name']}: {vm['state']}{detail}"
                )
    for e in doc.get("evicted", []):
        print(
            f"evicted: {e['name']} (silent {_age(e['silent_for_ms'])}, "
            f"evicted {_age(e['evicted_ago_ms'])} ago)"
        )


def _cmd_status(args: argparse.Namespace) -> int:
    doc = _ask(_control_path(args), {"op": "status"})
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print_status(doc)
    return 0


# --- ppn vm create / migrate ------------------------------------------------------------------------


def _confirm(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


def _poll(path: str, seconds: float, waiting_for: str, timeout_message: str, outcome: Any) -> Any:
    """Ask for the VM list every 0.5 s until ``outcome(list reply)`` returns a (done, value)
    pair that is done; exit 67 with ``timeout_message`` after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    print(f"waiting up to {seconds:g} s for {waiting_for}…", file=sys.stderr)
    while True:
        done, value = outcome(_ask(path, {"op": "list"}))
        if done:
            return value
        if time.monotonic() >= deadline:
            raise CommandError(timeout_message, EXIT_WAIT_TIMEOUT)
        time.sleep(0.5)


def _wait_for_vm(path: str, node: str, request_id: str, seconds: float) -> dict[str, Any]:
    def outcome(doc: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        for vm in doc.get("vms", []):
            settled = vm["state"] not in ("provisioning", "dispatched")
            if vm["node"] == node and vm["request_id"] == request_id and settled:
                return True, dict(vm)
        return False, None

    return dict(
        _poll(
            path,
            seconds,
            f"{node} to report the provisioner's result",
            f"no result from {node}'s provisioner within {seconds:g} s (see 'ppn vm list' later)",
            outcome,
        )
    )


def _report(
    args: argparse.Namespace, outcome: dict[str, Any], headline: str, vm: str, node: str
) -> None:
    """A dispatch's outcome: JSON, or the headline and, after --wait, the VM's state."""
    if args.json:
        print(json.dumps(outcome, indent=2, sort_keys=True))
        return
    print(headline)
    if args.wait:
        detail = f": {outcome['detail']}" if outcome["detail"] else ""
        print(f"{vm} on {node}: {outcome['state']}{detail}")


def _cmd_vm_create(args: argparse.Namespace) -> int:
    from ._vm import VM_NAME, VM_TYPE, normalize_vm_type

    vm_type = normalize_vm_type(args.type)
    if not VM_TYPE.match(vm_type):
        raise CommandError("a VM type is 1-32 lower-case letters, digits and '-'", 2)
    if args.name and not VM_NAME.match(args.name):
        raise CommandError("a VM name is 1-63 lower-case letters, digits and '-'", 2)
    if args.ram < 1 or args.vcpus < 1:
        raise CommandError("--ram and --vcpus must be positive", 2)
    path = _control_path(args)
    message: dict[str, Any] = {
        "op": "place",
        "type": vm_type,
        "ram_mb": args.ram,
        "vcpus": args.vcpus,
        "name": args.name or "",
        "node": args.node or "",
        "prefer_kvm": args.prefer_kvm,
    }
    advice = _ask(path, message)
    if not advice["ok"]:
        if args.json:
            print(json.dumps(advice, indent=2, sort_keys=True))
        raise CommandError(f"placement refused: {advice.get('message')}", EXIT_REFUSED)
    node = str(advice["node"])
    summary = (
        f"advisory placement: {vm_type} VM"
        f"{' ' + args.name if args.name else ''} ({args.ram} MB, {args.vcpus} vCPU) "
        f"on node {node} — {advice.get('reason')}"
    )
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if not args.yes and not _confirm(f"create it on {node}? [y/N] "):
        raise CommandError("not confirmed; nothing was created", EXIT_NOT_CONFIRMED)
    result = _ask(path, {**message, "op": "create", "node": node})
    if not result["ok"]:
        status = EXIT_REFUSED if result.get("error") == "refused" else EXIT_DISPATCH
        raise CommandError(str(result.get("message")), status)
    vm_name = result["vm"]["name"]
    outcome: dict[str, Any] = {**result}
    if args.wait:
        vm = _wait_for_vm(path, node, str(result["request_id"]), args.wait)
        outcome["state"] = vm["state"]
        outcome["detail"] = vm["detail"]
    headline = f"dispatched {vm_name} to {node} (request {result['request_id'][:8]})"
    _report(args, outcome, headline, vm_name, node)
    if args.wait and outcome["state"] == "failed":
        raise CommandError(
            f"the provisioner on {node} failed{': ' + outcome['detail'] if outcome['detail'] else ''}",
            EXIT_PROVISIONER_FAILED,
        )
    return 0


def _cmd_vm_migrate(args: argparse.Namespace) -> int:
    from ._placement import MIGRATION_REFUSAL

    raise CommandError(f"cannot move {args.vm}: {MIGRATION_REFUSAL}", EXIT_MIGRATION)


# --- ppn vm list / stop / start / delete -----------------------------------------------------------


def _print_vm_list(vms: list[dict[str, Any]]) -> None:
    if not vms:
        print("no VMs on the live nodes")
        return
    header = ("NAME", "NODE", "TYPE", "RAM", "VCPUS", "STATE", "DETAIL")
    rows = [
        (
            v["name"],
            v["node"],
            v["type"],
            f"{v['ram_mb']} MB",
            str(v["vcpus"]),
            v["state"],
            v["detail"],
        )
        for v in vms
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cmd_vm_list(args: argparse.Namespace) -> int:
    doc = _ask(_control_path(args), {"op": "list"})
    vms = [v for v in doc.get("vms", []) if not args.node or v["node"] == args.node]
    if args.json:
        print(json.dumps({"vms": vms}, indent=2, sort_keys=True))
    else:
        _print_vm_list(vms)
    return 0


_TARGET_STATE = {"stop": "stopped", "start": "running"}
_BUSY_STATES = frozenset({"provisioning", "stopping", "starting", "deleting", "dispatched"})


def _wait_for_action(
    path: str, action: str, node: str, name: str, action_id: str, seconds: float
) -> dict[str, Any] | None:
    """Poll the VM list until the vm-host reports the action's outcome: the VM's entry once it
    settles after this action, or None when a delete removed it."""

    def outcome(doc: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
        mine = [v for v in doc.get("vms", []) if v["node"] == node and v["name"] == name]
        if action == "delete" and not mine:
            return True, None
        for vm in mine:
            if vm["action_id"] == action_id and vm["state"] not in _BUSY_STATES:
                return True, dict(vm)
        return False, None

    result: dict[str, Any] | None = _poll(
        path,
        seconds,
        f"{node} to report the {action} of {name}",
        f"no result of the {action} of {name} from {node} within {seconds:g} s "
        "(see 'ppn vm list' later)",
        outcome,
    )
    return result


def _find_for_action(path: str, name: str, node: str | None) -> dict[str, Any]:
    """The one VM called ``name`` (on ``node``), as the controller lists it."""
    doc = _ask(path, {"op": "list"})
    found = [v for v in doc.get("vms", []) if v["name"] == name and (not node or v["node"] == node)]
    where = f" on node {node}" if node else " on the live nodes"
    if not found:
        raise CommandError(f"no VM named {name}{where} ('ppn vm list' shows them)", EXIT_NO_SUCH_VM)
    if len(found) > 1:
        nodes = ", ".join(v["node"] for v in found)
        raise CommandError(
            f"VMs named {name} are on nodes {nodes}: name one with --node", EXIT_NO_SUCH_VM
        )
    return dict(found[0])


def _confirm_delete(args: argparse.Namespace, vm: dict[str, Any]) -> str:
    """Ask before a delete; return the typed confirmation the controller checks (a Totebox's)."""
    where = f"{vm['name']} ({vm['type']}, {vm['ram_mb']} MB) on {vm['node']}"
    if not vm["totebox"]:
        if not args.yes and not _confirm(f"delete VM {where}? [y/N] "):
            raise CommandError("not confirmed; nothing was deleted", EXIT_NOT_CONFIRMED)
        return ""
    # A VM-Totebox: --yes and the name typed, or given with --confirm. Its vault data stays.
    if not args.yes:
        raise CommandError(
            f"{vm['name']} is a VM-Totebox: it is deleted only with --yes and its name typed "
            "(at the prompt, or --confirm NAME); nothing was deleted",
            EXIT_NOT_CONFIRMED,
        )
    typed = args.confirm
    if typed is None:
        print(
            f"{where} is a VM-Totebox: the VM is deleted, its vault data is kept.",
            file=sys.stderr,
        )
        print("type the VM's name to delete it: ", end="", file=sys.stderr, flush=True)
        try:
            typed = input().strip()
        except EOFError:
            typed = ""
    if typed != vm["name"]:
        raise CommandError(
            f"the typed name does not match {vm['name']}; nothing was deleted", EXIT_NOT_CONFIRMED
        )
    return str(typed)


def _cmd_vm_action(args: argparse.Namespace) -> int:
    from ._vm import VM_NAME

    action: str = args.vm_command
    if not VM_NAME.match(args.vm):
        raise CommandError("a VM name is 1-63 lower-case letters, digits and '-'", 2)
    path = _control_path(args)
    confirm = ""
    node = args.node or ""
    if action == "delete":
        vm = _find_for_action(path, args.vm, args.node)
        confirm = _confirm_delete(args, vm)
        node = vm["node"]  # what the operator confirmed, even if a namesake appears meanwhile
    request = {"op": action, "name": args.vm, "node": node, "confirm": confirm}
    result = _ask(path, request)
    if not result["ok"]:
        status = {
            "vm": EXIT_NO_SUCH_VM,
            "confirm": EXIT_NOT_CONFIRMED,
            "refused": EXIT_REFUSED,
        }.get(str(result.get("error")), EXIT_DISPATCH)
        raise CommandError(str(result.get("message")), status)
    outcome: dict[str, Any] = {**result}
    vm_node = str(result["node"])
    if args.wait:
        settled = _wait_for_action(
            path, action, vm_node, args.vm, str(result["action_id"]), args.wait
        )
        outcome["state"] = "deleted" if settled is None else settled["state"]
        outcome["detail"] = "" if settled is None else settled["detail"]
    headline = f"{action} of {args.vm} dispatched to {vm_node} (request {result['action_id'][:8]})"
    _report(args, outcome, headline, args.vm, vm_node)
    if not args.json and action == "delete" and result.get("totebox"):
        print(f"{args.vm} was a VM-Totebox: its vault data is kept on {vm_node}")
    expected = _TARGET_STATE.get(action, "deleted")
    if args.wait and outcome["state"] != expected:
        raise CommandError(
            f"the {action} of {args.vm} on {vm_node} failed"
            f"{': ' + outcome['detail'] if outcome['detail'] else ''}",
            EXIT_PROVISIONER_FAILED,
        )
    return 0


# --- the services ---------------------------------------------------------------------------------


def _load_identity(path: str) -> Any:
    from .._keys import IdentityKey, KeyFormatError, decode_key

    try:
        with open(path, encoding="ascii") as f:
            return IdentityKey.from_seed(decode_key(f.read()))
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read the identity key {path}: {exc}", EXIT_CONFIG) from exc
    except KeyFormatError as exc:
        raise CommandError(f"{path} is not an identity key file: {exc}", EXIT_CONFIG) from exc


def _load_directory(path: str) -> Any:
    from ._directory import DirectoryError, StaticDirectory

    try:
        with open(path, encoding="utf-8") as f:
            return StaticDirectory.from_document(json.load(f))
    except (OSError, ValueError) as exc:
        message = str(exc) if isinstance(exc, DirectoryError) else f"cannot read {path}: {exc}"
        raise CommandError(f"member directory: {message}", EXIT_CONFIG) from exc


def _membership(args: argparse.Namespace) -> tuple[Any, Any]:
    """(identity key, member directory) from ``--state`` or from ``--identity``/``--directory``."""
    if args.state is not None:
        if args.identity or args.directory:
            raise CommandError("give either --state or --identity with --directory, not both", 2)
        from ._io_state import StateDirError, load_fleet_membership

        try:
            membership = load_fleet_membership(args.state)
        except StateDirError as exc:
            raise CommandError(str(exc), EXIT_CONFIG) from exc
        return membership.identity, membership.directory
    if not (args.identity and args.directory):
        raise CommandError("give --state DIR (a mesh node) or both --identity and --directory", 2)
    return _load_identity(args.identity), _load_directory(args.directory)


def _add_membership(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="the mesh node's state directory ('ppn up --state DIR'): identity and the live "
        "signed roster come from there",
    )
    parser.add_argument(
        "--identity", metavar="FILE", help="without a mesh: identity key file ('ppn fleet keygen')"
    )
    parser.add_argument("--directory", metavar="FILE", help="without a mesh: " + _DIRECTORY_HELP)


def _setup_logging(verbose: bool) -> None:
    # ppn configured the log lines (ppn/cli/_logging.py, --log-format/--log-level); -v is this
    # command's older spelling of --log-level debug.
    if verbose:
        import logging

        logging.getLogger().setLevel(logging.DEBUG)


def _serve(run: Any, role: str, metrics: Any = None, address: tuple[str, int] | None = None) -> int:
    """Run a service until SIGTERM (exit 0, RFC-NOTES §1.4) or Ctrl-C (130); with ``metrics``
    (``ppn.cli._metrics.Metrics``), its endpoint on ``address`` first."""
    import trio

    from ..cli._main import trio_run_until_sigterm

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if metrics is not None:
                await nursery.start(metrics.serve, address)
            await nursery.start(run)
            from .._io_sdnotify import notify_ready  # systemd Type=notify (issue 17)

            notify_ready()

    try:
        trio_run_until_sigterm(main, role)
    except OSError as exc:
        raise CommandError(f"cannot serve: {exc.strerror or exc}", EXIT_CONFIG) from exc
    return 0


def _replay_path(args: argparse.Namespace) -> str:
    """Where the controller keeps its replay state (RFC-NOTES §8.3.1): --replay-state, else
    the state directory, else next to the identity file."""
    if args.replay_state:
        return str(args.replay_state)
    from ._io_state import REPLAY_FILE

    base = args.state if args.state is not None else os.path.dirname(args.identity or "")
    return os.path.join(base or ".", REPLAY_FILE)


def _vm_state_path(args: argparse.Namespace) -> str:
    """Where the vm-host keeps its VM records (RFC-NOTES §8.7.1): --vm-state, else
    fleet-vms.bin in the state directory, else FILE.vms beside the identity file FILE (so two
    vm-hosts whose keys share a directory do not share a record file)."""
    if args.vm_state:
        return str(args.vm_state)
    from ._io_host import VM_FILE

    if args.state is not None:
        return os.path.join(args.state, VM_FILE)
    return f"{args.identity}.vms"


def _cmd_fleet_serve(args: argparse.Namespace) -> int:
    from .._errors import PPNError
    from ._trio_controller import FleetController, FleetControllerConfig

    control = _control_path(args)
    if os.path.dirname(control):
        os.makedirs(os.path.dirname(control), mode=0o700, exist_ok=True)
    identity, directory = _membership(args)
    config = FleetControllerConfig(
        identity=identity,
        directory=directory,
        listen_address=args.listen,
        port=args.port,
        control_path=control,
        spawn_port=args.spawn_port,
        eviction_timeout=args.eviction_timeout,
        vcpu_overcommit=args.vcpu_overcommit,
        replay_path=_replay_path(args),
    )
    try:
        controller = FleetController(config)
    except PPNError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from exc
    _setup_logging(args.verbose)
    metrics = None
    if args.metrics:
        from ..cli._metrics import FleetCollector, Metrics

        metrics = Metrics(EXIT_CONFIG)
        FleetCollector(controller, metrics.registry)
        metrics.listener("heartbeat", controller.guard)
    return _serve(controller.run, "fleet controller", metrics, args.metrics)


def _cmd_vmhost_serve(args: argparse.Namespace) -> int:
    import shlex

    from .._errors import PPNError
    from ._trio_host import VmHostConfig, VmHostService

    identity, directory = _membership(args)
    config = VmHostConfig(
        identity=identity,
        directory=directory,
        controller_address=args.controller,
        controller_port=args.controller_port,
        listen_address=args.listen,
        spawn_port=args.port,
        interval=args.interval,
        reserved=args.reserved,
        provisioner=shlex.split(args.provisioner) if args.provisioner else (),
        provisioner_timeout=args.provisioner_timeout,
        max_ram_mb=args.max_ram_mb,
        vm_state_path=_vm_state_path(args),
    )
    try:
        service = VmHostService(config)
    except PPNError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from exc
    _setup_logging(args.verbose)
    metrics = None
    if args.metrics:
        from ..cli._metrics import Metrics, VmHostCollector

        metrics = Metrics(EXIT_CONFIG)
        VmHostCollector(service, metrics.registry)
        metrics.listener("spawn", service.guard)
    return _serve(service.run, "vm-host", metrics, args.metrics)


def _cmd_fleet_keygen(args: argparse.Namespace) -> int:
    from .._keys import IdentityKey, encode_key
    from ._directory import derive_node_id

    key = IdentityKey.generate()
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot create {args.file}: {exc.strerror}", EXIT_CONFIG) from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(encode_key(key.seed) + "\n")
    if args.json:
        print(json.dumps({"identity": key.public_b64, "node_id": derive_node_id(key.public)}))
    else:
        print(f"identity {key.public_b64}  (node id {derive_node_id(key.public)})")
    return 0


# --- registration ---------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wrap one-paragraph descriptions; keep multi-line epilogs (examples, statuses) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def register(subparsers: Subparsers) -> None:
    """Add ``fleet``, ``vmhost`` and ``vm`` to ``ppn``."""
    _register_fleet(subparsers)
    _register_vmhost(subparsers)
    _register_vm(subparsers)


def _register_fleet(subparsers: Subparsers) -> None:
    fleet = subparsers.add_parser(
        "fleet",
        help="the VM resource pool: status, and the controller service",
        description="The mesh's nodes form one VM resource pool. Each runs a vm-host that "
        "heartbeats every 10 s to the fleet controller on the cloud node; a node silent for "
        "30 s is evicted.",
        epilog=_STATUSES,
        formatter_class=_Formatter,
    )
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    _add_fleet_status(fleet_sub)
    _add_fleet_serve(fleet_sub)
    _add_fleet_keygen(fleet_sub)


def _add_fleet_status(fleet_sub: Subparsers) -> None:
    status = fleet_sub.add_parser(
        "status",
        help="live nodes, heartbeat ages, RAM/CPU, VMs and evicted nodes",
        description="Ask the fleet controller on this node for the live pool: each node's last "
        "heartbeat age (by the controller's clock), RAM, CPUs, load, KVM, reservation and VMs, "
        "and the nodes recently evicted.",
        epilog=_STATUSES,
        formatter_class=_Formatter,
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    _add_control(status)
    status.set_defaults(handler=_cmd_status)


def _add_fleet_serve(fleet_sub: Subparsers) -> None:
    serve = fleet_sub.add_parser(
        "serve",
        help="run the fleet controller (service-vm-fleet) on the cloud node",
        description=f"Listen for heartbeats (TCP {FLEET_PORT} on this node's mesh address), keep the live "
        "node table, evict nodes silent for 30 s, and serve the operator socket used by "
        "'ppn fleet status' and 'ppn vm create'. Stops on SIGTERM or Ctrl-C.",
        epilog="examples:\n  ppn fleet serve --state /var/lib/ppn\n"
        "  ppn fleet serve --identity cloud.key --directory fleet.json --control /tmp/fleet.sock"
        "\n\n" + _STATUSES,
        formatter_class=_Formatter,
    )
    _add_membership(serve)
    serve.add_argument(
        "--listen", metavar="ADDR", help="address to listen on (default: this node's mesh address)"
    )
    serve.add_argument(
        "--port", type=int, default=FLEET_PORT, help=f"heartbeat port (default {FLEET_PORT})"
    )
    serve.add_argument(
        "--spawn-port",
        type=int,
        default=SPAWN_PORT,
        help=f"the vm-hosts' spawn port (default {SPAWN_PORT})",
    )
    serve.add_argument(
        "--eviction-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="evict a node this long after its last heartbeat (default 30)",
    )
    serve.add_argument(
        "--vcpu-overcommit",
        type=float,
        default=4.0,
        metavar="RATIO",
        help="vCPUs placement lets a node carry per CPU core, counting every VM on it but "
        "failed ones (default 4)",
    )
    serve.add_argument(
        "--replay-state",
        metavar="FILE",
        help="where the heartbeat replay state survives restarts (default: fleet-replay.bin "
        "in --state DIR, else next to --identity)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every heartbeat")
    add_metrics_flag(serve, FLEET_METRICS_PORT)
    _add_control(serve)
    serve.set_defaults(handler=_cmd_fleet_serve, daemon=True)


def _add_fleet_keygen(fleet_sub: Subparsers) -> None:
    keygen = fleet_sub.add_parser(
        "keygen",
        help="create an identity key file (until the mesh roster provides one)",
        description="Write a new Ed25519 identity seed (base64, mode 0600) to FILE and print its "
        "public key and node id for the member directory.",
    )
    keygen.add_argument("file", metavar="FILE")
    keygen.add_argument("--json", action="store_true", help="print the public key as JSON")
    keygen.set_defaults(handler=_cmd_fleet_keygen)


def _register_vmhost(subparsers: Subparsers) -> None:
    vmhost = subparsers.add_parser(
        "vmhost",
        help="the per-node VM host service (heartbeats and spawn requests)",
        description="Every infrastructure node runs a vm-host: it heartbeats to the fleet "
        "controller and launches VMs through its provisioner command when the controller asks.",
        epilog=_STATUSES,
        formatter_class=_Formatter,
    )
    vmhost_sub = vmhost.add_subparsers(dest="vmhost_command", metavar="COMMAND", required=True)
    _add_vmhost_serve(vmhost_sub)


def _add_vmhost_serve(vmhost_sub: Subparsers) -> None:
    hs = vmhost_sub.add_parser(
        "serve",
        help="run service-vm-host on this node",
        description=f"Heartbeat every 10 s to the fleet controller (TCP {FLEET_PORT}) and accept "
        f"create, stop, start and delete requests signed by the controller (TCP {SPAWN_PORT} on "
        "this node's mesh address). Each runs the provisioner command with the VM spec and the "
        "action as JSON on stdin and in PPN_VM_ACTION (create, stop, start, delete), "
        "PPN_VM_TYPE, PPN_VM_NAME, PPN_VM_RAM_MB, PPN_VM_VCPUS, PPN_VM_REQUEST_ID, and "
        "PPN_VM_KEEP_DATA=1 for a VM-Totebox (whose vault data a delete must keep); exit 0 "
        "means done. The result is reported in the next heartbeat. The VM records are saved "
        "(--vm-state) so a restart forgets none. Stops on SIGTERM or Ctrl-C.",
        epilog="examples:\n  ppn vmhost serve --state /var/lib/ppn --provisioner '/usr/local/sbin/launch-vm'\n"
        "  ppn vmhost serve --identity id.key --directory fleet.json --reserved \\\n"
        "      --provisioner '/usr/local/sbin/launch-vm --qemu'\n\n" + _STATUSES,
        formatter_class=_Formatter,
    )
    _add_membership(hs)
    hs.add_argument(
        "--listen", metavar="ADDR", help="spawn listen address (default: this node's mesh address)"
    )
    hs.add_argument(
        "--port", type=int, default=SPAWN_PORT, help=f"spawn port (default {SPAWN_PORT})"
    )
    hs.add_argument(
        "--controller", metavar="ADDR", help="controller address (default: its mesh address)"
    )
    hs.add_argument(
        "--controller-port",
        type=int,
        default=FLEET_PORT,
        help=f"controller heartbeat port (default {FLEET_PORT})",
    )
    hs.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="heartbeat interval (default 10)",
    )
    hs.add_argument(
        "--reserved",
        action="store_true",
        help="mark this node reserved: placed on only when nothing else fits",
    )
    hs.add_argument(
        "--provisioner", metavar="CMD", help="command that launches a VM (shell-style quoting)"
    )
    hs.add_argument(
        "--provisioner-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up on the provisioner after this long (default 600)",
    )
    hs.add_argument(
        "--max-ram-mb",
        type=int,
        metavar="MB",
        help="advertise at most this much RAM to the pool; VMs launched here count against it",
    )
    hs.add_argument(
        "--vm-state",
        metavar="FILE",
        help="where this node's VM records survive restarts (default: fleet-vms.bin in "
        "--state DIR, else FILE.vms for --identity FILE)",
    )
    hs.add_argument("-v", "--verbose", action="store_true", help="more logging")
    add_metrics_flag(hs, VMHOST_METRICS_PORT)
    hs.set_defaults(handler=_cmd_vmhost_serve, daemon=True)


def _register_vm(subparsers: Subparsers) -> None:
    vm = subparsers.add_parser(
        "vm",
        help="create, list, stop, start and delete VMs in the pool",
        description="VMs are created by an operator: the controller advises a node, you confirm, "
        "the node's vm-host launches it. They are then listed, stopped, started and deleted "
        "where they are: VMs never move between nodes.",
        epilog=_STATUSES,
        formatter_class=_Formatter,
    )
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="COMMAND", required=True)
    _add_vm_create(vm_sub)
    _add_vm_list(vm_sub)
    _add_vm_actions(vm_sub)
    _add_vm_migrate(vm_sub)


def _add_vm_create(vm_sub: Subparsers) -> None:
    create = vm_sub.add_parser(
        "create",
        help="place a VM, confirm, and dispatch it to the chosen node",
        description="Show where the controller advises to put the VM (among live, non-reserved "
        "nodes with at least RAM + 512 MB available, the one with the most; KVM nodes first with "
        "--prefer-kvm; reserved nodes only when nothing else fits), ask for confirmation, then "
        "dispatch it. A VM-Totebox must name its node with --node: its WORM archive data does not "
        "move over the network.",
        epilog="examples:\n  ppn vm create generic --ram 2048 --vcpus 2\n"
        "  ppn vm create totebox --ram 4096 --node laptop-b --yes --wait 60\n\n" + _STATUSES,
        formatter_class=_Formatter,
    )
    create.add_argument(
        "type", metavar="TYPE", help="VM type, e.g. generic, orchestration, totebox"
    )
    create.add_argument("--ram", type=int, required=True, metavar="MB", help="memory in MB")
    create.add_argument(
        "--vcpus", type=int, default=1, metavar="N", help="virtual CPUs (default 1)"
    )
    create.add_argument(
        "--node", metavar="NAME", help="put it on this node (required for a VM-Totebox)"
    )
    create.add_argument("--name", metavar="NAME", help="VM name (default: TYPE-<request id>)")
    create.add_argument("--prefer-kvm", action="store_true", help="prefer nodes with /dev/kvm")
    create.add_argument("--yes", action="store_true", help="confirm without asking (for scripts)")
    create.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait for the provisioner's result"
    )
    create.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _add_control(create)
    create.set_defaults(handler=_cmd_vm_create)


def _add_vm_migrate(vm_sub: Subparsers) -> None:
    migrate = vm_sub.add_parser(
        "migrate",
        help="refused: live migration is excluded by design",
        description="There is no migrate operation. A VM stays on the node it was created on; "
        "create a new VM elsewhere instead. This command exists to say so (exit status 64).",
        epilog=_STATUSES,
        formatter_class=_Formatter,
    )
    migrate.add_argument("vm", metavar="VM")
    migrate.add_argument("--to", metavar="NODE", help="ignored: nothing is moved")
    migrate.set_defaults(handler=_cmd_vm_migrate)


def _add_vm_list(vm_sub: Subparsers) -> None:
    listing = vm_sub.add_parser(
        "list",
        help="every VM on the live nodes and its state",
        description="List the VMs of the live nodes as their last heartbeats report them "
        "(provisioning, running, failed, stopping, stopped, starting, deleting), and VMs "
        "dispatched that no heartbeat lists yet (dispatched). A vm-host keeps its records "
        "across restarts, so its VMs are listed again after its next heartbeat.",
        epilog="examples:\n  ppn vm list\n  ppn vm list --node laptop-b --json\n\n" + _STATUSES,
        formatter_class=_Formatter,
    )
    listing.add_argument("--node", metavar="NAME", help="only the VMs on this node")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    _add_control(listing)
    listing.set_defaults(handler=_cmd_vm_list)


_ACTION_HELP = {
    "stop": (
        "stop a running VM (it keeps its RAM and vCPUs reserved on its node)",
        "Ask the VM's vm-host to stop it: the provisioner runs with PPN_VM_ACTION=stop. A "
        "stopped VM keeps its share of its node, so it can be started again.",
    ),
    "start": (
        "start a stopped VM on its node",
        "Ask the VM's vm-host to start it again: the provisioner runs with PPN_VM_ACTION=start.",
    ),
    "delete": (
        "delete a VM (asks first; a VM-Totebox needs --yes and its name typed)",
        "Ask the VM's vm-host to delete it: the provisioner runs with PPN_VM_ACTION=delete and "
        "the record goes once it exits 0. You are asked to confirm (--yes for scripts). A "
        "VM-Totebox is deleted only with --yes and its name typed at the prompt or given with "
        "--confirm NAME; its vault data is the entity's archive and is never deleted with the "
        "VM (the provisioner gets PPN_VM_KEEP_DATA=1).",
    ),
}


def _add_vm_actions(vm_sub: Subparsers) -> None:
    for action, (short, description) in _ACTION_HELP.items():
        examples = f"examples:\n  ppn vm {action} web-1 --wait 60\n"
        if action == "delete":
            examples += "  ppn vm delete web-1 --yes\n  ppn vm delete acme-archive --yes --confirm acme-archive\n"
        parser = vm_sub.add_parser(
            action,
            help=short,
            description=description + " The controller finds the VM on the live nodes; "
            "--node picks one when several nodes have a VM of that name.",
            epilog=examples + "\n" + _STATUSES,
            formatter_class=_Formatter,
        )
        parser.add_argument("vm", metavar="NAME", help="the VM's name ('ppn vm list')")
        parser.add_argument("--node", metavar="NAME", help="the node the VM is on")
        if action == "delete":
            parser.add_argument(
                "--yes", action="store_true", help="confirm without asking (for scripts)"
            )
            parser.add_argument(
                "--confirm",
                metavar="NAME",
                help="a VM-Totebox's name, typed: with --yes, deletes it without a prompt",
            )
        parser.add_argument(
            "--wait", type=float, metavar="SECONDS", help="wait for the provisioner's result"
        )
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
        _add_control(parser)
        parser.set_defaults(handler=_cmd_vm_action)
