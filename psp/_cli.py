"""``ppn vault …``, ``ppn key new|show``, ``ppn cap …`` and ``ppn query`` (RFC-NOTES §9.7).

Exit statuses (RFC-NOTES §1.4, §9.7): 40 other PSP failure, 41 authorization refused,
42 query invalid or not permitted, 43 vault unavailable (retryable), 44 protocol error,
45 chain verification failed, 46 store missing or refused the write, 47 bad key or capability,
48 bad input record, 55 the store is a replica (appends refused). Heavy imports (trio, sqlite, the cores) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

from ppn.ports import VAULT_METRICS_PORT, VAULT_PORT

from ._cli_common import (
    EXIT_CHAIN_BROKEN,
    EXIT_KEY,
    EXIT_PSP,
    EXIT_RECORD,
    EXIT_REPLICA,
    EXIT_STORE,
    EXIT_UNAVAILABLE,
    build_query,
    code,
    error,
    fail_code,
    hostport,
    load_cap,
    load_holder,
    load_key,
    now,
    parse_pubkey,
    print_json,
    table,
)
from ._cli_replica import add_vault_follow

if TYPE_CHECKING:
    from typing import TypeAlias

    from ._capability import Capability
    from ._scope import Scope

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(text: str) -> int:
    text = text.strip().lower()
    unit = _TTL_UNITS.get(text[-1:])
    number = text[:-1] if unit else text
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(
            "a duration is a positive number of seconds, or like 90m, 12h, 7d"
        )
    return int(number) * (unit or 1)


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    if not items:
        raise argparse.ArgumentTypeError("give at least one name")
    return items


def _open_store(directory: str) -> Any:
    from ._io_store import Store, StoreError

    try:
        return Store.open(directory)
    except StoreError as exc:
        raise error(str(exc), EXIT_STORE) from None


# --- vault -------------------------------------------------------------------------------------


def _vault_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ppn import IdentityKey, encode_key

    from ._io_store import DB_FILE, KEY_FILE, Store, StoreError
    from ._io_vault import write_key_file

    directory = Path(args.store)
    if (directory / DB_FILE).exists() or (directory / KEY_FILE).exists():
        raise error(f"{directory} already holds a vault", EXIT_STORE)
    key = IdentityKey.generate()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_key_file(directory / KEY_FILE, key)
        Store.create(
            directory, name=args.name or directory.name, vault_id=key.public, now=now()
        ).close()
    except (OSError, StoreError) as exc:
        raise error(f"cannot create the vault in {directory}: {exc}", EXIT_STORE) from None
    if args.json:
        print_json(
            {
                "vault_id": encode_key(key.public),
                "name": args.name or directory.name,
                "store": str(directory),
            }
        )
    else:
        print(encode_key(key.public))
    return 0


def _parse_record(text: str) -> Any:
    import json

    try:
        record = json.loads(text)
    except ValueError as exc:
        raise error(f"the record is not JSON: {exc}", EXIT_RECORD) from None
    if not isinstance(record, dict):
        raise error("a record is a JSON object", EXIT_RECORD)
    return record


def _vault_append(args: argparse.Namespace) -> int:
    from ._io_store import ReplicaStoreError, StoreError

    record = _parse_record(sys.stdin.read() if args.record == "-" else args.record)
    store = _open_store(args.store)
    try:
        seq = store.append(args.collection, record, now=now(), supersedes=args.supersedes)
    except ReplicaStoreError as exc:
        raise error(str(exc), EXIT_REPLICA) from None
    except StoreError as exc:
        raise error(str(exc), EXIT_STORE) from None
    if args.json:
        print_json({"seq": seq})
    else:
        print(seq)
    return 0


def _vault_import(args: argparse.Namespace) -> int:
    import time

    from ._io_store import ReplicaStoreError, StoreError

    store = _open_store(args.store)
    start = last_report = time.monotonic()
    done = [0]

    def parse(line: str, line_no: int) -> object:
        try:
            return _parse_record(line)
        except Exception as exc:
            raise error(f"line {line_no}: {getattr(exc, 'message', exc)}", EXIT_RECORD) from None

    def progress(total: int) -> None:
        nonlocal last_report
        done[0] = total
        if time.monotonic() - last_report > 1.0:
            last_report = time.monotonic()
            rate = total / (last_report - start)
            print(f"imported {total} records ({rate:,.0f}/s)…", file=sys.stderr, flush=True)

    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise error(f"cannot read {args.file}: {exc.strerror}", EXIT_RECORD) from None
    with source:
        try:
            report = store.import_lines(
                args.collection,
                source,
                parse=parse,
                batch=args.batch,
                now=now,
                resume=not args.again,
                progress=progress,
            )
        except ReplicaStoreError as exc:
            raise error(str(exc), EXIT_REPLICA) from None
        except StoreError as exc:
            raise error(f"{exc} ({done[0]} records were imported before it)", EXIT_STORE) from None
    if args.json:
        print_json({"imported": report.imported, "skipped": report.skipped, "head": report.head})
    else:
        skipped = f" ({report.skipped} already imported, skipped)" if report.skipped else ""
        print(
            f"imported {report.imported} records into {args.collection}{skipped}; "
            f"head is now {report.head}"
        )
    return 0


def _vault_verify(args: argparse.Namespace) -> int:
    from ._cli_audit import audit_verify_lines, check_audit

    store = _open_store(args.store)
    report = store.verify()
    audit = check_audit(store.file)  # the audit log's chain too (RFC-NOTES §9.4.5)
    ok = report.ok and audit.first_broken is None
    if args.json:
        print_json(
            {
                "ok": ok,
                "entries": report.entries,
                "head": report.head.hex(),
                "first_broken": report.first_broken,
                "reason": report.reason,
                "audit": {
                    "ok": audit.first_broken is None,
                    "entries": audit.entries,
                    "head": audit.head.hex(),
                    "first_broken": audit.first_broken,
                    "reason": audit.reason,
                },
            }
        )
        return 0 if ok else EXIT_CHAIN_BROKEN
    if report.ok:
        print(f"ok: {report.entries} entries, chain head {report.head.hex()}")
    else:
        print(
            f"broken: entry {report.first_broken}: {report.reason} ({report.entries} entries before it verify)"
        )
    print(audit_verify_lines(audit))
    return 0 if ok else EXIT_CHAIN_BROKEN


def _vault_index(args: argparse.Namespace) -> int:
    from ._io_store import StoreError

    store = _open_store(args.store)
    for field in args.fields:
        try:
            created = store.create_index(field)
        except StoreError as exc:
            raise error(str(exc), EXIT_STORE) from None
        print(f"{'indexed' if created else 'already indexed'}: {field}")
    return 0


def _vault_serve(args: argparse.Namespace) -> int:
    from functools import partial

    import trio

    from ppn import KeyFormatError, encode_key
    from ppn._trio_listener import ListenerGuard, ListenerLimits, default_max_connections
    from ppn.cli._main import trio_run_until_sigterm

    from ._io_store import StoreError
    from ._io_vault import Vault
    from ._trio import serve_vault

    host, port = args.listen
    trusted = [parse_pubkey(k) for k in args.trust]
    try:
        limits = ListenerLimits(
            max_connections=args.max_connections or default_max_connections(),
            per_source=args.per_source,
            first_frame_deadline=args.first_frame_deadline,
            idle_timeout=args.idle_timeout,
        )
    except ValueError as exc:
        raise error(f"--{str(exc).split()[0].replace('_', '-')} must be positive", 2) from None
    try:
        vault = Vault.open(args.store, trusted_roots=trusted)
    except StoreError as exc:
        raise error(str(exc), EXIT_STORE) from None
    except KeyFormatError as exc:
        raise error(str(exc), EXIT_KEY) from None

    guard, observer = ListenerGuard(limits), None
    if args.metrics:
        from ppn.cli._metrics import Metrics, VaultMetrics

        metrics = Metrics(EXIT_UNAVAILABLE)
        metrics.listener("vault", guard)
        observer = VaultMetrics(metrics.registry)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if observer is not None:
                await nursery.start(metrics.serve, args.metrics)
            serve = partial(serve_vault, guard=guard, observer=observer)
            listeners = await nursery.start(serve, vault, host, port)
            for listener in listeners:
                h, p = listener.socket.getsockname()[:2]
                print(
                    f"vault {vault.store.name} ({encode_key(vault.vault_id)}) listening on {h}:{p}",
                    flush=True,
                )
                log.info(
                    "vault %s listening on %s:%d",
                    vault.store.name,
                    h,
                    p,
                    extra={"event": "listening", "address": f"{h}:{p}"},
                )
            from ppn._io_sdnotify import notify_ready  # systemd Type=notify (issue 17)

            notify_ready()

    import logging

    log = logging.getLogger("psp.vault")
    try:
        trio_run_until_sigterm(run, f"vault {vault.store.name}")
    except OSError as exc:
        raise error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_UNAVAILABLE
        ) from None
    finally:
        # Also on SIGTERM (exit 0) and Ctrl-C (130): audit entries and denial counts not yet
        # committed reach the store.
        vault.close()
    return 0


# --- keys and capabilities ---------------------------------------------------------------------


def _key_new(args: argparse.Namespace) -> int:
    from ppn import IdentityKey

    from ._io_vault import write_key_file

    key = IdentityKey.generate()
    try:
        write_key_file(args.file, key)
    except FileExistsError:
        raise error(f"{args.file} exists; refusing to overwrite a key", EXIT_KEY) from None
    except OSError as exc:
        raise error(f"cannot write {args.file}: {exc.strerror}", EXIT_KEY) from None
    if args.json:
        print_json({"public": key.public_b64, "file": args.file})
    else:
        print(key.public_b64)
    return 0


def _key_show(args: argparse.Namespace) -> int:
    # The public half is what 'ppn cap mint/delegate --to' takes; a holder gives it out, so
    # printing it from the key file saves keeping a second file that can fall out of step.
    key = load_key(args.file)
    if args.json:
        print_json({"public": key.public_b64, "file": args.file})
    else:
        print(key.public_b64)
    return 0


def _scope_from_args(
    args: argparse.Namespace, parent: Scope | None, default_vaults: tuple[bytes, ...]
) -> Scope:
    from ._scope import MAX_TIME, Scope

    base = parent or Scope(vaults=default_vaults, rows=10_000)
    vaults = (
        tuple(sorted({parse_pubkey(v) for v in args.vault_id})) if args.vault_id else base.vaults
    )
    window = (
        args.since if args.since is not None else base.time[0],
        args.until if args.until is not None else base.time[1],
    )
    if not 0 <= window[0] <= window[1] <= MAX_TIME:
        raise error("--since must not be after --until", 2)
    ops = args.ops or base.ops
    from ._scope import OPERATIONS

    if not set(ops) <= set(OPERATIONS):
        raise error(f"--ops takes {', '.join(OPERATIONS)}", 2)
    scope = Scope(
        vaults=vaults,
        collections=args.collections or base.collections,
        fields=args.fields or base.fields,
        ops=tuple(sorted(ops)),
        time=window,
        rows=args.rows if args.rows is not None else base.rows,
    )
    from ._errors import AuthorizationError

    try:
        scope.validate()
    except AuthorizationError:
        raise error(
            "the scope names an invalid collection or field, or a row limit out of range", 2
        ) from None
    if parent is not None and not scope.within(parent):
        raise fail_code(
            code("SCOPE_WIDENED"), "a delegation must be within its parent in every dimension"
        )
    return scope


def _emit_cap(cap: Capability, args: argparse.Namespace) -> None:
    text = cap.to_text()
    if args.out:
        import os

        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    if args.json:
        print_json({"capability": text, "link_id": cap.leaf.id.hex(), "expires": cap.leaf.expires})
    elif not args.out:
        print(text)
    else:
        print(f"wrote {args.out} (link {cap.leaf.id.hex()[:16]}…, expires {cap.leaf.expires})")


def _cap_mint(args: argparse.Namespace) -> int:
    import secrets
    from pathlib import Path

    from ._capability import mint
    from ._io_store import KEY_FILE

    store = _open_store(args.store)
    vault_key = load_key(str(Path(args.store) / KEY_FILE))
    scope = _scope_from_args(args, None, (store.vault_id,))
    issued = now()
    cap = mint(
        vault_key,
        audience=parse_pubkey(args.to),
        scope=scope,
        not_before=issued - 60,
        expires=issued + args.ttl,
        nonce=secrets.token_bytes(16),
    )
    _emit_cap(cap, args)
    return 0


def _cap_delegate(args: argparse.Namespace) -> int:
    import secrets

    from ._capability import delegate
    from ._errors import LocalProtocolError

    parent = load_cap(args.cap)
    key = load_key(args.key)
    if key.public != parent.holder:
        raise fail_code(
            code("HOLDER_MISMATCH"), "--key is not the key this capability was issued to"
        )
    scope = _scope_from_args(args, parent.scope, parent.scope.vaults)
    issued = now()
    try:
        cap = delegate(
            parent,
            key,
            audience=parse_pubkey(args.to),
            scope=scope,
            not_before=issued - 60,
            expires=issued + args.ttl,
            nonce=secrets.token_bytes(16),
        )
    except LocalProtocolError as exc:
        raise fail_code(
            code("SCOPE_WIDENED") if "within" in str(exc) else code("TOO_DEEP"), str(exc)
        ) from None
    _emit_cap(cap, args)
    return 0


def _describe(cap: Capability) -> list[dict[str, Any]]:
    from ppn import encode_key

    out = []
    for link in cap.links:
        s = link.scope
        out.append(
            {
                "link_id": link.id.hex(),
                "issuer": encode_key(link.issuer),
                "audience": encode_key(link.audience),
                "not_before": link.not_before,
                "expires": link.expires,
                "vaults": [encode_key(v) for v in s.vaults],
                "collections": list(s.collections),
                "fields": list(s.fields),
                "ops": list(s.ops),
                "time": list(s.time),
                "rows": s.rows,
            }
        )
    return out


def _cap_inspect(args: argparse.Namespace) -> int:
    import datetime

    cap = load_cap(args.cap)
    links = _describe(cap)
    if args.json:
        print_json({"holder": links[-1]["audience"], "links": links})
        return 0
    print(f"capability with {len(links)} link(s); holder {links[-1]['audience']}")
    for i, link in enumerate(links):
        exp = datetime.datetime.fromtimestamp(link["expires"], datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%SZ"
        )
        print(
            f"[{i}] {link['link_id'][:16]}…  {link['issuer']} -> {link['audience']}  expires {exp}"
        )
        print(f"    vaults {', '.join(link['vaults'])}")
        print(
            f"    collections {','.join(link['collections'])}  fields {','.join(link['fields'])}  ops {','.join(link['ops'])}  rows {link['rows']}  time [{link['time'][0]}, {link['time'][1]})"
        )
    print("(signatures are checked by the vault that receives an invocation; inspect only decodes)")
    return 0


def _cap_revoke(args: argparse.Namespace) -> int:
    cap = load_cap(args.cap)
    if not -len(cap.links) <= args.link < len(cap.links):
        raise error(f"--link must index one of the {len(cap.links)} links", 2)
    link = cap.links[args.link]
    from ._io_store import StoreError

    store = _open_store(args.store)
    try:
        fresh = store.revoke(link.id, now=now())
    except StoreError as exc:
        raise error(str(exc), EXIT_STORE) from None
    if args.json:
        print_json({"revoked": link.id.hex(), "new": fresh})
    else:
        print(f"{'revoked' if fresh else 'already revoked'}: link {link.id.hex()}")
    return 0


# --- query -------------------------------------------------------------------------------------


def _query(args: argparse.Namespace) -> int:
    import json

    import trio

    from ._errors import LocalProtocolError, QueryError, RemoteProtocolError, VaultError
    from ._trio import VaultClient

    if args.via is not None:  # many vaults through an aggregator (RFC-NOTES §10)
        from .aggregation._cli import query_via

        return query_via(args)
    if not args.cap or len(args.cap) != 1 or len(args.vault) != 1:
        raise error("a direct query takes one --cap and one --vault (for many, use --via)", 2)
    key, cap = load_holder(args.key, args.cap[0])
    try:
        query = build_query(args)
        query.encode()
    except QueryError as exc:
        raise fail_code(exc.code, exc.detail) from None
    try:
        host, port = hostport(args.vault[0])
    except argparse.ArgumentTypeError as exc:
        raise error(f"--vault: {exc}", 2) from None

    async def run() -> Any:
        with trio.fail_after(args.timeout):
            async with await VaultClient.connect(host, port) as client:
                return await client.query(key, cap, query)

    try:
        result = trio.run(run)
    except VaultError as exc:
        raise fail_code(exc.code, exc.detail) from None
    except trio.TooSlowError:
        raise fail_code(
            code("DEADLINE"), f"no answer from {host}:{port} within {args.timeout:g} s"
        ) from None
    except RemoteProtocolError as exc:
        raise fail_code(exc.code, f"the vault at {host}:{port} broke the protocol: {exc}") from None
    except LocalProtocolError as exc:
        raise error(str(exc), EXIT_PSP) from None
    rows = [json.loads(r) for r in result.rows]
    if args.json:
        for row in rows:
            print_json(row)
    elif rows:
        print(table(rows))
    cursor = result.cursor
    more = f"; more: --as-of {cursor.as_of} --offset {cursor.offset}" if cursor else ""
    replica = result.header.replica  # RFC-NOTES §9.5.1: the answer came from a replica
    if replica is not None:
        more += (
            f"; from a replica at entry {replica.as_of} (primary at {replica.primary_head} "
            f"when last heard from, {max(0, now() - replica.synced)} s ago)"
        )
    print(f"{len(rows)} row(s) as of entry {result.header.as_of}{more}", file=sys.stderr)
    return 0


# --- registration ------------------------------------------------------------------------------


def _add_scope_options(p: argparse.ArgumentParser, *, delegating: bool) -> None:
    default = "the parent's" if delegating else "everything"
    g = p.add_argument_group(f"scope (each option defaults to {default})")
    g.add_argument(
        "--vault-id",
        action="append",
        default=[],
        metavar="KEY",
        help="a vault the capability is good at (repeat; default: "
        + ("the parent's vaults)" if delegating else "this vault)"),
    )
    g.add_argument(
        "--collections", type=_csv, metavar="C,...", help="collections, exact names ('*' = any)"
    )
    g.add_argument(
        "--fields",
        type=_csv,
        metavar="F,...",
        help="record fields that may be read, filtered, ordered or grouped on ('*' = any)",
    )
    g.add_argument("--ops", type=_csv, metavar="OP,...", help="of read, stream, count, aggregate")
    g.add_argument(
        "--rows",
        type=int,
        metavar="N",
        help="most rows one query may return" + ("" if delegating else " (default 10000)"),
    )
    g.add_argument(
        "--since",
        type=int,
        metavar="T",
        help="record-time window start, Unix seconds (records appended at or after T)",
    )
    g.add_argument(
        "--until",
        type=int,
        metavar="T",
        help="record-time window end, Unix seconds (records appended before T)",
    )
    g.add_argument(
        "--ttl",
        type=_ttl,
        default=86400,
        metavar="T",
        help="lifetime: seconds, or with a unit (90m, 12h, 7d); default 1d"
        + (", never beyond the parent's" if delegating else ""),
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the capability to FILE (mode 0600) instead of printing it",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers: Subparsers) -> None:
    """Add this family's commands to ``ppn``. Handlers are set with ``set_defaults(handler=...)``.

    ``ppn orchestration`` is its own family (:mod:`psp.aggregation._cli`)."""
    _register_vault(subparsers)
    _register_key(subparsers)
    _register_cap(subparsers)
    _register_query(subparsers)


def _register_vault(subparsers: Subparsers) -> None:
    vault = subparsers.add_parser(
        "vault",
        help="create, fill, serve and verify a Totebox vault (PSP)",
        description=f"A vault is one entity's append-only (WORM) record store with its own Ed25519 key, served over PSP (TCP {VAULT_PORT}).",
    )
    vsub = vault.add_subparsers(dest="vault_command", metavar="ACTION", required=True)
    _add_vault_init(vsub)
    _add_vault_append(vsub)
    _add_vault_import(vsub)
    _add_vault_index(vsub)
    _add_vault_serve(vsub)
    _add_vault_verify(vsub)
    add_vault_follow(vsub)  # psp/_cli_replica.py
    from ._cli_audit import add_vault_audit

    add_vault_audit(vsub)  # ppn vault audit (RFC-NOTES §9.4.5)
    from ._cli_archive import add_vault_export, add_vault_restore

    add_vault_export(vsub)  # ppn vault export|restore (RFC-NOTES §9.4.6)
    add_vault_restore(vsub)


def _add_vault_init(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "init",
        help="create a store and the vault key; print the vault id",
        description="Create DIR/vault.sqlite and DIR/vault.key (the vault's Ed25519 key, mode 0600). Prints the vault id: the public key, base64.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--name", help="a label for the vault (default: the directory name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_init)


def _add_vault_append(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "append",
        help="append one JSON record; print its sequence number",
        description="Append a record (a JSON object) to a collection. Nothing is ever updated or deleted: to correct a record, append its replacement with --supersedes SEQ.",
        epilog='example: ppn vault append --store v --collection people \'{"name": "Ann", "age": 41}\'',
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--collection", required=True, metavar="C")
    p.add_argument("--supersedes", type=int, metavar="SEQ", help="the entry this record replaces")
    p.add_argument("record", metavar="JSON", help="the record, or - to read it from stdin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_append)


def _add_vault_import(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "import",
        help="append every line of a JSON-lines file",
        description="Append records from a JSON-lines file in batched transactions (progress on stderr). Resumable: each transaction also records a checkpoint (a hash of the collection and every line so far), so rerunning an import that was killed, or that completed, skips the lines already imported and never appends a record twice (RFC-NOTES §9.4.4).",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--collection", required=True, metavar="C")
    p.add_argument("--batch", type=int, default=5000, help="records per transaction (default 5000)")
    p.add_argument(
        "--again",
        action="store_true",
        help="append lines even if this collection already holds an import of the same lines",
    )
    p.add_argument("file", metavar="FILE.jsonl", help="the file, or - for stdin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_import)


def _add_vault_index(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "index",
        help="index record fields that queries filter or order on",
        description="Create an expression index on each FIELD (equality, 'in', range and order on it then use the index instead of scanning the collection). Indexes change no entry and can be added at any time, also while the vault is served.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("fields", nargs="+", metavar="FIELD")
    p.set_defaults(handler=_vault_index)


def _add_vault_serve(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "serve",
        help=f"answer PSP queries on TCP (default 127.0.0.1:{VAULT_PORT})",
        description="Serve the vault: authorize each invocation against the vault key (and --trust roots), answer with rows.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument(
        "--listen",
        type=hostport,
        default=("127.0.0.1", VAULT_PORT),
        metavar="HOST:PORT",
        help=f"address to listen on (default 127.0.0.1:{VAULT_PORT}; port 0 picks one)",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="also accept chains rooted in this key (repeat)",
    )
    # Connection limits (RFC-NOTES §9.8); the defaults come from ppn._trio_listener.
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections held at once (default: the open-file limit less 64, at most 4096)",
    )
    p.add_argument(
        "--per-source",
        type=int,
        default=64,
        metavar="N",
        help="connections from one address (default 64)",
    )
    p.add_argument(
        "--first-frame-deadline",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a connection has to present a valid invocation (default 10)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds an admitted connection may stay silent (default 120)",
    )
    from ppn.cli._main import add_metrics_flag

    add_metrics_flag(p, VAULT_METRICS_PORT)
    p.set_defaults(handler=_vault_serve, daemon=True)


def _add_vault_verify(vsub: Subparsers) -> None:
    p = vsub.add_parser(
        "verify",
        help="check the data and audit hash chains; report the first broken link",
        description=f"Recompute every entry's hash-chain link, and every audit entry's. Exit 0 when both are intact, {EXIT_CHAIN_BROKEN} at the first broken entry of either.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_verify)


def _register_key(subparsers: Subparsers) -> None:
    key = subparsers.add_parser("key", help="holder keys for PSP capabilities")
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    p = ksub.add_parser(
        "new",
        help="create an Ed25519 holder key; print its public key",
        description="Write a new Ed25519 key to FILE (mode 0600, never overwritten) and print its public key, which is what 'ppn cap mint/delegate --to' takes.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_key_new)
    p = ksub.add_parser(
        "show",
        help="print the public key of a key file",
        description="Print the public key (base64) of an Ed25519 key file: a holder key from 'ppn key new', a vault's DIR/vault.key, or a 'ppn fleet keygen' identity. The private part is never printed.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_key_show)


def _register_cap(subparsers: Subparsers) -> None:
    cap = subparsers.add_parser(
        "cap",
        help="mint, delegate, inspect and revoke PSP capabilities",
        description="Capabilities are signed, offline-delegable grants to a holder key. A CAP argument is the capability text (pspcap1.…) or a file containing it.",
    )
    csub = cap.add_subparsers(dest="cap_command", metavar="ACTION", required=True)
    _add_cap_mint(csub)
    _add_cap_delegate(csub)
    _add_cap_inspect(csub)
    _add_cap_revoke(csub)


def _add_cap_mint(csub: Subparsers) -> None:
    p = csub.add_parser(
        "mint",
        help="issue a capability from a vault's key",
        description="Issue a root capability signed by the vault key in --store, to the holder key --to.",
        epilog="example: ppn cap mint --store v --to $(cat alice.pub) --collections people --rows 1000 --ttl 7d --out alice.cap",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--to", required=True, metavar="PUBKEY", help="the holder's public key")
    _add_scope_options(p, delegating=False)
    p.set_defaults(handler=_cap_mint)


def _add_cap_delegate(csub: Subparsers) -> None:
    p = csub.add_parser(
        "delegate",
        help="delegate a narrower capability, offline",
        description="Sign a narrower capability for --to with the holder key of CAP. Unset scope options keep the parent's value; nothing may be wider than the parent.",
        epilog="example: ppn cap delegate alice.cap --key alice.key --to $(cat bob.pub) --fields name,age --ops read,count --rows 50 --ttl 1h --out bob.cap",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cap", metavar="CAP")
    p.add_argument("--key", required=True, metavar="FILE", help="the key CAP was issued to")
    p.add_argument("--to", required=True, metavar="PUBKEY", help="the delegate's public key")
    _add_scope_options(p, delegating=True)
    p.set_defaults(handler=_cap_delegate)


def _add_cap_inspect(csub: Subparsers) -> None:
    p = csub.add_parser(
        "inspect",
        help="show a capability's links and scopes",
        description="Decode a capability and show each link (no signature check: vaults do that).",
    )
    p.add_argument("cap", metavar="CAP")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cap_inspect)


def _add_cap_revoke(csub: Subparsers) -> None:
    p = csub.add_parser(
        "revoke",
        help="revoke a capability link at a vault",
        description="Add a link id to the vault's revocation set (append-only); every chain containing it is refused from the next request on, also by a running 'ppn vault serve'.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("cap", metavar="CAP")
    p.add_argument(
        "--link", type=int, default=-1, help="which link: 0 is the root, -1 (default) the last"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cap_revoke)


def _register_query(subparsers: Subparsers) -> None:
    from .aggregation._cli import add_via_options

    p = subparsers.add_parser(
        "query",
        help="query a vault with a capability",
        description="Sign an invocation of --cap with --key for one query and run it at --vault. Rows print as a table, or as JSON lines with --json; a summary line (row count, as_of, resume cursor) goes to stderr.",
        epilog=(
            "--where forms: F=V  F>=V  F<V  F^=PREFIX  'F in A,B,C'  (V is JSON: 41, true, null, \"41\"; bare words are text)\n"
            "  a malformed filter (such as age=>3) exits 2 with the forms and a hint\n"
            "examples:\n"
            "  ppn query --key bob.key --cap bob.cap --vault 127.0.0.1:9210 --collection people --where 'age>=40' --select name,age\n"
            "  ppn query ... --collection ledger --sum amount --group-by account --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--key", required=True, metavar="FILE", help="the holder key the capability was issued to"
    )
    p.add_argument(
        "--cap",
        action="append",
        metavar="CAP",
        help="the capability (text or a file holding it); repeat with --via",
    )
    p.add_argument(
        "--vault",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help=f"the vault's PSP address (vaults listen on {VAULT_PORT} by default); with --via: ID@HOST:PORT, repeat",
    )
    p.add_argument("--collection", required=True, metavar="C", help="the collection to query")
    _add_query_shape_options(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up after S seconds (default 30)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.set_defaults(handler=_query)
    add_via_options(p)  # --via, --vaults, --mode, --resume (RFC-NOTES §10.6)
    _accept_dash_values(p)


# '-' and a field name: what '--order -age' gives.
_DASH_NAME = re.compile(r"-[A-Za-z_][A-Za-z0-9_]*")


def _accept_dash_values(p: argparse.ArgumentParser) -> None:
    """Let an option's value be '-' and a name: ``--order -age`` (descending by age).

    argparse takes any such word for an unknown option and refused ``--order -age``; only
    ``--order=-age`` worked (issue 20). This parser has no single-dash option but ``-h``, so a
    '-NAME' word that is not exactly an option string is a value. (argparse would otherwise also
    read '-height' as ``-h`` with the argument 'eight'.) A mistyped option such as ``-json`` is
    still refused, as an unrecognized argument.
    """
    parse_optional = p._parse_optional

    def parse(arg: str) -> Any:
        if _DASH_NAME.fullmatch(arg) and arg not in p._option_string_actions:
            return None  # argparse's "not an option": a value or a positional
        return parse_optional(arg)

    p._parse_optional = parse  # type: ignore[method-assign,assignment]


def _add_query_shape_options(p: argparse.ArgumentParser) -> None:
    """The options :func:`build_query` reads: filters, fields, order, aggregate, paging."""
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="EXPR",
        help="a filter (repeat: all must hold); forms below",
    )
    p.add_argument(
        "--select",
        type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
        metavar="F,...",
        help="fields to return (default: all the capability allows)",
    )
    p.add_argument("--order", metavar="[-]F", help="order by field F (prefix - for descending)")
    agg = p.add_mutually_exclusive_group()
    agg.add_argument("--count", action="store_true", help="count matching records")
    agg.add_argument("--sum", metavar="F", help="sum of field F")
    agg.add_argument("--min", metavar="F", help="minimum of field F")
    agg.add_argument("--max", metavar="F", help="maximum of field F")
    p.add_argument(
        "--group-by", metavar="F", help="aggregate per value of F (count unless --sum/--min/--max)"
    )
    p.add_argument(
        "--limit", type=int, metavar="N", help="most rows (default: the capability's row limit)"
    )
    p.add_argument(
        "--as-of", type=int, metavar="SEQ", help="pin to this entry (to repeat or resume a query)"
    )
    p.add_argument("--offset", type=int, metavar="K", help="skip K rows (resume)")
