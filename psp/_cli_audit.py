"""``ppn vault audit`` and the audit half of ``ppn vault verify`` (RFC-NOTES §9.4.5, §9.7).

Registered by :mod:`psp._cli`; heavy imports (sqlite3, the store) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ._cli_common import error, now

if TYPE_CHECKING:
    from pathlib import Path

    from ._audit import AuditChainCheck

__all__ = ["add_vault_audit", "audit_verify_lines", "check_audit"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str) -> int:
    """An argparse type: Unix seconds, an ISO 8601 time (UTC unless it says otherwise), or a
    duration ago (``90m``, ``12h``, ``7d``)."""
    import datetime

    text = text.strip()
    if text.isdigit():
        return int(text)
    unit = _UNITS.get(text[-1:].lower())
    if unit and text[:-1].isdigit():
        return now() - int(text[:-1]) * unit
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--since takes Unix seconds, an ISO time (2026-12-05T14:00Z) or a duration ago (90m, 12h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp())


def _iso(ts: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Fixed widths, so rows print as they are read (no pass over the whole log to size them).
_COLUMNS: tuple[tuple[str, int], ...] = (
    ("SEQ", 8),
    ("TIME", 20),
    ("HOLDER", 44),
    ("CAP", 17),
    ("QUERY", 17),
    ("AS_OF", 8),
    ("ROWS", 6),
    ("END", 0),
)


def _line(cells: list[str]) -> str:
    return "  ".join(c.ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)).rstrip()


def _vault_audit(args: argparse.Namespace) -> int:
    import json

    from ppn import encode_key

    from ._audit import status_name
    from ._cli_common import EXIT_STORE
    from ._errors import ErrorCode
    from ._io_audit import iter_audit, read_denials
    from ._io_store import Store, StoreError

    def code_name(code: int) -> str:
        try:
            return ErrorCode(code).name
        except ValueError:
            return f"code {code}"

    try:
        store = Store.open(args.store)  # also gives a store from before the log its tables
        file = store.file
        store.close()
        counted: list[dict[str, Any]] = [
            {"code": c, "name": code_name(c), "count": n, "first": f, "last": la}
            for c, n, f, la in read_denials(file)
        ]
        # Printed as read, one entry at a time: a log of years is never held in memory.
        n = 0
        if args.json:
            sys.stdout.write('{"entries":[')
        for e, h in iter_audit(file, since=args.since or 0):
            if args.json:
                entry = {
                    "seq": e.seq,
                    "ts": e.ts,
                    "time": _iso(e.ts),
                    "holder": encode_key(e.holder),
                    "cap": e.cap.hex(),
                    "query": e.query.hex(),
                    "qid": e.qid.hex(),
                    "as_of": e.as_of,
                    "rows": e.rows,
                    "status": status_name(e.status),
                    "hash": h.hex(),
                }
                sys.stdout.write(("," if n else "") + json.dumps(entry, separators=(",", ":")))
            else:
                if n == 0:
                    print(_line([c for c, _ in _COLUMNS]))
                    print(_line(["-" * max(w, 3) for _, w in _COLUMNS]))
                cells = [str(e.seq), _iso(e.ts), encode_key(e.holder), e.cap.hex()[:16] + "…"]
                cells += [e.query.hex()[:16] + "…", str(e.as_of), str(e.rows)]
                print(_line([*cells, status_name(e.status)]))
            n += 1
    except StoreError as exc:
        raise error(str(exc), EXIT_STORE) from None
    except Exception as exc:  # sqlite3.Error without importing sqlite3 at the top
        raise error(f"cannot read the audit log of {args.store}: {exc}", EXIT_STORE) from None
    if args.json:
        sys.stdout.write('],"denials":' + json.dumps(counted, separators=(",", ":")) + "}\n")
        return 0
    since = f" since {_iso(args.since)}" if args.since else ""
    print(f"{n} audit entr{'y' if n == 1 else 'ies'}{since}")
    for d in counted:
        print(
            f"refused {d['count']} time(s) with {d['name']} ({d['code']}), "
            f"{_iso(d['first'])} to {_iso(d['last'])}"
        )
    return 0


def check_audit(file: Path) -> AuditChainCheck:
    from ._io_audit import verify_audit

    try:
        return verify_audit(file)
    except Exception as exc:  # sqlite3.Error: the table is unreadable
        from ._audit import AuditChainCheck

        return AuditChainCheck(
            entries=0, head=b"", first_broken=1, reason=f"the audit log is unreadable: {exc}"
        )


def audit_verify_lines(report: AuditChainCheck) -> str:
    if report.first_broken is None:
        return f"ok: {report.entries} audit entries, audit head {report.head.hex()}"
    return (
        f"broken: audit entry {report.first_broken}: {report.reason} "
        f"({report.entries} audit entries before it verify)"
    )


def add_vault_audit(vsub: Any) -> None:
    p = vsub.add_parser(
        "audit",
        help="show who queried the vault, and the refusals",
        description=(
            "Print the vault's audit log: one entry per answered request (holder, capability "
            "chain id, query hash, as_of, rows returned, how it ended, when), oldest first, "
            "then the refusals counted per error code. The log is append-only and hash-chained "
            "like the data; 'ppn vault verify' checks it (RFC-NOTES §9.4.5)."
        ),
        epilog="examples:\n  ppn vault audit --store v --since 24h\n  ppn vault audit --store v --since 2026-12-01 --json | jq '.entries[].holder'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument(
        "--since",
        type=since_time,
        metavar="T",
        help="only entries from T on: Unix seconds, an ISO time, or a duration ago (24h, 7d)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"entries": [...], "denials": [...]} (the holder in base64 like a vault id; ids and hashes in hex)',
    )
    p.set_defaults(handler=_vault_audit)
