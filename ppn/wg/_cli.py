"""``ppn wg sync`` and ``ppn wg show``: WireGuard devices, reconciled with minimal changes.

Exit statuses (RFC-NOTES §6.8): 20 configuration unreadable or invalid; 21 no such WireGuard
interface (or it does not answer); 22 desired state rejected, nothing changed; 23 the device
refused a change; 24 read-back differs from the desired state; 25 no WireGuard data plane on
this machine (the configuration was written to a file instead); 26 permission denied;
27 an endpoint host name does not resolve.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

EXIT_CONFIG = 20
EXIT_NO_DEVICE = 21
EXIT_REJECTED = 22
EXIT_DEVICE_REFUSED = 23
EXIT_VERIFY = 24
EXIT_NO_DATAPLANE = 25
EXIT_PERMISSION = 26
EXIT_RESOLVE = 27

_SYNC_EPILOG = """\
Like 'wg syncconf IFACE CONFIG', but a peer that did not change is not written at all (its
session, handshake, counters and endpoint stay as they are), an endpoint a live peer roamed to
is kept unless the configured endpoint itself changed or the peer has had no handshake for
--stale-after seconds, and a prefix claimed by two peers is refused before anything changes.
wg-quick keys (Address, DNS, MTU, Table, PreUp...) are accepted and ignored, like 'wg-quick strip'.

exit status: 0 in sync (or made so); 20 bad CONFIG; 21 no such WireGuard interface;
22 desired state refused (nothing changed); 23 the device refused a change; 24 read-back
differs; 25 no WireGuard on this machine (CONFIG written to the state directory instead);
26 permission denied; 27 an endpoint host name does not resolve; 130 interrupted.

examples:
  ppn wg sync wg0 /etc/wireguard/wg0.conf --dry-run
  ppn wg sync wg0 wg0.conf --json"""

_SHOW_EPILOG = """\
Per peer: endpoint, allowed IPs, latest handshake (flagged stale when older than
--stale-after seconds, or never), bytes received and sent. Private and preshared keys are
never printed.

exit status: 0 shown; 21 no such WireGuard interface; 26 permission denied; 130 interrupted.

examples:
  ppn wg show
  ppn wg show wg0 --json"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ppn wg sync`` and ``ppn wg show``."""
    wg = subparsers.add_parser(
        "wg",
        help="manage WireGuard devices (sync a config, show peers)",
        description="WireGuard devices: kernel (netlink) or userspace (wireguard-go via UAPI).",
    )
    wg_sub = wg.add_subparsers(dest="wg_command", metavar="COMMAND")
    wg.set_defaults(handler=lambda _args: _usage(wg))

    sync = wg_sub.add_parser(
        "sync",
        help="make IFACE match a wg(8) config with the fewest changes",
        description="Make WireGuard interface IFACE match CONFIG (wg(8) or wg-quick(8) format).",
        epilog=_SYNC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync.add_argument("iface", metavar="IFACE", help="the WireGuard interface, e.g. wg0")
    sync.add_argument("config", metavar="CONFIG", help="configuration file ('-' for stdin)")
    sync.add_argument("--dry-run", action="store_true", help="print the operations, change nothing")
    sync.add_argument("--json", action="store_true", help="report as JSON on stdout")
    sync.add_argument(
        "--only-owned",
        action="store_true",
        help="leave alone peers that are neither in CONFIG nor put there by an earlier ppn sync "
        "(default: remove every peer not in CONFIG, like wg syncconf)",
    )
    sync.add_argument(
        "--stale-after",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="a peer without a handshake for this long gets its configured endpoint back "
        "(default 180)",
    )
    sync.set_defaults(handler=_sync)

    show = wg_sub.add_parser(
        "show",
        help="peers, handshakes and traffic of WireGuard interfaces",
        description="Show WireGuard interfaces and their peers.",
        epilog=_SHOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("iface", metavar="IFACE", nargs="?", help="one interface (default: all)")
    show.add_argument("--json", action="store_true", help="report as JSON on stdout")
    show.add_argument(
        "--stale-after", type=float, default=180.0, metavar="SECONDS", help="(default 180)"
    )
    show.set_defaults(handler=_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _read_config(path: str) -> Any:
    from ..cli._main import CommandError
    from ._config import parse_config
    from ._model import ConfigError

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_CONFIG) from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text", EXIT_CONFIG) from None
    try:
        return parse_config(text)
    except ConfigError as exc:
        raise CommandError(f"{path}: {exc}", EXIT_CONFIG) from None


def _resolve(config: Any) -> Any:
    """Host names in endpoints → addresses (as wg does when it reads a config)."""
    import dataclasses
    import socket

    from ..cli._main import CommandError
    from ._model import Endpoint

    peers = list(config.peers)
    for index, peer in enumerate(peers):
        ep = peer.endpoint
        if ep is None or ep.is_literal:  # the common case: nothing to copy
            continue
        try:
            infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
        except OSError:
            raise CommandError(f"endpoint host {ep.host} does not resolve", EXIT_RESOLVE) from None
        infos.sort(key=lambda i: i[0] != socket.AF_INET)  # IPv4 first, like wg
        peers[index] = dataclasses.replace(
            peer, endpoint=Endpoint(host=str(infos[0][4][0]), port=ep.port)
        )
    if all(new is old for new, old in zip(peers, config.peers, strict=True)):
        return config
    return dataclasses.replace(config, peers=tuple(peers))


def _device_error(exc: Any, iface: str) -> Exception:
    from ..cli._main import CommandError

    if exc.errno == 13:
        return CommandError(str(exc), EXIT_PERMISSION)
    if exc.errno in (2, 19, 111, 110):
        return CommandError(str(exc), EXIT_NO_DEVICE)
    return CommandError(f"{iface}: {exc}", EXIT_DEVICE_REFUSED)


def _sync(args: argparse.Namespace) -> int:
    import gc

    # This command owns its process for one short pass that allocates tens of thousands of
    # acyclic objects, so the cyclic collector would only spend time finding nothing (the
    # library's parsers leave the collector alone). Measured in fresh processes, 10,000 peers,
    # 1% churn (parse the file, parse the device's answer, plan), 9 runs each, interleaved on
    # a loaded 2-core box: GC on min 206 / median 344 ms, GC off min 155 / median 282 ms.
    gc.disable()
    try:
        return _sync_paused(args)
    finally:
        gc.enable()


def _sync_paused(args: argparse.Namespace) -> int:
    import time

    from ._io_device import ConfigOnlyBackend
    from ._io_state import load_record, save_record

    started = time.monotonic()
    desired = _resolve(_read_config(args.config))
    choice = _running_device(args.iface)

    def progress(text: str) -> None:  # only for waits a user would notice
        if time.monotonic() - started > 1.0 and not args.json:
            print(f"ppn: {text}…", file=sys.stderr, flush=True)

    record = load_record(args.iface)
    owned = None
    if args.only_owned:
        owned = {p.public_key for p in desired.peers} | (record.owned if record else frozenset())
    report = _reconcile(args, choice.backend, desired, record, owned, progress)
    if choice.kind == "config-only":
        assert isinstance(choice.backend, ConfigOnlyBackend)
        done = "would be" if args.dry_run else "was"
        raise _command_error(
            f"{choice.reason}; the configuration {done} written to {choice.backend.path} "
            "for when one is installed",
            EXIT_NO_DATAPLANE,
        )
    if not args.dry_run:
        try:
            save_record(args.iface, desired.peers, unless_equal=record)
        except OSError as exc:
            print(f"ppn: warning: cannot record the sync: {exc.strerror}", file=sys.stderr)
    if args.json:
        _print_sync_json(args, choice.kind, report)
    else:
        _print_sync_text(args, choice.reason, report)
    return 0


def _command_error(message: str, status: int) -> Exception:
    from ..cli._main import CommandError

    return CommandError(message, status)


def _running_device(iface: str) -> Any:
    """The backend choice for ``iface``; a usage error with a hint when no device runs."""
    from ._io_device import select_backend

    choice = select_backend(iface)
    if choice.backend is None or not choice.running:
        hint = (
            f"start it with 'wireguard-go {iface}'"
            if choice.kind == "userspace"
            else f"create it with 'ip link add {iface} type wireguard'"
        )
        raise _command_error(
            f"no WireGuard interface {iface} ({choice.reason}); {hint}", EXIT_NO_DEVICE
        )
    return choice


def _reconcile(
    args: argparse.Namespace,
    backend: Any,
    desired: Any,
    record: Any,
    owned: set[bytes] | None,
    progress: Any,
) -> Any:
    """One reconcile pass; each failure becomes its documented exit status."""
    import time

    from ._backend import reconcile
    from ._model import (
        ConfigError,
        DesiredStateError,
        DeviceError,
        UAPIProtocolError,
        VerifyError,
    )

    try:
        return reconcile(
            backend,
            desired,
            now=time.time(),
            owned=owned,
            previous=None if record is None else record.endpoints,
            stale_after=args.stale_after,
            dry_run=args.dry_run,
            progress=progress,
        )
    except DesiredStateError as exc:
        raise _command_error(str(exc), EXIT_REJECTED) from None
    except VerifyError as exc:
        raise _command_error(str(exc), EXIT_VERIFY) from None
    except DeviceError as exc:
        raise _device_error(exc, args.iface) from None
    except UAPIProtocolError as exc:
        raise _command_error(f"{args.iface} answered badly: {exc}", EXIT_DEVICE_REFUSED) from None
    except ConfigError as exc:  # config-only: its kept file was damaged
        raise _command_error(f"the kept configuration is damaged: {exc}", EXIT_CONFIG) from None
    except OSError as exc:  # config-only: the file could not be written
        raise _command_error(
            f"cannot write the configuration: {exc.strerror}", EXIT_PERMISSION
        ) from None


def _print_sync_json(args: argparse.Namespace, backend_kind: str, report: Any) -> None:
    import json

    from ._model import key_text as encode_key
    from ._plan import operation_to_json

    print(
        json.dumps(
            {
                "interface": args.iface,
                "backend": backend_kind,
                "dry_run": args.dry_run,
                "changed": report.applied,
                "verified": report.verified,
                "operations": [operation_to_json(op) for op in report.plan.operations],
                "foreign_peers": [encode_key(k) for k in report.plan.foreign_peers],
                "kept_endpoints": [encode_key(k) for k in report.plan.kept_endpoints],
            },
            indent=2,
        )
    )


def _print_sync_text(args: argparse.Namespace, reason: str, report: Any) -> None:
    from ._model import key_text as encode_key
    from ._plan import describe

    ops = report.plan.operations
    verb = "would apply" if args.dry_run else "applied"
    # A dry run is for reviewing: every line. A real sync summarises past a screenful (a first
    # sync of 10,000 peers is 10,001 operations); --json always has everything.
    limit = None if args.dry_run else _SHOWN
    if not ops:
        print(f"{args.iface}: in sync ({reason}); nothing to do")
    else:
        tail = "" if args.dry_run else ", verified by read-back"
        print(f"{args.iface}: {verb} {len(ops)} operation(s) ({reason}){tail}")
        _print_some((describe(op) for op in ops), len(ops), limit, "operation(s)")
    _print_some(
        (f"kept roamed endpoint of live peer {encode_key(k)}" for k in report.plan.kept_endpoints),
        len(report.plan.kept_endpoints),
        limit,
        "kept endpoint(s)",
    )
    _print_some(
        (
            f"left alone peer {encode_key(k)} (not owned by this node)"
            for k in report.plan.foreign_peers
        ),
        len(report.plan.foreign_peers),
        limit,
        "peer(s) left alone",
    )


_SHOWN = 20  # lines of each list a real sync prints before summarising the rest


def _print_some(lines: Iterator[str], count: int, limit: int | None, what: str) -> None:
    for index, line in enumerate(lines):
        if limit is not None and index == limit:
            print(f"  ... and {count - limit} more {what} (--json lists them all)")
            return
        print(f"  {line}")


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s ago"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _show(args: argparse.Namespace) -> int:
    import json
    import time

    from ._io_device import list_kernel_interfaces, list_userspace_interfaces

    names = (
        [args.iface]
        if args.iface
        else sorted(set(list_userspace_interfaces()) | set(list_kernel_interfaces()))
    )
    now = time.time()
    out = [i for i in (_read_interface(args, name, now) for name in names) if i is not None]
    if args.json:
        print(json.dumps({"interfaces": out}, indent=2))
        return 0
    if not out:
        print("no WireGuard interfaces")
    for index, iface in enumerate(out):
        if index:
            print()
        _print_interface(iface)
    return 0


def _read_interface(args: argparse.Namespace, name: str, now: float) -> dict[str, Any] | None:
    """One interface as ``show --json`` prints it; None for one that is not there, unless it
    was asked for by name (then an error)."""
    import dataclasses
    import os

    from ._io_device import select_backend
    from ._model import DeviceError, UAPIProtocolError

    choice = select_backend(name)
    kept_file = getattr(choice.backend, "path", None)
    if choice.kind == "config-only" and not (kept_file and os.path.exists(kept_file)):
        choice = dataclasses.replace(choice, running=False)
    if choice.backend is None or not choice.running:
        if args.iface:
            raise _command_error(f"no WireGuard interface {name} ({choice.reason})", EXIT_NO_DEVICE)
        return None
    try:
        state = choice.backend.read()
        states = sorted(state.peers.values(), key=lambda p: -(p.last_handshake or 0))
    except DeviceError as exc:
        if args.iface:
            raise _device_error(exc, name) from None
        return None  # a stale socket of a dead daemon: not an interface
    except UAPIProtocolError as exc:
        raise _command_error(f"{name} answered badly: {exc}", EXIT_DEVICE_REFUSED) from None
    return {
        "name": name,
        "backend": choice.kind,
        "public_key": state.public_key_b64,
        "listen_port": state.listen_port,
        "fwmark": state.fwmark,
        "peers": [_peer_json(p, now, args.stale_after) for p in states],
    }


def _peer_json(p: Any, now: float, stale_after: float) -> dict[str, Any]:
    from ._model import key_text as encode_key

    age = p.handshake_age(now)
    return {
        "public_key": encode_key(p.public_key),
        "endpoint": None if p.endpoint is None else str(p.endpoint),
        "allowed_ips": [str(n) for n in p.allowed_ips],
        "latest_handshake": p.last_handshake,
        "handshake_age": None if age is None else round(age, 3),
        "stale": p.is_stale(now, stale_after),
        "rx_bytes": p.rx_bytes,
        "tx_bytes": p.tx_bytes,
        "persistent_keepalive": p.persistent_keepalive,
        "preshared_key": p.preshared_fingerprint is not None,
    }


def _print_interface(iface: dict[str, Any]) -> None:
    """One interface in ``wg show``'s layout."""
    print(f"interface: {iface['name']} ({iface['backend']})")
    print(f"  public key: {iface['public_key'] or '(none)'}")
    print(f"  listening port: {iface['listen_port']}")
    if iface["fwmark"]:
        print(f"  fwmark: {hex(iface['fwmark'])}")
    for p in iface["peers"]:
        print()
        print(f"peer: {p['public_key']}")
        if p["preshared_key"]:
            print("  preshared key: (hidden)")
        if p["endpoint"]:
            print(f"  endpoint: {p['endpoint']}")
        print(f"  allowed ips: {', '.join(p['allowed_ips']) or '(none)'}")
        if p["handshake_age"] is None:
            print("  latest handshake: never (stale)")
        else:
            stale = " (stale)" if p["stale"] else ""
            print(f"  latest handshake: {_age(p['handshake_age'])}{stale}")
        print(f"  transfer: {_bytes(p['rx_bytes'])} received, {_bytes(p['tx_bytes'])} sent")
        if p["persistent_keepalive"]:
            print(f"  persistent keepalive: every {p['persistent_keepalive']} s")
