"""``ppn service``, ``ppn config`` and ``ppn doctor``: running a node as an operator would (issue 17).

Exit statuses (RFC-NOTES §1.4, the deploy range 70–79): 70 ``ppn doctor`` found a problem that
blocks the node, 71 systemd is not running or refused (the message says what was already done),
72 the unit is not installed, 73 a configuration file or variable is invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppn.cli import CommandError

EXIT_DOCTOR = 70
EXIT_SYSTEMD = 71
EXIT_NOT_INSTALLED = 72
EXIT_CONFIG = 73

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_STATUSES = """exit statuses:
  0   done
  2   usage
  70  (doctor) something blocks this node; each problem is one line saying what to fix
  71  systemd is not running here, or systemctl refused
  72  (remove, status) the unit is not installed
  73  a configuration file or PPN_* variable is invalid (the message names file and line)
  130 interrupted (Ctrl-C)
"""


def register(subparsers: Subparsers) -> None:
    _add_service(subparsers)
    _add_config(subparsers)
    _add_doctor(subparsers)


# --- ppn service ----------------------------------------------------------------------------------


def _add_service(subparsers: Subparsers) -> None:
    from ._units import ROLES

    roles = [r.name for r in ROLES]
    p = subparsers.add_parser(
        "service",
        help="install, remove or inspect the systemd unit of a role",
        description=(
            "Each long-running role runs as a systemd unit: Type=notify (ready once it serves), "
            "Restart=on-failure, no capability but CAP_NET_ADMIN for the agent and the vm-host, "
            "a read-only system but for /var/lib/ppn (0700). 'install' writes the unit, enables "
            "and starts it; 'remove' stops, disables and deletes it; 'status' shows its state. "
            "A role's flags come from /etc/ppn/ppn.toml (see 'ppn config show')."
        ),
        epilog=EXIT_STATUSES
        + "\nexamples:\n  ppn service install agent\n"
        + "  ppn service install vault --instance sales --dry-run\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("install", "write, enable and start the unit"),
        ("remove", "stop, disable and delete the unit"),
        ("status", "the unit's state"),
    ):
        q = sub.add_parser(action, help=text, description=text)
        q.add_argument("role", choices=roles, metavar="ROLE", help=", ".join(roles))
        q.add_argument("--instance", metavar="NAME", help="the vault's store (vault only)")
        q.add_argument(
            "--unit-dir",
            type=Path,
            default=Path("/etc/systemd/system"),
            metavar="DIR",
            help="where units are written (default /etc/systemd/system)",
        )
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if action == "install":
            q.add_argument("--dry-run", action="store_true", help="print the unit, change nothing")
            q.add_argument(
                "--executable",
                metavar="PATH",
                help="the ppn the unit runs (default: this one)",
            )
            q.add_argument(
                "--no-start", action="store_true", help="write and enable, but do not start"
            )
        q.set_defaults(handler=globals()[f"_service_{action}"])


def _unit(args: argparse.Namespace) -> tuple[Any, str]:
    from ._units import UnitError, role_named, unit_name

    role = role_named(args.role)
    try:
        return role, unit_name(role, args.instance)
    except UnitError as exc:
        raise CommandError(str(exc), 2) from None


def _this_ppn() -> str:
    # The console script installed next to this interpreter, so the unit runs this installation.
    beside = Path(sys.executable).parent / "ppn"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    import shutil

    found = shutil.which("ppn")
    if found is None:
        raise CommandError("cannot find the ppn executable: give --executable PATH", 2)
    return os.path.abspath(found)


def _service_install(args: argparse.Namespace) -> int:
    from ._io_systemd import SystemdError, booted, systemctl, write_unit
    from ._units import UnitError, render_unit

    role, unit = _unit(args)
    try:
        text = render_unit(role, args.executable or _this_ppn(), config=_config_path(args))
    except UnitError as exc:
        raise CommandError(str(exc), 2) from None
    file_name = unit.replace(f"@{args.instance}.", "@.") if role.template else unit
    if args.dry_run:
        if args.json:
            print(json.dumps({"unit": unit, "file": file_name, "text": text}, sort_keys=True))
        else:
            sys.stdout.write(text)
        return 0
    try:
        path = write_unit(args.unit_dir, file_name, text)
    except OSError as exc:
        raise CommandError(f"cannot write the unit: {exc}", 1) from None
    if not booted():
        raise CommandError(
            f"wrote {path}, but systemd is not running on this host (no /run/systemd/system): "
            f"nothing was enabled or started; run 'ppn {' '.join(role.command)}' in the foreground "
            "or under your supervisor",
            EXIT_SYSTEMD,
        )
    try:
        systemctl("daemon-reload")
        systemctl("enable", *(() if args.no_start else ("--now",)), unit)
    except SystemdError as exc:
        raise CommandError(f"wrote {path}; {exc}", EXIT_SYSTEMD) from None
    _print(args, {"unit": unit, "file": str(path), "started": not args.no_start})
    return 0


def _service_remove(args: argparse.Namespace) -> int:
    from ._io_systemd import SystemdError, booted, remove_unit, systemctl

    role, unit = _unit(args)
    file_name = unit.replace(f"@{args.instance}.", "@.") if role.template else unit
    if not (args.unit_dir / file_name).is_file():
        raise CommandError(f"{unit} is not installed in {args.unit_dir}", EXIT_NOT_INSTALLED)
    try:
        if booted():
            systemctl("disable", "--now", unit)
        # A template's file serves every instance, which systemd knows and we do not: keep it
        # (it starts nothing by itself).
        if not role.template:
            remove_unit(args.unit_dir, file_name)
        if booted():
            systemctl("daemon-reload")
    except SystemdError as exc:
        raise CommandError(str(exc), EXIT_SYSTEMD) from None
    _print(args, {"unit": unit, "removed": True})
    return 0


def _service_status(args: argparse.Namespace) -> int:
    from ._io_systemd import SystemdError, booted, unit_state

    role, unit = _unit(args)
    file_name = unit.replace(f"@{args.instance}.", "@.") if role.template else unit
    installed = (args.unit_dir / file_name).is_file()
    state: dict[str, Any] = {"unit": unit, "installed": installed}
    if booted():
        try:
            state.update(unit_state(unit))
        except SystemdError as exc:
            raise CommandError(str(exc), EXIT_SYSTEMD) from None
    else:
        state["ActiveState"] = "unknown (systemd is not running on this host)"
    _print(args, state)
    if not installed:
        return EXIT_NOT_INSTALLED
    return 0


def _print(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        for key, value in doc.items():
            print(f"{key}: {value}")


def _config_path(args: argparse.Namespace) -> str:
    from ._units import CONFIG_FILE

    given = getattr(args, "config", None)
    return os.path.abspath(given) if given else CONFIG_FILE


# --- ppn config -----------------------------------------------------------------------------------


def _add_config(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "config",
        help="show the effective configuration and where each value comes from",
        description=(
            "Every flag of every command can be set in /etc/ppn/ppn.toml (or 'ppn --config "
            "PATH'), one table per command ([up], [vault.serve], [fleet.serve]) whose keys are "
            "the flag names (control-port = 9206), and in the environment as PPN_<COMMAND>_<FLAG> "
            "(PPN_VAULT_SERVE_LISTEN=10.0.0.1:9210). A flag on the command line wins over the "
            "environment, which wins over the file, which wins over the default."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = sub.add_parser("show", help="the effective value of every flag, with its source")
    q.add_argument(
        "command_path",
        nargs="*",
        metavar="COMMAND",
        help="only this command (e.g. 'vault serve'); default: the services' and every "
        "command the file or environment configures",
    )
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=_config_show)


def _config_show(args: argparse.Namespace) -> int:
    from ppn.cli._config import ConfigError, effective
    from ppn.cli._main import build_parser

    from ._units import ROLES

    try:
        rows, path = effective(build_parser(), getattr(args, "config", None))
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    wanted = " ".join(args.command_path)
    services = {" ".join(r.command[: 2 if r.command[0] != "up" else 1]) for r in ROLES}
    if wanted:
        if not any(r["command"] == wanted for r in rows):
            raise CommandError(f"no command 'ppn {wanted}' has flags", 2)
        rows = [r for r in rows if r["command"] == wanted]
    else:
        configured = {r["command"] for r in rows if r["source"] != "default"}
        rows = [r for r in rows if r["command"] in services | configured]
    if args.json:
        print(json.dumps({"file": path, "values": rows}, indent=2, sort_keys=True))
        return 0
    print(f"# file: {path or 'none'}")
    current = None
    for r in rows:
        if r["command"] != current:
            current = r["command"]
            print(f"\n[{current.replace(' ', '.')}]")
        print(f"{r['flag']} = {json.dumps(r['value'])}  # {r['source']}")
    return 0


# --- ppn doctor -----------------------------------------------------------------------------------


def _add_doctor(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check that this host can run a node, and say what to fix",
        description=(
            "Check root or CAP_NET_ADMIN, the WireGuard kernel module or wireguard-go, that the "
            "node's ports are free (or held by its own services), the clock, the state "
            "directory's permissions, that the members' endpoints answer, and the services' "
            "states. One line per finding; exit 70 if anything blocks the node."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--state",
        type=Path,
        default=Path(os.environ.get("PPN_STATE", "/var/lib/ppn")),
        metavar="DIR",
        help="the node's state directory (default: $PPN_STATE or /var/lib/ppn)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--probe-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for each member's endpoint (default 2)",
    )
    p.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from ._doctor import Severity
    from ._io_doctor import run_checks

    findings = run_checks(args.state, probe_timeout=args.probe_timeout)
    blocking = [f for f in findings if f.severity is Severity.BLOCKS]
    if args.json:
        doc = [
            {"check": f.check, "severity": f.severity.value, "message": f.message} for f in findings
        ]
        print(json.dumps({"ok": not blocking, "findings": doc}, indent=2, sort_keys=True))
    else:
        for f in findings:
            print(f"{f.severity.value:5} {f.check}: {f.message}")
        if not blocking:
            print("nothing blocks this node")
    return EXIT_DOCTOR if blocking else 0
