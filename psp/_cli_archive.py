"""``ppn vault export`` and ``ppn vault restore`` (RFC-NOTES §9.4.6, §9.7).

Registered by :mod:`psp._cli`; heavy imports (sqlite3, the store, PyNaCl) happen inside the
handlers. A passphrase never comes from the command line: a prompt on the terminal, or the
first line of ``--passphrase-file``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._cli_common import EXIT_KEY, EXIT_STORE, error, print_json

__all__ = ["EXIT_ARCHIVE", "EXIT_PASSPHRASE", "add_vault_export", "add_vault_restore"]

EXIT_ARCHIVE = 53  # the archive is not valid, damaged, truncated, or cannot be read or written
EXIT_PASSPHRASE = 54  # the passphrase does not open the archive's key


def _passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes:
    import getpass

    if args.passphrase_file:
        try:
            with open(args.passphrase_file, encoding="utf-8") as f:
                text = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise error(
                f"cannot read the passphrase file {args.passphrase_file}: {exc.strerror}", EXIT_KEY
            ) from None
        except UnicodeDecodeError:
            raise error(f"{args.passphrase_file} is not UTF-8 text", EXIT_KEY) from None
    else:
        if not sys.stdin.isatty():
            raise error(
                "the archive's key needs a passphrase: run on a terminal, or give --passphrase-file",
                2,
            )
        text = getpass.getpass("passphrase for the vault key: ")
        if confirm and getpass.getpass("the same passphrase again: ") != text:
            raise error("the two passphrases differ; nothing was written", 2)
    if not text:
        raise error("an empty passphrase seals nothing; choose one", 2)
    return text.encode("utf-8")


class _Ticker:
    """Progress on stderr at most once a second, after the first second."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.start = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            rate = done / (now - self.start)
            print(f"{self.verb} {done:,} entries ({rate:,.0f}/s)…", file=sys.stderr, flush=True)


def _report(identity: Any, extra: dict[str, Any]) -> dict[str, Any]:
    from ppn import encode_key

    return {
        "vault_id": encode_key(identity.vault),
        "name": identity.name,
        "entries": identity.entries,
        "head": identity.head.hex(),
        "audit_entries": identity.audit,
        "audit_head": identity.audit_head.hex(),
        "key": identity.sealed_key,
        **extra,
    }


def _vault_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._cli_common import load_key
    from ._io_archive import export_archive
    from ._io_store import KEY_FILE, StoreError

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise error(f"{out} exists; export never overwrites a file", EXIT_ARCHIVE)
    key = load_key(args.key or str(Path(args.store) / KEY_FILE))
    passphrase = _passphrase(args, confirm=True) if args.with_key else None
    try:
        report = export_archive(
            Path(args.store), out, key=key, passphrase=passphrase, progress=_Ticker("exported")
        )
    except StoreError as exc:
        raise error(f"{exc}; nothing was written", EXIT_STORE) from None
    except FileExistsError:
        raise error(f"{out} exists; export never overwrites a file", EXIT_ARCHIVE) from None
    except OSError as exc:
        why = "the disk is full" if exc.errno == 28 else exc.strerror or str(exc)
        raise error(f"cannot write {out}: {why}; nothing was written", EXIT_ARCHIVE) from None
    identity = report.identity
    if args.json:
        print_json(_report(identity, {"archive": str(out), "bytes": report.size}))
    else:
        sealed = (
            "with the vault key sealed under the passphrase"
            if identity.sealed_key
            else ("without the vault key")
        )
        print(
            f"wrote {out} ({report.size:,} bytes): {identity.entries} entries, chain head "
            f"{identity.head.hex()}, {identity.audit} audit entries, {sealed}"
        )
    return 0


def _vault_restore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ppn import IdentityKey, encode_key

    from ._archive import ArchiveError, KeyOpenError, open_key
    from ._cli_common import parse_pubkey
    from ._io_archive import check_archive, restore_archive
    from ._io_store import StoreError

    file, target = Path(args.file), Path(args.store)
    try:
        checked = check_archive(file, progress=_Ticker("checked"))
    except ArchiveError as exc:
        raise error(
            f"{file} is not a valid vault archive: {exc}; nothing was written", EXIT_ARCHIVE
        ) from None
    identity = checked.identity
    assert identity is not None
    if args.vault_id and parse_pubkey(args.vault_id) != identity.vault:
        raise error(
            f"{file} is the archive of vault {encode_key(identity.vault)}, not of "
            f"{args.vault_id}; nothing was written",
            EXIT_ARCHIVE,
        )
    seed = None
    if checked.sealed_key is not None and not args.without_key:
        passphrase = _passphrase(args, confirm=False)
        try:
            seed = open_key(checked.sealed_key, passphrase, identity.vault)
            if IdentityKey.from_seed(seed).public != identity.vault:
                raise KeyOpenError
        except KeyOpenError:
            raise error(
                "the passphrase does not open the archive's key; nothing was written",
                EXIT_PASSPHRASE,
            ) from None
    try:
        restore_archive(file, target, checked=checked, seed=seed, progress=_Ticker("restored"))
    except ArchiveError as exc:
        raise error(
            f"{file} is not a valid vault archive: {exc}; nothing was written", EXIT_ARCHIVE
        ) from None
    except StoreError as exc:
        raise error(f"{exc}; nothing was written", EXIT_STORE) from None
    except OSError as exc:
        why = "the disk is full" if exc.errno == 28 else exc.strerror or str(exc)
        raise error(f"cannot create {target}: {why}; nothing was written", EXIT_STORE) from None
    if args.json:
        print_json(_report(identity, {"store": str(target), "key": seed is not None}))
    else:
        key = (
            "with the vault key"
            if seed is not None
            else "without the vault key (copy it to "
            f"{target}/vault.key, mode 0600, to serve the vault)"
        )
        print(
            f"restored {identity.entries} entries (chain head {identity.head.hex()}) and "
            f"{identity.audit} audit entries of vault {encode_key(identity.vault)} into "
            f"{target}, {key}"
        )
    return 0


def _add_passphrase_file(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="read the passphrase from the first line of FILE instead of prompting "
        "(never give it on the command line)",
    )


def add_vault_export(vsub: Any) -> None:
    p = vsub.add_parser(
        "export",
        help="write the vault to one archive file (entries, chain, audit log, identity)",
        description=(
            "Write one archive file holding the vault's identity, every entry, the audit log, "
            "revocations and bookkeeping, signed with the vault key (RFC-NOTES §9.4.6). The "
            "store may keep serving: the archive is one snapshot. The file appears whole or "
            "not at all, and an existing file is never overwritten. The vault's secret key is "
            "included only with --with-key, sealed under a passphrase (Argon2id, "
            "XChaCha20-Poly1305)."
        ),
        epilog="examples:\n  ppn vault export --store v --out v.pspvault\n  ppn vault export --store v --out v.pspvault --with-key --passphrase-file pass.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="FILE", help="the archive to create")
    p.add_argument(
        "--key",
        metavar="FILE",
        help="the vault key that signs the archive (default: DIR/vault.key)",
    )
    p.add_argument(
        "--with-key",
        action="store_true",
        help="include the vault's secret key, sealed under a passphrase (prompted twice)",
    )
    _add_passphrase_file(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=_vault_export)


def add_vault_restore(vsub: Any) -> None:
    p = vsub.add_parser(
        "restore",
        help="make a new store from an archive, after checking all of it",
        description=(
            "Check the whole archive first — framing, both hash chains against the identity, "
            "its digest and the vault key's signature — and write nothing unless all of it "
            "holds; then build the store in a temporary directory beside DIR, verify it, and "
            "rename it to DIR. DIR must not exist or be empty. If the archive holds the sealed "
            "vault key, its passphrase is asked for (or --passphrase-file)."
        ),
        epilog=(
            "exit statuses: 53 the archive is invalid, damaged or truncated; 54 the passphrase "
            "does not open its key; 46 DIR is not empty or the disk refused the write; 130 "
            "interrupted — in each case nothing is written.\nexample:\n  ppn vault restore v.pspvault --store v2 && ppn vault verify --store v2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="the archive from 'ppn vault export'")
    p.add_argument("--store", required=True, metavar="DIR", help="the new store")
    p.add_argument(
        "--vault-id",
        metavar="KEY",
        help="refuse the archive unless it is this vault's (its id, base64)",
    )
    p.add_argument(
        "--without-key",
        action="store_true",
        help="do not restore the sealed key even if the archive holds one (no passphrase asked)",
    )
    _add_passphrase_file(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=_vault_restore)
