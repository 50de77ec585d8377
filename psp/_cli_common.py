"""What the PSP command modules share: exit statuses, errors, argument types, key and
capability loading, ``--where`` parsing and output (RFC-NOTES §9.7).

:mod:`psp._cli` (vault, key, cap, query) and :mod:`psp.aggregation._cli` (orchestration,
``query --via``) both import this module and not each other's, so neither CLI module is
a library of the other. Heavy imports happen inside the functions, as in the command modules.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ppn import IdentityKey

    from ._capability import Capability
    from ._errors import ErrorCode
    from ._query import Filter, Query

__all__ = [
    "EXIT_CHAIN_BROKEN",
    "EXIT_DENIED",
    "EXIT_KEY",
    "EXIT_PROTOCOL",
    "EXIT_PSP",
    "EXIT_QUERY",
    "EXIT_RECORD",
    "EXIT_REPLICA",
    "EXIT_STORE",
    "EXIT_UNAVAILABLE",
    "build_query",
    "code",
    "error",
    "fail_code",
    "hostport",
    "load_cap",
    "load_holder",
    "load_key",
    "now",
    "parse_pubkey",
    "print_json",
    "table",
]

EXIT_PSP = 40
EXIT_DENIED = 41
EXIT_QUERY = 42
EXIT_UNAVAILABLE = 43
EXIT_PROTOCOL = 44
EXIT_CHAIN_BROKEN = 45
EXIT_STORE = 46
EXIT_KEY = 47
EXIT_RECORD = 48
EXIT_REPLICA = 55  # an append to a replica's store (its entries come only from its primary)


def _exit_for(code: ErrorCode) -> int:
    if code.retryable:
        return EXIT_UNAVAILABLE
    if code.value < 140:
        return EXIT_DENIED
    if code.value < 150:
        return EXIT_QUERY
    return EXIT_PROTOCOL


def fail_code(code: ErrorCode, detail: str = "") -> Exception:
    """The :class:`CommandError` for a PSP error code: its name, number and sentence, with the
    exit status of its class."""
    from ppn.cli import CommandError

    sentence = detail or code.sentence
    return CommandError(f"{code.name} ({int(code)}): {sentence}", _exit_for(code))


def error(message: str, status: int) -> Exception:
    from ppn.cli import CommandError

    return CommandError(message, status)


def code(name: str) -> ErrorCode:
    from ._errors import ErrorCode

    return ErrorCode[name]


def now() -> int:
    import time

    return int(time.time())


def hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """An argparse type: ``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def load_key(path: str) -> IdentityKey:
    from ppn import KeyFormatError

    from ._io_vault import read_key_file

    try:
        return read_key_file(path)
    except KeyFormatError as exc:
        raise error(str(exc), EXIT_KEY) from None


def load_cap(text: str) -> Capability:
    """A capability from its text (``pspcap1.…``) or from a file holding it."""
    from pathlib import Path

    from ._capability import TEXT_PREFIX, Capability
    from ._errors import AuthorizationError

    if not text.startswith(TEXT_PREFIX):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise error(f"cannot read capability file {text}: {exc.strerror}", EXIT_KEY) from None
    try:
        return Capability.from_text(text)
    except AuthorizationError as exc:
        raise error(f"not a valid capability: {exc.code.sentence}", EXIT_KEY) from None


def load_holder(key_file: str, cap_text: str) -> tuple[IdentityKey, Capability]:
    """A holder key and a capability issued to it (else HOLDER_MISMATCH, exit 41)."""
    key = load_key(key_file)
    cap = load_cap(cap_text)
    if key.public != cap.holder:
        raise fail_code(
            code("HOLDER_MISMATCH"), "--key is not the key this capability was issued to"
        )
    return key, cap


def parse_pubkey(text: str) -> bytes:
    from ppn import KeyFormatError, decode_key

    from ._ed25519 import public_key_ok

    try:
        raw = decode_key(text)
    except KeyFormatError as exc:
        raise error(f"bad public key {text!r}: {exc}", EXIT_KEY) from None
    if not public_key_ok(raw):
        raise error(f"{text} is not a usable Ed25519 public key", EXIT_KEY)
    return raw


def print_json(value: Any) -> None:
    import json

    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as a text table: one column per key in order of first appearance."""
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


# --- the query options -------------------------------------------------------------------------

_OPS = ((">=", "ge"), ("<", "lt"), ("^=", "prefix"), ("=", "eq"))


def _value(text: str) -> Any:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float | list | dict):
        raise error(f"filter value {text!r}: only text, integers, true, false and null", 2)
    return value


_WHERE_FORMS = "F=V, F>=V, F<V, F^=PREFIX or 'F in A,B'"
# A character that begins an operator: a value or field that starts or ends with one is a
# mistyped operator ('age=>3', 'age<=3', 'age==3', 'age!=3'), never meant as data. Silently
# reading 'age=>3' as "age equals the text '>3'" answered 0 rows with exit 0 (issue 20).
_OPERATOR_CHARS = "<>=!^"
# Typos seen in practice, with what to write instead (None: there is no such operator).
_TYPOS = (("=>", ">="), ("==", "="), ("<=", None), ("=<", None), ("!=", None))


def _malformed(expr: str, why: str) -> Exception:
    """A usage error (exit 2) naming the expression, what is wrong and the forms there are."""
    hint = ""
    for typo, meant in _TYPOS:
        if typo in expr:
            hint = (
                f" (did you mean {expr.replace(typo, meant, 1)!r}?)"
                if meant
                else f" ({typo!r} is not one of them)"
            )
            break
    return error(f"--where {expr!r}: {why}; the forms are {_WHERE_FORMS}{hint}", 2)


def _where(expr: str) -> Filter:
    from ._query import Filter

    if " in " in expr:
        field, _, values = expr.partition(" in ")
        if not field.strip() or field.strip()[-1] in _OPERATOR_CHARS:
            raise _malformed(expr, "no field before 'in'")
        return Filter(
            field=field.strip(), op="in", args=tuple(_value(v.strip()) for v in values.split(","))
        )
    for token, op in _OPS:
        field, sep, value = expr.partition(token)
        if sep and field.strip():
            f = field.strip()
            # A prefix is raw text, so only F=V and ranges refuse a value led by an operator
            # character; as data, such a value is written as JSON text: age='">3"'.
            led = op != "prefix" and value[:1] != "" and value[0] in _OPERATOR_CHARS
            if f[-1] in _OPERATOR_CHARS or led:
                raise _malformed(expr, "an operator is mistyped")
            if op == "eq":
                return Filter(field=f, op="eq", args=(_value(value),))
            if op == "prefix":
                return Filter(field=f, op="prefix", args=(value,))
            if not value.strip():
                raise _malformed(expr, "a range needs a value")
            bound = _value(value)
            return Filter(field=f, op="range", args=(bound, None) if op == "ge" else (None, bound))
    raise _malformed(expr, "no operator after a field name")


def build_query(args: argparse.Namespace) -> Query:
    """The :class:`Query` that ``ppn query``'s options describe (not yet validated)."""
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
