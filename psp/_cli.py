"""``ppn vault …``, ``ppn key new``, ``ppn cap …`` and ``ppn query`` (RFC-NOTES §9.7).

Exit statuses (RFC-NOTES §1.4, §9.7): 40 other PSP failure, 41 authorization refused,
42 query invalid or not permitted, 43 vault unavailable (retryable), 44 protocol error,
45 chain verification failed, 46 store missing or refused the write, 47 bad key or capability,
48 bad input record. Heavy imports (trio, sqlite, the cores) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ppn import IdentityKey

    from ._capability import Capability
    from ._errors import ErrorCode
    from ._scope import Scope

EXIT_PSP = 40
EXIT_DENIED = 41
EXIT_QUERY = 42
EXIT_UNAVAILABLE = 43
EXIT_PROTOCOL = 44
EXIT_CHAIN_BROKEN = 45
EXIT_STORE = 46
EXIT_KEY = 47
EXIT_RECORD = 48

_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _exit_for(code: ErrorCode) -> int:
    if code.retryable:
        return EXIT_UNAVAILABLE
    if code.value < 140:
        return EXIT_DENIED
    if code.value < 150:
        return EXIT_QUERY
    return EXIT_PROTOCOL


def _fail_code(code: ErrorCode, detail: str = "") -> Exception:
    from ppn.cli import CommandError

    sentence = detail or code.sentence
    return CommandError(f"{code.name} ({int(code)}): {sentence}", _exit_for(code))


def _error(message: str, status: int) -> Exception:
    from ppn.cli import CommandError

    return CommandError(message, status)


def _now() -> int:
    import time

    return int(time.time())


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


def _hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _load_key(path: str) -> IdentityKey:
    from ppn import KeyFormatError

    from ._io_vault import read_key_file

    try:
        return read_key_file(path)
    except KeyFormatError as exc:
        raise _error(str(exc), EXIT_KEY) from None


def _load_cap(text: str) -> Capability:
    from pathlib import Path

    from ._capability import TEXT_PREFIX, Capability
    from ._errors import AuthorizationError

    if not text.startswith(TEXT_PREFIX):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise _error(f"cannot read capability file {text}: {exc.strerror}", EXIT_KEY) from None
    try:
        return Capability.from_text(text)
    except AuthorizationError as exc:
        raise _error(f"not a valid capability: {exc.code.sentence}", EXIT_KEY) from None


def _parse_pubkey(text: str) -> bytes:
    from ppn import KeyFormatError, decode_key

    from ._ed25519 import public_key_ok

    try:
        raw = decode_key(text)
    except KeyFormatError as exc:
        raise _error(f"bad public key {text!r}: {exc}", EXIT_KEY) from None
    if not public_key_ok(raw):
        raise _error(f"{text} is not a usable Ed25519 public key", EXIT_KEY)
    return raw


def _open_store(directory: str) -> Any:
    from ._io_store import Store, StoreError

    try:
        return Store.open(directory)
    except StoreError as exc:
        raise _error(str(exc), EXIT_STORE) from None


def _print_json(value: Any) -> None:
    import json

    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


# --- vault -------------------------------------------------------------------------------------


def _vault_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ppn import IdentityKey, encode_key

    from ._io_store import DB_FILE, KEY_FILE, Store, StoreError
    from ._io_vault import write_key_file

    directory = Path(args.store)
    if (directory / DB_FILE).exists() or (directory / KEY_FILE).exists():
        raise _error(f"{directory} already holds a vault", EXIT_STORE)
    key = IdentityKey.generate()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_key_file(directory / KEY_FILE, key)
        Store.create(
            directory, name=args.name or directory.name, vault_id=key.public, now=_now()
        ).close()
    except (OSError, StoreError) as exc:
        raise _error(f"cannot create the vault in {directory}: {exc}", EXIT_STORE) from None
    if args.json:
        _print_json(
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
        raise _error(f"the record is not JSON: {exc}", EXIT_RECORD) from None
    if not isinstance(record, dict):
        raise _error("a record is a JSON object", EXIT_RECORD)
    return record


def _vault_append(args: argparse.Namespace) -> int:
    from ._io_store import StoreError

    record = _parse_record(sys.stdin.read() if args.record == "-" else args.record)
    store = _open_store(args.store)
    try:
        seq = store.append(args.collection, record, now=_now(), supersedes=args.supersedes)
    except StoreError as exc:
        raise _error(str(exc), EXIT_STORE) from None
    if args.json:
        _print_json({"seq": seq})
    else:
        print(seq)
    return 0


def _vault_import(args: argparse.Namespace) -> int:
    import time

    from ._io_store import StoreError

    store = _open_store(args.store)
    start = last_report = time.monotonic()
    total, batch, line_no = 0, [], 0
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise _error(f"cannot read {args.file}: {exc.strerror}", EXIT_RECORD) from None
    with source:
        try:
            for line_no, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    batch.append(_parse_record(line))
                except Exception as exc:
                    raise _error(
                        f"line {line_no}: {getattr(exc, 'message', exc)}", EXIT_RECORD
                    ) from None
                if len(batch) >= args.batch:
                    store.append_many(args.collection, batch, now=_now())
                    total += len(batch)
                    batch = []
                    if time.monotonic() - last_report > 1.0:
                        last_report = time.monotonic()
                        rate = total / (last_report - start)
                        print(
                            f"imported {total} records ({rate:,.0f}/s)…",
                            file=sys.stderr,
                            flush=True,
                        )
            if batch:
                store.append_many(args.collection, batch, now=_now())
                total += len(batch)
        except StoreError as exc:
            raise _error(
                f"line {line_no}: {exc} ({total} records were imported before it)", EXIT_STORE
            ) from None
    head = store.head()[0]
    if args.json:
        _print_json({"imported": total, "head": head})
    else:
        print(f"imported {total} records into {args.collection}; head is now {head}")
    return 0


def _vault_verify(args: argparse.Namespace) -> int:
    store = _open_store(args.store)
    report = store.verify()
    if args.json:
        _print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "head": report.head.hex(),
                "first_broken": report.first_broken,
                "reason": report.reason,
            }
        )
    elif report.ok:
        print(f"ok: {report.entries} entries, chain head {report.head.hex()}")
    else:
        print(
            f"broken: entry {report.first_broken}: {report.reason} ({report.entries} entries before it verify)"
        )
    return 0 if report.ok else EXIT_CHAIN_BROKEN


def _vault_index(args: argparse.Namespace) -> int:
    from ._io_store import StoreError

    store = _open_store(args.store)
    for field in args.fields:
        try:
            created = store.create_index(field)
        except StoreError as exc:
            raise _error(str(exc), EXIT_STORE) from None
        print(f"{'indexed' if created else 'already indexed'}: {field}")
    return 0


def _vault_serve(args: argparse.Namespace) -> int:
    import trio

    from ppn import KeyFormatError, encode_key

    from ._io_store import StoreError
    from ._io_vault import Vault
    from ._trio import serve_vault

    host, port = args.listen
    trusted = [_parse_pubkey(k) for k in args.trust]
    try:
        vault = Vault.open(args.store, trusted_roots=trusted)
    except StoreError as exc:
        raise _error(str(exc), EXIT_STORE) from None
    except KeyFormatError as exc:
        raise _error(str(exc), EXIT_KEY) from None

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_vault, vault, host, port)
            for listener in listeners:
                h, p = listener.socket.getsockname()[:2]
                print(
                    f"vault {vault.store.name} ({encode_key(vault.vault_id)}) listening on {h}:{p}",
                    flush=True,
                )

    try:
        trio.run(run)
    except OSError as exc:
        raise _error(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_UNAVAILABLE
        ) from None
    return 0


# --- keys and capabilities ---------------------------------------------------------------------


def _key_new(args: argparse.Namespace) -> int:
    from ppn import IdentityKey

    from ._io_vault import write_key_file

    key = IdentityKey.generate()
    try:
        write_key_file(args.file, key)
    except FileExistsError:
        raise _error(f"{args.file} exists; refusing to overwrite a key", EXIT_KEY) from None
    except OSError as exc:
        raise _error(f"cannot write {args.file}: {exc.strerror}", EXIT_KEY) from None
    if args.json:
        _print_json({"public": key.public_b64, "file": args.file})
    else:
        print(key.public_b64)
    return 0


def _scope_from_args(
    args: argparse.Namespace, parent: Scope | None, default_vaults: tuple[bytes, ...]
) -> Scope:
    from ._scope import MAX_TIME, Scope

    base = parent or Scope(vaults=default_vaults, rows=10_000)
    vaults = (
        tuple(sorted({_parse_pubkey(v) for v in args.vault_id})) if args.vault_id else base.vaults
    )
    window = (
        args.since if args.since is not None else base.time[0],
        args.until if args.until is not None else base.time[1],
    )
    if not 0 <= window[0] <= window[1] <= MAX_TIME:
        raise _error("--since must not be after --until", 2)
    ops = args.ops or base.ops
    from ._scope import OPERATIONS

    if not set(ops) <= set(OPERATIONS):
        raise _error(f"--ops takes {', '.join(OPERATIONS)}", 2)
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
        raise _error(
            "the scope names an invalid collection or field, or a row limit out of range", 2
        ) from None
    if parent is not None and not scope.within(parent):
        raise _fail_code(
            _code("SCOPE_WIDENED"), "a delegation must be within its parent in every dimension"
        )
    return scope


def _code(name: str) -> ErrorCode:
    from ._errors import ErrorCode

    return ErrorCode[name]


def _emit_cap(cap: Capability, args: argparse.Namespace) -> None:
    text = cap.to_text()
    if args.out:
        import os

        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    if args.json:
        _print_json({"capability": text, "link_id": cap.leaf.id.hex(), "expires": cap.leaf.expires})
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
    vault_key = _load_key(str(Path(args.store) / KEY_FILE))
    scope = _scope_from_args(args, None, (store.vault_id,))
    now = _now()
    cap = mint(
        vault_key,
        audience=_parse_pubkey(args.to),
        scope=scope,
        not_before=now - 60,
        expires=now + args.ttl,
        nonce=secrets.token_bytes(16),
    )
    _emit_cap(cap, args)
    return 0


def _cap_delegate(args: argparse.Namespace) -> int:
    import secrets

    from ._capability import delegate
    from ._errors import LocalProtocolError

    parent = _load_cap(args.cap)
    key = _load_key(args.key)
    if key.public != parent.holder:
        raise _fail_code(
            _code("HOLDER_MISMATCH"), "--key is not the key this capability was issued to"
        )
    scope = _scope_from_args(args, parent.scope, parent.scope.vaults)
    now = _now()
    try:
        cap = delegate(
            parent,
            key,
            audience=_parse_pubkey(args.to),
            scope=scope,
            not_before=now - 60,
            expires=now + args.ttl,
            nonce=secrets.token_bytes(16),
        )
    except LocalProtocolError as exc:
        raise _fail_code(
            _code("SCOPE_WIDENED") if "within" in str(exc) else _code("TOO_DEEP"), str(exc)
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

    cap = _load_cap(args.cap)
    links = _describe(cap)
    if args.json:
        _print_json({"holder": links[-1]["audience"], "links": links})
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
    cap = _load_cap(args.cap)
    if not -len(cap.links) <= args.link < len(cap.links):
        raise _error(f"--link must index one of the {len(cap.links)} links", 2)
    link = cap.links[args.link]
    store = _open_store(args.store)
    fresh = store.revoke(link.id, now=_now())
    if args.json:
        _print_json({"revoked": link.id.hex(), "new": fresh})
    else:
        print(f"{'revoked' if fresh else 'already revoked'}: link {link.id.hex()}")
    return 0


# --- query -------------------------------------------------------------------------------------

_OPS = ((">=", "ge"), ("<", "lt"), ("^=", "prefix"), ("=", "eq"))


def _value(text: str) -> Any:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float | list | dict):
        raise _error(f"filter value {text!r}: only text, integers, true, false and null", 2)
    return value


def _where(expr: str) -> Any:
    from ._query import Filter

    if " in " in expr:
        field, _, values = expr.partition(" in ")
        return Filter(
            field=field.strip(), op="in", args=tuple(_value(v.strip()) for v in values.split(","))
        )
    for token, op in _OPS:
        field, sep, value = expr.partition(token)
        if sep and field.strip():
            f = field.strip()
            if op == "eq":
                return Filter(field=f, op="eq", args=(_value(value),))
            if op == "prefix":
                return Filter(field=f, op="prefix", args=(value,))
            bound = _value(value)
            return Filter(field=f, op="range", args=(bound, None) if op == "ge" else (None, bound))
    raise _error(f"--where {expr!r}: use F=V, F>=V, F<V, F^=PREFIX or 'F in A,B'", 2)


def _build_query(args: argparse.Namespace) -> Any:
    from ._query import Aggregate, Query

    where = tuple(_where(w) for w in args.where)
    op, agg = "read", None
    fn_field = next(
        ((fn, f) for fn, f in (("sum", args.sum), ("min", args.min), ("max", args.max)) if f), None
    )
    if args.count and not args.group_by:
        op = "count"
    elif fn_field or args.group_by:
        op = "aggregate"
        fn, f = fn_field or ("count", None)
        agg = Aggregate(fn=fn, field=f, group=args.group_by)
    order = None
    if args.order:
        desc = args.order.startswith("-")
        order = (args.order.lstrip("-"), desc)
    return Query(
        collection=args.collection,
        op=op,
        where=where,
        select=tuple(args.select) if args.select and op == "read" else (),
        order=order,
        limit=args.limit,
        agg=agg,
        as_of=args.as_of or 0,
        offset=args.offset or 0,
    )


def _table(rows: list[dict[str, Any]]) -> str:
    import json

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [
        [
            (
                ""
                if k not in r
                else r[k]
                if isinstance(r[k], str)
                else json.dumps(r[k], ensure_ascii=False)
            )
            for k in columns
        ]
        for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _query(args: argparse.Namespace) -> int:
    import json

    import trio

    from ._errors import LocalProtocolError, QueryError, RemoteProtocolError, VaultError
    from ._trio import VaultClient

    if args.via is not None:  # many vaults through an aggregator (RFC-NOTES §10)
        from .aggregation._cli import query_via

        return query_via(args)
    if not args.cap or len(args.cap) != 1 or len(args.vault) != 1:
        raise _error("a direct query takes one --cap and one --vault (for many, use --via)", 2)
    key = _load_key(args.key)
    cap = _load_cap(args.cap[0])
    if key.public != cap.holder:
        raise _fail_code(
            _code("HOLDER_MISMATCH"), "--key is not the key this capability was issued to"
        )
    try:
        query = _build_query(args)
        query.encode()
    except QueryError as exc:
        raise _fail_code(exc.code, exc.detail) from None
    try:
        host, port = _hostport(args.vault[0])
    except argparse.ArgumentTypeError as exc:
        raise _error(f"--vault: {exc}", 2) from None

    async def run() -> Any:
        with trio.fail_after(args.timeout):
            async with await VaultClient.connect(host, port) as client:
                return await client.query(key, cap, query)

    try:
        result = trio.run(run)
    except VaultError as exc:
        raise _fail_code(exc.code, exc.detail) from None
    except trio.TooSlowError:
        raise _fail_code(
            _code("DEADLINE"), f"no answer from {host}:{port} within {args.timeout:g} s"
        ) from None
    except RemoteProtocolError as exc:
        raise _fail_code(
            exc.code, f"the vault at {host}:{port} broke the protocol: {exc}"
        ) from None
    except LocalProtocolError as exc:
        raise _error(str(exc), EXIT_PSP) from None
    rows = [json.loads(r) for r in result.rows]
    if args.json:
        for row in rows:
            _print_json(row)
    elif rows:
        print(_table(rows))
    cursor = result.cursor
    more = f"; more: --as-of {cursor.as_of} --offset {cursor.offset}" if cursor else ""
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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this family's commands to ``ppn``. Handlers are set with ``set_defaults(handler=...)``."""
    fmt = argparse.RawDescriptionHelpFormatter
    vault = subparsers.add_parser(
        "vault",
        help="create, fill, serve and verify a Totebox vault (PSP)",
        description="A vault is one entity's append-only (WORM) record store with its own Ed25519 key, served over PSP (TCP 9210).",
    )
    vsub = vault.add_subparsers(dest="vault_command", metavar="ACTION", required=True)
    p = vsub.add_parser(
        "init",
        help="create a store and the vault key; print the vault id",
        description="Create DIR/vault.sqlite and DIR/vault.key (the vault's Ed25519 key, mode 0600). Prints the vault id: the public key, base64.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--name", help="a label for the vault (default: the directory name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_init)
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
    p = vsub.add_parser(
        "import",
        help="append every line of a JSON-lines file",
        description="Append records from a JSON-lines file in batched transactions (progress on stderr).",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--collection", required=True, metavar="C")
    p.add_argument("--batch", type=int, default=5000, help="records per transaction (default 5000)")
    p.add_argument("file", metavar="FILE.jsonl", help="the file, or - for stdin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_import)
    p = vsub.add_parser(
        "index",
        help="index record fields that queries filter or order on",
        description="Create an expression index on each FIELD (equality, 'in', range and order on it then use the index instead of scanning the collection). Indexes change no entry and can be added at any time, also while the vault is served.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("fields", nargs="+", metavar="FIELD")
    p.set_defaults(handler=_vault_index)
    p = vsub.add_parser(
        "serve",
        help="answer PSP queries on TCP (default 127.0.0.1:9210)",
        description="Serve the vault: authorize each invocation against the vault key (and --trust roots), answer with rows.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument(
        "--listen",
        type=_hostport,
        default=("127.0.0.1", 9210),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:9210; port 0 picks one)",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="also accept chains rooted in this key (repeat)",
    )
    p.set_defaults(handler=_vault_serve)
    p = vsub.add_parser(
        "verify",
        help="check the whole hash chain; report the first broken link",
        description=f"Recompute every entry's hash-chain link. Exit 0 when intact, {EXIT_CHAIN_BROKEN} at the first broken entry.",
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_vault_verify)

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

    cap = subparsers.add_parser(
        "cap",
        help="mint, delegate, inspect and revoke PSP capabilities",
        description="Capabilities are signed, offline-delegable grants to a holder key. A CAP argument is the capability text (pspcap1.…) or a file containing it.",
    )
    csub = cap.add_subparsers(dest="cap_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "mint",
        help="issue a capability from a vault's key",
        description="Issue a root capability signed by the vault key in --store, to the holder key --to.",
        epilog="example: ppn cap mint --store v --to $(cat alice.pub) --collections people --rows 1000 --ttl 7d --out alice.cap",
        formatter_class=fmt,
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--to", required=True, metavar="PUBKEY", help="the holder's public key")
    _add_scope_options(p, delegating=False)
    p.set_defaults(handler=_cap_mint)
    p = csub.add_parser(
        "delegate",
        help="delegate a narrower capability, offline",
        description="Sign a narrower capability for --to with the holder key of CAP. Unset scope options keep the parent's value; nothing may be wider than the parent.",
        epilog="example: ppn cap delegate alice.cap --key alice.key --to $(cat bob.pub) --fields name,age --ops read,count --rows 50 --ttl 1h --out bob.cap",
        formatter_class=fmt,
    )
    p.add_argument("cap", metavar="CAP")
    p.add_argument("--key", required=True, metavar="FILE", help="the key CAP was issued to")
    p.add_argument("--to", required=True, metavar="PUBKEY", help="the delegate's public key")
    _add_scope_options(p, delegating=True)
    p.set_defaults(handler=_cap_delegate)
    p = csub.add_parser(
        "inspect",
        help="show a capability's links and scopes",
        description="Decode a capability and show each link (no signature check: vaults do that).",
    )
    p.add_argument("cap", metavar="CAP")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cap_inspect)
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

    p = subparsers.add_parser(
        "query",
        help="query a vault with a capability",
        description="Sign an invocation of --cap with --key for one query and run it at --vault. Rows print as a table, or as JSON lines with --json; a summary line (row count, as_of, resume cursor) goes to stderr.",
        epilog=(
            "--where forms: F=V  F>=V  F<V  F^=PREFIX  'F in A,B,C'  (V is JSON: 41, true, null, \"41\"; bare words are text)\n"
            "examples:\n"
            "  ppn query --key bob.key --cap bob.cap --vault 127.0.0.1:9210 --collection people --where 'age>=40' --select name,age\n"
            "  ppn query ... --collection ledger --sum amount --group-by account --json"
        ),
        formatter_class=fmt,
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
        help="the vault's PSP address (vaults listen on 9210 by default); with --via: ID@HOST:PORT, repeat",
    )
    p.add_argument("--collection", required=True, metavar="C", help="the collection to query")
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
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up after S seconds (default 30)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.set_defaults(handler=_query)
    from .aggregation._cli import add_via_options
    from .aggregation._cli import register as register_orchestration

    add_via_options(p)  # --via, --vaults, --mode, --resume (RFC-NOTES §10.6)
    register_orchestration(subparsers)  # ppn orchestration serve
