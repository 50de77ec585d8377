"""``ppn genesis``, ``ppn invite``, ``ppn join`` and ``ppn demo`` (the join ceremony's commands).

The module top stays light so ``ppn`` starts fast: trio and the cores load inside handlers
(:mod:`genesis._cli_run`, :mod:`genesis._cli_demo`).
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING, Any

from ppn.ports import PAIRING_PORT

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_STATUSES = """\
exit status:
  0   joined (the joiner is in the sponsor's roster; both state directories updated)
  1   the pairing port cannot be opened (in use, or not permitted); nothing written
  10  the code is malformed or has a typo (checked locally; nothing was sent)
  11  the code did not match, or someone interfered: get a new code
  12  an operator rejected the comparison string (SAS); nothing installed
  13  timed out (a step 60 s, the SAS confirmation 120 s, the join window 10 min)
  14  the other side went away or could not be reached, or cancelled
  15  the other side broke the protocol (malformed or oversized message, other version)
  16  no such join window, or it is already in use ("crowded"): get a new code
  17  too many failed attempts in the last hour: no window opens for now (try later)
  18  the state directory cannot be used (already joined, not a member, unreadable)
  19  the sponsor refused the join (name or key already in the mesh, or no free address)
  130 interrupted (Ctrl-C); a ceremony under way first tells the other side 'cancelled'
"""

EVENTS_HELP = (
    "'json': stdout carries one JSON object per line per milestone "
    '({"event": "code"|"sas"|"joined"|"failed", ...}) and the SAS confirmation is read from '
    "stdin as a line 'yes' or 'no'. Default 'text': friendly progress on stderr, y/N prompt."
)


def _common(parser: argparse.ArgumentParser, *, sponsor: bool) -> None:
    parser.add_argument("--events", choices=("text", "json"), default="text", help=EVENTS_HELP)
    parser.add_argument(
        "--strong",
        action="store_true",
        help="a 13-digit comparison string (43 bits) instead of 7 digits (23 bits)",
    )
    if sponsor:
        parser.add_argument(
            "--listen",
            default=f"0.0.0.0:{PAIRING_PORT}",
            metavar="HOST:PORT",
            help=f"pairing address (default 0.0.0.0:{PAIRING_PORT}; port 0 picks a free port and reports it)",
        )
        parser.add_argument(
            "--to",
            metavar="HOST:PORT",
            help="dial a joining node that waits with 'ppn join CODE --listen HOST:PORT' "
            "instead of listening (for a sponsor behind NAT)",
        )
        parser.add_argument(
            "--no-announce",
            action="store_true",
            help="do not announce the open window on the local network (mDNS)",
        )
        parser.add_argument(
            "--keep-open",
            action="store_true",
            help="after a failed attempt open a new window with a new code "
            "(at most 5 failed attempts per hour)",
        )


def _reach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mdns",
        action="append",
        default=[],
        metavar="ADDR",
        help="run mDNS (window announcement or discovery) only on the interface with this "
        "address (repeatable; default: the listen address, or every non-loopback IPv4 address)",
    )
    parser.add_argument(
        "--up",
        action="store_true",
        help="after a successful ceremony go on as 'ppn up' (the node agent, until SIGTERM)",
    )


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78)


def register(subparsers: Subparsers) -> None:
    """Add ``genesis``, ``invite``, ``join`` and ``demo`` to ``ppn``."""
    _add_genesis(subparsers)
    _add_invite(subparsers)
    _add_join(subparsers)
    _add_demo(subparsers)


def _add_genesis(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "genesis",
        help="create a new mesh with this node as its first member and open a join window",
        description=_wrap(
            "Create a new mesh (keys, mesh id, the first address of the CIDR) in the state "
            "directory, open a join window and print its code. Read the code to the new node's "
            "operator; when they type it, both screens show the same comparison string; confirm "
            "it and the new node is in the mesh."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--state", required=True, metavar="DIR", help="this node's state directory")
    p.add_argument("--name", help="this node's name (default: the host name)")
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where other members reach this node's WireGuard (repeatable)",
    )
    p.add_argument("--mesh-cidr", default="10.8.0.0/24", metavar="CIDR", help="mesh address range")
    _common(p, sponsor=True)
    _reach(p)
    p.set_defaults(handler=_handler("genesis"))


def _add_invite(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "invite",
        help="on an existing member, open a join window for a new node",
        description=_wrap(
            "Open a join window on a node that is already a mesh member and print its code; "
            "then run the ceremony with the node that types it."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--state", required=True, metavar="DIR", help="this node's state directory")
    _common(p, sponsor=True)
    _reach(p)
    p.set_defaults(handler=_handler("invite"))


def _add_join(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "join",
        help="join a mesh with the code a member's operator reads to you",
        description=_wrap(
            "Join a mesh: type the code shown by a member running 'ppn genesis' or 'ppn invite'. "
            "A typo is caught before anything is sent. Both screens then show a comparison "
            "string: confirm only if they are equal. On success the state directory holds this "
            "node's keys (0600), the roster and a wg-quick file."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "code", metavar="CODE", help="the code, e.g. 7-K3QF-M2XD-R (case and dashes do not matter)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--sponsor",
        metavar="HOST:PORT",
        help="the sponsor's pairing address (default: find the sponsor's window on the local "
        "network by its mDNS announcement)",
    )
    where.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="wait here for a sponsor running 'ppn genesis|invite --to HOST:PORT' to dial in",
    )
    p.add_argument("--state", required=True, metavar="DIR", help="this node's state directory")
    p.add_argument("--name", help="this node's name (default: the host name)")
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where other members reach this node's WireGuard (repeatable; default: each "
        "non-loopback address of this host, and the sponsor adds the one it saw)",
    )
    _common(p, sponsor=False)
    _reach(p)
    p.set_defaults(handler=_handler("join"))


def _add_demo(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a whole join ceremony between two local processes (no root, no WireGuard)",
        description=_wrap(
            "Start a sponsor ('ppn genesis') and a joiner ('ppn join') as two processes on "
            "loopback, show both comparison strings side by side, confirm on both sides and "
            "print the resulting roster. State goes to a temporary directory unless --dir."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", metavar="DIR", help="keep the two state directories here")
    p.add_argument("--strong", action="store_true", help="use the 13-digit comparison string")
    p.set_defaults(handler=_demo)


def _handler(command: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        from . import _cli_run

        return _cli_run.run(command, args)

    return handler


def _demo(args: argparse.Namespace) -> int:
    from . import _cli_demo

    return _cli_demo.run(args)
