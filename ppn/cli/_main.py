"""The ``ppn`` console script: one argparse tree, each package registering its own commands.

Every command module exposes ``register(subparsers)`` and keeps its module top light (heavy
imports such as trio go inside the handlers) so ``ppn`` starts fast. A handler returns an exit
status or raises :class:`CommandError`; the user sees one sentence, never a traceback.

Exit statuses (RFC-NOTES §1.4): 0 success, 1 failure, 2 usage; each command family owns a range
(genesis 10–19, wg 20–29, mesh 30–39, psp 40–59, fleet 60–69); 130 interrupted. An exception no
command expected is a bug: its traceback is printed once, with the version, through the log
set-up (``ppn/cli/_logging.py``), and ``ppn`` exits 1.

The global options (``--version``, ``--config``, ``--log-format``, ``--log-level``) live here;
the configuration layers (``ppn/cli/_config.py``) load only when a file or a ``PPN_*`` variable
exists, so a plain start does not pay for them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import import_module
from typing import Any, TypeVar

__all__ = ["CommandError", "build_parser", "main", "trio_run", "trio_run_until_sigterm"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a C tool in `| head`
EXIT_CONFIG = 73  # a configuration file or PPN_* variable is invalid (ppn/deploy/_cli.py)

DISTRIBUTION = "pointsav-ppn"  # pyproject.toml [project] name
DEFAULT_CONFIG = "/etc/ppn/ppn.toml"  # = ppn.cli._config.DEFAULT_FILE (tested)
LOG_FORMATS = ("text", "json")  # ppn/cli/_logging.py
LOG_LEVELS = ("debug", "info", "warning", "error")
# Global options that take a value: stripped to find the command, and settable at the top of
# ppn.toml (log-format, log-level) and as PPN_LOG_FORMAT / PPN_LOG_LEVEL.
_VALUED = ("--config", "--log-format", "--log-level")


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


def version_text() -> str:
    """The installed distribution's version (package metadata), read only when needed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed as a distribution)"


class VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        sys.stdout.write(f"ppn {version_text()}\n")
        parser.exit()


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: $PPN_CONFIG or {DEFAULT_CONFIG}); 'ppn config show'",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines on stderr as text (default) or one JSON object per line",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="least severe log lines shown (default: info)"
    )


def add_metrics_flag(parser: argparse.ArgumentParser, default_port: int) -> None:
    """``--metrics HOST[:PORT]`` (off by default; PORT defaults to the role's, ppn/ports.py)."""

    def address(text: str) -> tuple[str, int]:
        host, sep, port = text.rpartition(":")
        if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
            host, port = text, str(default_port)  # no port given (or a bare IPv6 address)
        host = host.strip("[]")
        if not host or not port.isdigit() or int(port) > 65535:
            raise argparse.ArgumentTypeError(f"expected HOST or HOST:PORT, not {text!r}")
        return host, int(port)

    address.__name__ = "HOST[:PORT]"  # how argparse names the type in its error messages
    parser.add_argument(
        "--metrics",
        type=address,
        metavar="HOST[:PORT]",
        help=(
            "serve Prometheus metrics at http://HOST:PORT/metrics (off by default; on a node, "
            f"its mesh address; PORT defaults to {default_port}, 0 picks one)"
        ),
    )


def strip_global(argv: Sequence[str]) -> list[str]:
    """``argv`` without its leading valued global options, to find which command it names."""
    rest = list(argv)
    while rest:
        head = rest[0]
        if head in _VALUED:
            del rest[:2]
        elif head.startswith(tuple(o + "=" for o in _VALUED)):
            del rest[:1]
        else:
            break
    return rest


def _needs_config(argv: Sequence[str]) -> bool:
    """Whether a configuration file or a PPN_* variable may apply (else skip ppn.cli._config)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # the command starts: globals end
        if argv[i] == "--config" or argv[i].startswith("--config="):
            return True
        i += 2 if argv[i] in _VALUED else 1
    return any(k.startswith("PPN_") for k in os.environ) or os.path.isfile(DEFAULT_CONFIG)


def trio_run(async_fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run`` for a service command: an exception group holding one exception is raised as
    that exception, so the command's ``except OSError`` (a port in use) or a ``CommandError``
    raised inside its nursery is reported as one sentence, not as a traceback of the group."""
    import trio

    try:
        return trio.run(async_fn)
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        pending: list[BaseException] = [group]
        while pending:
            exc = pending.pop()
            if isinstance(exc, BaseExceptionGroup):
                pending.extend(exc.exceptions)
            else:
                leaves.append(exc)
        if len(leaves) != 1:
            raise
        raise leaves[0] from None


def trio_run_until_sigterm(async_fn: Callable[[], Awaitable[T]], role: str) -> T | None:
    """:func:`trio_run` for a long-running role, which systemd stops with SIGTERM (RFC-NOTES
    §1.4): the signal cancels the service, so it stops accepting and its cleanup runs as on
    the way out of any cancellation (a vault's ``finally`` commits its pending audit entries
    and denial counts, work on threads is never abandoned); one log line says so, and the
    result is None, so the command exits 0. Ctrl-C stays an interruption (130)."""
    import logging
    import signal

    import trio

    async def until_sigterm() -> T | None:
        result: list[T] = []
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        logging.getLogger("ppn").info(
                            "%s stopping on SIGTERM",
                            role,
                            extra={"event": "stopping", "signal": "SIGTERM"},
                        )
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch)
            result.append(await async_fn())
            nursery.cancel_scope.cancel()  # the service ended by itself: stop watching
        return result[0] if result else None

    return trio_run(until_sigterm)


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
    add_global_options(parser)  # --version, --config, --log-format, --log-level
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
    except KeyboardInterrupt:
        # Ctrl-C before a handler ran (while the parser or the configuration loads): the same
        # one line as any interruption, never a traceback (RFC-NOTES §1.4).
        print("\nppn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--version"]:  # answered before any command family loads
        sys.stdout.write(f"ppn {version_text()}\n")
        return EXIT_OK
    family = _family_of(strip_global(args_list))
    parser = build_parser(None if family is None else [family])
    if _needs_config(args_list):
        from ._config import ConfigError, apply_config

        try:  # flag > environment > file > default (issue 17)
            layers = apply_config(
                parser, args_list, {c: m for m, cs in FAMILIES.items() for c in cs}
            )
        except ConfigError as exc:
            print(f"ppn: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        args = layers.finish(parser.parse_args(args_list))
    else:
        args = parser.parse_args(args_list)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    # Long-running roles mark themselves (set_defaults(daemon=True)) and always get the log
    # set-up; other commands only when asked, so a short command does not load logging.
    if getattr(args, "daemon", False) or args.log_format or args.log_level:
        _configure_logging(args)
    try:
        status = handler(args)
    except CommandError as exc:
        _failed(args, exc.message, exc.status)
        return exc.status
    except KeyboardInterrupt:
        return _interrupted(args)
    except BaseExceptionGroup as group:
        # trio (strict exception groups) delivers Ctrl-C wrapped in the nursery's group; the
        # services' own cleanup ran on the way out, so it is the same clean interruption.
        if group.subgroup(KeyboardInterrupt) is None:
            return _crashed(args, group)
        return _interrupted(args)
    except BrokenPipeError:
        raise  # main() handles it: a reader that went away is no bug
    except Exception as exc:
        return _crashed(args, exc)
    return int(status or 0)


def _failed(args: argparse.Namespace, message: str, status: int) -> None:
    """An expected failure: one sentence, never a traceback (a JSON log line under
    ``--log-format json``, so every stderr line of the process parses)."""
    if args.log_format == "json":
        import logging

        if not logging.getLogger().handlers:
            _configure_logging(args)
        logging.getLogger("ppn").error(message, extra={"event": "failed", "status": status})
    else:
        print(f"ppn: {message}", file=sys.stderr)


def _configure_logging(args: argparse.Namespace) -> None:
    from ._logging import configure

    configure(args.log_format or "text", args.log_level or "info")


def _crashed(args: argparse.Namespace, exc: BaseException) -> int:
    """An exception no command expected: its traceback once, with the version."""
    import logging

    if not logging.getLogger().handlers:
        _configure_logging(args)
    from ._logging import report_crash

    report_crash(version_text(), exc)
    return EXIT_FAILURE


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: one line, ``ppn: interrupted`` (RFC-NOTES §1.4); under ``--log-format json`` a
    log record (event ``interrupted``, status 130) instead, so every stderr line parses (§1.5)."""
    if args.log_format == "json":
        import logging

        if not logging.getLogger().handlers:
            _configure_logging(args)
        logging.getLogger("ppn").warning(
            "interrupted", extra={"event": "interrupted", "status": EXIT_INTERRUPTED}
        )
    else:
        print("\nppn: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
