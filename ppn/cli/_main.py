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
from collections.abc import Sequence
from importlib import import_module

from ._config import ConfigError, add_global_options, apply_config, strip_global

__all__ = ["CommandError", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a C tool in `| head`
EXIT_CONFIG = 73  # a configuration file or PPN_* variable is invalid (ppn/deploy/_cli.py)


class CommandError(Exception):
    """A failure to report as one sentence with a documented exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# Which module registers which top-level commands. `ppn CMD` imports only CMD's family, so a
# command does not pay for every other family's imports at start-up; `ppn --help` loads all.
# tests/test_cli.py checks this table against what each module really registers.
FAMILIES: dict[str, tuple[str, ...]] = {
    "genesis._cli": ("genesis", "invite", "join", "demo"),
    "ppn.wg._cli": ("wg",),
    "ppn.mesh._cli": ("up", "status", "resolve", "remove", "admin"),
    "ppn.mesh._cli_rotate": ("rotate",),
    "ppn.fleet._cli": ("fleet", "vmhost", "vm"),
    "psp._cli": ("vault", "key", "cap", "query"),
    "psp.aggregation._cli": ("orchestration",),
    "ppn.deploy._cli": ("service", "config", "doctor"),
}


def _family_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg.startswith("-"):
            return None  # a global option first (e.g. --help): load everything
        for module, commands in FAMILIES.items():
            if arg in commands:
                return module
        return None
    return None


def build_parser(families: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``ppn`` parser with the given families' commands (all of them by default)."""
    parser = argparse.ArgumentParser(
        prog="ppn",
        description=(
            "The PointSav Private Network: join nodes with a short code (genesis, invite, join), "
            "run the WireGuard mesh (up, status, wg), and query Totebox vaults (vault, cap, query)."
        ),
        epilog="Run 'ppn COMMAND --help' for what each command does. Start with 'ppn demo'.",
    )
    add_global_options(parser)  # --version, --config (ppn/cli/_config.py)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in FAMILIES if families is None else families:
        import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our output went away (``ppn ... | head``): what the command did is
        # done; drop the rest of the output quietly instead of a traceback, and keep the
        # interpreter's last flush from failing again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    family = _family_of(strip_global(args_list))
    parser = build_parser(None if family is None else [family])
    try:  # flag > environment > file > default (issue 17)
        layers = apply_config(parser, args_list, {c: m for m, cs in FAMILIES.items() for c in cs})
    except ConfigError as exc:
        print(f"ppn: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    args = layers.finish(parser.parse_args(args_list))
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
        return _interrupted()
    except BaseExceptionGroup as group:
        # trio (strict exception groups) delivers Ctrl-C wrapped in the nursery's group; the
        # services' own cleanup ran on the way out, so it is the same clean interruption.
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        return _interrupted()
    return int(status or 0)


def _interrupted() -> int:
    print("\nppn: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
