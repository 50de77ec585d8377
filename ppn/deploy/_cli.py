"""``ppn service``, ``ppn config`` and ``ppn doctor``: running a node as an operator would (issue 17).

Exit statuses (RFC-NOTES §1.4, the deploy range 70–79): 70 ``ppn doctor`` found a problem that
blocks the node, 71 systemd is not running or refused (the message says what was already done),
72 the unit is not installed (or, without systemd, the role is not running), 73 a configuration
file or variable is invalid, 74 a role started without systemd did not become ready.
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
EXIT_NOT_READY = 74

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_STATUSES = """exit statuses:
  0   done
  2   usage
  70  (doctor) something blocks this node; each problem is one line saying what to fix
  71  systemd is not running here, or systemctl refused
  72  (remove, status) the unit is not installed; with --no-systemd: the role is not running
  73  a configuration file or PPN_* variable is invalid (the message names file and line)
  74  (install --no-systemd) the role exited, or sent no READY=1 in time (its log is named)
  130 interrupted (Ctrl-C)
"""


def register(subparsers: Subparsers) -> None:
    _add_service(subparsers)
    _add_config(subparsers)
    _add_doctor(subparsers)


# --- ppn service ----------------------------------------------------------------------------------


def _add_service(subparsers: Subparsers) -> None:
    from ._units import ROLES, STATE_DIR

    roles = [r.name for r in ROLES]
    p = subparsers.add_parser(
        "service",
        help="install, remove or inspect the systemd unit of a role",
        description=(
            "Each long-running role runs as a systemd unit: Type=notify (ready once it serves), "
            "Restart=on-failure, no capability but CAP_NET_ADMIN for the agent and the vm-host, "
            "a read-only system but for /var/lib/ppn (0700). 'install' writes the unit, enables "
            "and starts it; 'remove' stops, disables and deletes it; 'status' shows its state. "
            "A role's flags come from /etc/ppn/ppn.toml (see 'ppn config show'). On a host "
            "without systemd, --no-systemd runs the role as a background process instead: "
            "'install' starts it and returns once it reports ready (the READY=1 a unit waits "
            "for), with RUN_DIR/ROLE.pid and RUN_DIR/ROLE.log; a role already running is left "
            "alone; 'remove' stops it (SIGTERM); nothing restarts it if it dies."
        ),
        epilog=EXIT_STATUSES
        + "\nexamples:\n  ppn service install agent\n"
        + "  ppn service install vault --instance sales --dry-run\n"
        + "  ppn service install agent --no-systemd --run-dir /run/ppn\n",
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
        q.add_argument(
            "--no-systemd",
            action="store_true",
            help="a background process with a PID file instead of a unit (no systemd here)",
        )
        q.add_argument(
            "--state",
            type=Path,
            default=Path(STATE_DIR),
            metavar="DIR",
            help=f"(--no-systemd) the node's state directory (default {STATE_DIR}; units "
            "always use it)",
        )
        q.add_argument(
            "--run-dir",
            type=Path,
            default=Path("/run/ppn"),
            metavar="DIR",
            help="(--no-systemd) where ROLE.pid and ROLE.log are kept (default /run/ppn)",
        )
        if action == "install":
            q.add_argument(
                "--timeout",
                type=float,
                default=120.0,
                metavar="SECONDS",
                help="(--no-systemd) how long the role has to report ready (default 120)",
            )
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
    from ._units import STATE_DIR, UnitError, role_named, unit_name

    role = role_named(args.role)
    if not args.no_systemd and args.state != Path(STATE_DIR):
        raise CommandError(
            f"units keep their state in {STATE_DIR} (systemd's StateDirectory); "
            "--state DIR is for --no-systemd",
            2,
        )
    try:
        return role, unit_name(role, args.instance)
    except UnitError as exc:
        raise CommandError(str(exc), 2) from None


# Without systemd (service-less mode): the role as a background process, ppn/deploy/_io_background.


def _background_install(args: argparse.Namespace, role: Any, unit: str) -> int:
    from ._io_background import BackgroundError, start
    from ._units import role_argv

    given = getattr(args, "config", None)
    argv = [
        sys.executable,
        "-m",
        "ppn",
        *(("--config", os.path.abspath(given)) if given else ()),
        *role_argv(role, state=str(args.state.absolute()), instance=args.instance),
    ]
    if args.dry_run:
        _print(args, {"unit": unit.removesuffix(".service"), "argv": argv})
        return 0

    def progress(line: str) -> None:
        print(f"ppn service: {line}", file=sys.stderr, flush=True)

    name = unit.removesuffix(".service")
    try:
        started = start(
            argv, name=name, run_dir=args.run_dir, timeout=args.timeout, progress=progress
        )
    except BackgroundError as exc:
        raise CommandError(str(exc), EXIT_NOT_READY) from None
    except OSError as exc:
        raise CommandError(f"cannot start {name}: {exc.strerror or exc}", 1) from None
    _print(
        args,
        {
            "unit": name,
            "pid": started.pid,
            "pid_file": str(started.pid_file),
            "log": str(started.log),
            "started": not started.already,
        },
    )
    return 0


def _background_remove(args: argparse.Namespace, unit: str) -> int:
    from ._io_background import pid_file, stop

    name = unit.removesuffix(".service")
    try:
        pid = stop(pid_file(args.run_dir, name))
    except OSError as exc:
        raise CommandError(f"cannot stop {name}: {exc.strerror or exc}", 1) from None
    if pid is None:
        raise CommandError(
            f"{name} is not running (no live PID file in {args.run_dir})", EXIT_NOT_INSTALLED
        )
    _print(args, {"unit": name, "stopped": pid})
    return 0


def _background_status(args: argparse.Namespace, unit: str) -> int:
    from ._io_background import pid_file, running_pid

    name = unit.removesuffix(".service")
    path = pid_file(args.run_dir, name)
    pid = running_pid(path)
    _print(args, {"unit": name, "running": pid is not None, "pid": pid, "pid_file": str(path)})
    return 0 if pid is not None else EXIT_NOT_INSTALLED


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
    if args.no_systemd:
        return _background_install(args, role, unit)
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
    if args.no_systemd:
        return _background_remove(args, unit)
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
    if args.no_systemd:
        return _background_status(args, unit)
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
        # "" is ppn's own global options (log-format, log-level): every service reads them.
        rows = [r for r in rows if r["command"] in services | configured | {""}]
    if args.json:
        print(json.dumps({"file": path, "values": rows}, indent=2, sort_keys=True))
        return 0
    print(f"# file: {path or 'none'}")
    current = None
    for r in rows:
        if r["command"] != current:
            current = r["command"]
            if current:  # the global options come first, as top-level keys
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
            "states (units, and roles started with --no-systemd). One line per finding; exit 70 "
            "if anything blocks the node."
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
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path("/run/ppn"),
        metavar="DIR",
        help="where roles started without systemd keep their PID files (default /run/ppn)",
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
    from ppn.cli._config import ConfigError, effective
    from ppn.cli._main import build_parser

    from ._doctor import Severity, service_ports
    from ._io_doctor import run_checks, wireguard_port_endpoints

    # The ports this node's configuration gives its services (flag defaults where it is silent).
    try:
        rows, _ = effective(build_parser(), getattr(args, "config", None))
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    config = {(r["command"], r["flag"]): (r["value"], r["source"]) for r in rows}
    node_ports = service_ports(config, endpoints=wireguard_port_endpoints(args.state))
    findings = run_checks(
        args.state, probe_timeout=args.probe_timeout, node_ports=node_ports, run_dir=args.run_dir
    )
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
