"""``ppn orchestration serve`` and ``ppn query --via`` (RFC-NOTES §10.6).

Exit statuses (RFC-NOTES §1.4, §10.6), after §9.7's 40–48: 49 the aggregator is unreachable,
refused the request or broke the protocol · 50 a strict query failed because some vault was not
ok (the status table says which) · 51 a best-effort answer is incomplete (some vault failed; the
rows that arrived are printed) · 52 the vault list is unreadable or names a vault no ``--cap``
covers. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ppn.cli._main import add_metrics_flag
from ppn.ports import AGGREGATOR_METRICS_PORT, AGGREGATOR_PORT

from .._cli_common import (
    build_query,
    error,
    fail_code,
    hostport,
    load_cap,
    load_key,
    print_json,
    table,
)

if TYPE_CHECKING:
    from ppn import IdentityKey

    from .._capability import Capability
    from .._query import Query
    from ._merge import Mode
    from ._plan import AggregateCursor, VaultAddress
    from ._trio_client import AggregateResult
    from ._trio_server import AllowList

EXIT_AGGREGATOR = 49
EXIT_STRICT_FAILED = 50
EXIT_INCOMPLETE = 51
EXIT_VAULT_LIST = 52

VIA_HELP = f"""\
through an aggregator (VM-Orchestration), many vaults at once:
  --via HOST:PORT          the aggregator (ppn orchestration serve; port {AGGREGATOR_PORT})
  --vault ID@HOST:PORT     a target vault: its id (public key, base64) and address (repeat)
  --vaults FILE            targets, one 'ID@HOST:PORT [CAP]' per line ('#' comments)
  --cap CAP                repeat: each vault uses the first capability naming it
  --mode strict|best_effort   strict (default for --count and aggregates) fails the whole
                           query when any vault is not ok; best_effort (default for rows)
                           returns what arrived. Either way a status table lists every vault.
  --resume CURSOR          the next page: the cursor a previous answer printed
  --vault-timeout S        per-vault deadline (default: --timeout less 10%, at most 1 s less)
exit statuses: 49 aggregator unreachable or refused, 50 strict query failed,
  51 best-effort answer incomplete, 52 bad vault list, 130 interrupted
example:
  ppn query --via 127.0.0.1:9211 --vaults entities.txt --key me.key --collection people --count
"""


def add_via_options(p: argparse.ArgumentParser) -> None:
    """The ``ppn query`` options for the aggregated path (``--vault`` and ``--cap`` repeat)."""
    p.epilog = f"{p.epilog or ''}\n\n{VIA_HELP}"
    g = p.add_argument_group("aggregation (see the epilog)")
    g.add_argument(
        "--via", type=hostport, metavar="HOST:PORT", help="query through this aggregator"
    )
    g.add_argument(
        "--vaults", metavar="FILE", help="target vaults, one ID@HOST:PORT [CAP] per line"
    )
    g.add_argument("--mode", choices=("strict", "best_effort"), help="completeness policy")
    g.add_argument("--resume", metavar="CURSOR", help="continue from a previous page's cursor")
    g.add_argument("--vault-timeout", type=float, metavar="S", help="per-vault deadline, seconds")


def _parse_target(text: str, where: str) -> tuple[VaultAddress, str | None]:
    from ppn import KeyFormatError, decode_key

    from ._plan import VaultAddress

    parts = text.split()
    spec, cap = parts[0], (parts[1] if len(parts) > 1 else None)
    vault_text, at, addr = spec.partition("@")
    if not at or len(parts) > 2:
        raise error(f"{where}: expected ID@HOST:PORT [CAP], got {text!r}", EXIT_VAULT_LIST)
    try:
        vault = decode_key(vault_text)
        host, port = hostport(addr)
    except (KeyFormatError, argparse.ArgumentTypeError) as exc:
        raise error(f"{where}: {exc}", EXIT_VAULT_LIST) from None
    return VaultAddress(vault=vault, host=host, port=port), cap


def _targets(args: argparse.Namespace) -> tuple[list[VaultAddress], list[str]]:
    from pathlib import Path

    vaults: list[VaultAddress] = []
    caps: list[str] = []
    for i, text in enumerate(args.vault or []):
        va, cap = _parse_target(text, f"--vault #{i + 1}")
        vaults.append(va)
        if cap:
            caps.append(cap)
    if args.vaults:
        try:
            lines = Path(args.vaults).read_text().splitlines()
        except OSError as exc:
            raise error(f"cannot read {args.vaults}: {exc.strerror}", EXIT_VAULT_LIST) from None
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                va, cap = _parse_target(line, f"{args.vaults}:{n}")
                vaults.append(va)
                if cap:
                    caps.append(cap)
    if not vaults:
        raise error("give target vaults with --vault ID@HOST:PORT or --vaults FILE", 2)
    return vaults, caps


def _short(vault: bytes) -> str:
    import base64

    return base64.b64encode(vault).decode()[:10]


def query_via(args: argparse.Namespace) -> int:
    """``ppn query --via``: sign one invocation per vault, run through the aggregator, print."""
    from ._trio_client import AggregationFailed

    request = _request(args)
    failed: AggregationFailed | None = None
    try:
        result = _run(request, args)
    except AggregationFailed as exc:
        failed, result = exc, exc.result
    _print_result(result, as_json=args.json)
    if failed is not None:
        print(f"ppn: strict query failed: {failed}", file=sys.stderr)
        return EXIT_STRICT_FAILED
    if result.done.failed:
        return EXIT_INCOMPLETE
    return 0


@dataclass(frozen=True, kw_only=True)
class _Request:
    """What ``ppn query --via`` sends: checked against the key and capabilities it was given."""

    key: IdentityKey
    caps: list[Capability]
    vaults: list[VaultAddress]
    query: Query
    cursor: AggregateCursor | None
    mode: Mode | None


def _request(args: argparse.Namespace) -> _Request:
    from .._errors import QueryError
    from ._merge import Mode
    from ._plan import AggregateCursor

    vaults, cap_texts = _targets(args)
    key = load_key(args.key)
    given = args.cap if isinstance(args.cap, list) else [args.cap] if args.cap else []
    caps = [load_cap(c) for c in [*cap_texts, *given]]
    caps = [c for c in caps if c.holder == key.public]
    if not caps:
        raise error("no --cap was issued to --key", EXIT_VAULT_LIST)
    covered = {v for c in caps for v in c.scope.vaults}
    missing = [va for va in vaults if va.vault not in covered]
    if missing:
        raise error(
            f"no capability names vault {_short(missing[0].vault)}… ({len(missing)} uncovered)",
            EXIT_VAULT_LIST,
        )
    try:
        query = build_query(args)
        query.encode()
    except QueryError as exc:
        raise fail_code(exc.code, exc.detail) from None
    cursor = None
    if args.resume:
        try:
            cursor = AggregateCursor.from_text(args.resume)
        except ValueError as exc:
            raise error(f"--resume: {exc}", 2) from None
    return _Request(
        key=key,
        caps=caps,
        vaults=vaults,
        query=query,
        cursor=cursor,
        mode=Mode(args.mode) if args.mode else None,
    )


def _run(request: _Request, args: argparse.Namespace) -> AggregateResult:
    """Run the request at the aggregator; its failures become :class:`CommandError` (a strict
    query's :class:`AggregationFailed` is the caller's: it carries the rows to print)."""
    import trio

    from .._errors import LocalProtocolError, RemoteProtocolError
    from ._trio_client import OrchestrationClient

    host, port = args.via
    timeout: float = args.timeout

    async def run() -> AggregateResult:
        with trio.fail_after(timeout + 5):
            async with await OrchestrationClient.connect(host, port) as client:
                return await client.query(
                    request.key,
                    request.caps,
                    request.vaults,
                    request.query,
                    mode=request.mode,
                    deadline=timeout,
                    vault_deadline=args.vault_timeout,
                    cursor=request.cursor,
                )

    try:
        return trio.run(run)
    except trio.TooSlowError:
        raise error(f"no answer from the aggregator at {host}:{port}", EXIT_AGGREGATOR) from None
    except RemoteProtocolError as exc:
        raise error(f"aggregator {host}:{port}: {exc}", EXIT_AGGREGATOR) from None
    except (LocalProtocolError, ValueError) as exc:
        raise error(str(exc), EXIT_VAULT_LIST) from None


def _print_result(result: AggregateResult, *, as_json: bool) -> None:
    rows = _rows(result, as_json=as_json)
    statuses = _statuses(result)
    if as_json:
        cursor = result.cursor
        for row in rows:
            print_json(row)
        for entry in statuses:
            print_json({"vault_status": entry})
        print_json(
            {
                "summary": {
                    "complete": result.complete,
                    "failed": result.done.failed,
                    "rows": len(rows),
                    "mode": result.mode.value,
                    "cursor": cursor.to_text() if cursor else None,
                }
            }
        )
    else:
        _print_tables(result, rows, statuses)


def _rows(result: AggregateResult, *, as_json: bool) -> list[dict[str, Any]]:
    """The merged rows, each led by the vault it came from (none for aggregates)."""
    import base64
    import json

    rows: list[dict[str, Any]] = []
    for index, raw in result.rows:
        row = json.loads(raw)
        if index is not None:
            vault = result.vaults[index].vault
            row = {"vault": base64.b64encode(vault).decode() if as_json else _short(vault), **row}
        rows.append(row)
    return rows


def _statuses(result: AggregateResult) -> list[dict[str, Any]]:
    """One entry per target vault: its status, row count, as_of, and why it is not ok."""
    import base64

    statuses = []
    for s in result.statuses:
        va = result.vaults[s.index]
        entry: dict[str, Any] = {
            "vault": base64.b64encode(va.vault).decode(),
            "address": va.address,
            "status": s.status.value,
            "rows": s.rows,
            "as_of": s.as_of,
        }
        if s.code is not None:
            entry["code"] = s.code.name
        if s.message:
            entry["message"] = s.message
        if s.cursor is not None:
            entry["cursor"] = list(s.cursor)
        statuses.append(entry)
    return statuses


def _print_tables(
    result: AggregateResult, rows: list[dict[str, Any]], statuses: list[dict[str, Any]]
) -> None:
    import base64

    if rows:
        print(table(rows))
        print()
    footer = [
        {
            "vault": _short(base64.b64decode(e["vault"])),
            "address": e["address"],
            "status": e["status"],
            "rows": e["rows"],
            "as_of": e["as_of"],
            "detail": (f"{e['code']}: " if "code" in e else "") + e.get("message", ""),
        }
        for e in statuses
    ]
    print(table(footer))
    ok = sum(1 for e in statuses if e["status"] == "ok")
    if result.complete:
        verdict = "complete"
    elif result.done.failed:
        verdict = f"INCOMPLETE: {result.done.failed} failed"
    else:
        verdict = "more to come (--resume)"
    print(
        f"{len(rows)} row(s) from {len(statuses)} vault(s): {ok} ok, {verdict} ({result.mode.value})"
    )
    cursor = result.cursor
    if cursor is not None:
        what = "retry the failed vaults / continue" if result.done.failed else "more"
        print(f"{what}: --resume {cursor.to_text()}", file=sys.stderr)


def _allow_list(path: str) -> AllowList:
    """``--vaults FILE`` of ``orchestration serve``: the same lines as ``ppn query --vaults``
    (``ID@HOST:PORT [CAP]``, ``#`` comments; a CAP is ignored here)."""
    from pathlib import Path

    from ._trio_server import AllowList

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}", EXIT_VAULT_LIST) from None
    entries = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            va, _ = _parse_target(line, f"{path}:{n}")
            entries.append((va.vault, va.host, va.port))
    if not entries:
        raise error(f"{path} lists no vault", EXIT_VAULT_LIST)
    return AllowList.of(entries)


def _serve(args: argparse.Namespace) -> int:
    import resource
    from functools import partial

    import trio

    from ppn._trio_listener import ListenerGuard, ListenerLimits, default_max_connections
    from ppn.cli._main import trio_run_until_sigterm

    from ._trio_server import RequestLimits, serve_orchestration

    host, port = args.listen
    if bool(args.vaults) == args.any_target:
        raise error(
            "give --vaults FILE (the vaults this aggregator may reach) or --any-target "
            "(any HOST:PORT a client names: this makes the aggregator a port prober)",
            2,
        )
    allowed = _allow_list(args.vaults) if args.vaults else None

    # One connection per target vault: 1,000 vaults need more descriptors than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        # Half the descriptors for clients: the other half is for their requests' vaults.
        listener = ListenerLimits(
            max_connections=args.max_connections or max(1, default_max_connections() // 2),
            per_source=args.per_source,
            first_frame_deadline=args.first_frame_deadline,
            idle_timeout=args.idle_timeout,
        )
        limits = RequestLimits(max_targets=args.max_targets, request_deadline=args.request_deadline)
    except ValueError as exc:
        name = str(exc).split()[0].replace("_", "-")
        raise error(f"--{name} {str(exc).split(' ', 1)[1]}", 2) from None

    guard, observer = ListenerGuard(listener), None
    if args.metrics:
        from ppn.cli._metrics import FanOutMetrics, Metrics

        metrics = Metrics(EXIT_AGGREGATOR)
        metrics.listener("orchestration", guard)
        observer = FanOutMetrics(metrics.registry)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if observer is not None:
                await nursery.start(metrics.serve, args.metrics)
            serve = partial(
                serve_orchestration, allowed=allowed, limits=limits, guard=guard, observer=observer
            )
            listeners = await nursery.start(serve, host, port)
            name = listeners[0].socket.getsockname()
            print(f"orchestration listening on {name[0]}:{name[1]}", flush=True)
            logging.getLogger("psp.aggregation").info(
                "orchestration listening on %s:%d",
                name[0],
                name[1],
                extra={"event": "listening", "address": f"{name[0]}:{name[1]}"},
            )
            from ppn._io_sdnotify import notify_ready  # systemd Type=notify (issue 17)

            notify_ready()

    import logging

    try:
        trio_run_until_sigterm(run, "orchestration")
    except OSError as exc:
        raise error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_AGGREGATOR
        ) from None
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "orchestration",
        help="VM-Orchestration: fan one PSP query out to many vaults, holding nothing",
        description=(
            "The PSP aggregator. It relays invocations that holders signed for each vault, merges "
            "the answers (ordered rows, combined aggregates) with a per-vault status, and forgets: "
            "no files, no keys, nothing kept between requests but idle vault connections."
        ),
    )
    sub = p.add_subparsers(dest="orchestration_command", metavar="ACTION", required=True)
    s = sub.add_parser(
        "serve",
        help=f"serve aggregated queries on TCP (default 127.0.0.1:{AGGREGATOR_PORT})",
        description="Serve aggregated PSP queries (RFC-NOTES §10). Clients use 'ppn query --via'.",
        epilog=(
            "example: ppn orchestration serve --listen 10.8.0.1:9211 --vaults entities.txt\n"
            "Targets are restricted to --vaults (same lines as ppn query --vaults); "
            "--any-target lifts that."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "--listen",
        type=hostport,
        default=("127.0.0.1", AGGREGATOR_PORT),
        metavar="HOST:PORT",
        help=f"address to listen on (default 127.0.0.1:{AGGREGATOR_PORT}; port 0 picks one)",
    )
    # Who may be reached, and what a client may make the aggregator hold (RFC-NOTES §10.7).
    s.add_argument(
        "--vaults",
        metavar="FILE",
        help="the only targets served: ID@HOST:PORT lines (as ppn query --vaults)",
    )
    s.add_argument(
        "--any-target",
        action="store_true",
        help="serve targets at any HOST:PORT (an open port prober: only on a trusted network)",
    )
    s.add_argument(
        "--max-targets",
        type=int,
        default=4096,
        metavar="N",
        help="targets per request (default and most 4096)",
    )
    s.add_argument(
        "--request-deadline",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a request has from its first byte to its last target (default 10)",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="client connections held at once (default: half the open-file limit, at most 2048)",
    )
    s.add_argument(
        "--per-source",
        type=int,
        default=64,
        metavar="N",
        help="client connections from one address (default 64)",
    )
    s.add_argument(
        "--first-frame-deadline",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a new connection has to send a whole request (default 10)",
    )
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a connection may stay silent between requests (default 120)",
    )
    add_metrics_flag(s, AGGREGATOR_METRICS_PORT)
    s.set_defaults(handler=_serve, daemon=True)
