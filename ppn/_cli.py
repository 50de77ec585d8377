"""The ``ppn`` console script: one argparse tree, each package registering its own commands.

Every command module exposes ``register(subparsers)`` and keeps its module top light (heavy
imports such as trio go inside the handlers) so ``ppn`` starts fast. A handler returns an exit
status or raises :class:`CommandError`; the user sees one sentence, never a traceback.

Exit statuses (RFC-NOTES §1.4): 0 success, 1 failure, 2 usage; each command family owns a range
(genesis 10–19, wg 20–29, mesh 30–39, psp 40–59, fleet 60–69); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["CommandError", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure to report as one sentence with a documented exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _registrars() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    from genesis import _cli as genesis_cli
    from psp import _cli as psp_cli

    from . import _cli_fleet, _cli_mesh, _cli_wg

    return [
        genesis_cli.register,
        _cli_wg.register,
        _cli_mesh.register,
        _cli_fleet.register,
        psp_cli.register,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppn",
        description=(
            "The PointSav Private Network: join nodes with a short code (genesis, invite, join), "
            "run the WireGuard mesh (up, status, wg), and query Totebox vaults (vault, cap, query)."
        ),
        epilog="Run 'ppn COMMAND --help' for what each command does. Start with 'ppn demo'.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        status = handler(args)
    except CommandError as exc:
        print(f"ppn: {exc.message}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("ppn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
