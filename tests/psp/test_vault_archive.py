"""Vault export and restore (RFC-NOTES §9.4.6).

The core: every truncation and every flipped byte of a real archive is refused with
:class:`ArchiveError` (never another exception, never a partial success). Through the CLI, with
real processes: a served vault queried over TCP (so it has audit entries), exported with its
sealed key, restored, verified (same chain and audit heads), and the restored vault served and
queried with a capability the original issued; a damaged, truncated or foreign archive, a wrong
passphrase, a non-empty target and a full disk each exit with one sentence, its documented
status, and nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ppn import IdentityKey
from psp._archive import ArchiveCheck, ArchiveError, ArchiveReader, KeyOpenError, open_key
from psp._io_archive import check_archive, export_archive
from psp._io_store import KEY_FILE, Store

from .._tmpfs import fill, small_tmpfs
from ._vault_cli_kit import make_vault, ppn, served_vault

NOW = 1_800_000_000
PASSPHRASE = "correct horse battery staple"


def _small_archive(tmp_path: Path, *, passphrase: bytes | None = None) -> bytes:
    key = IdentityKey.from_seed(b"k" * 32)
    store = Store.create(tmp_path / "v", name="t", vault_id=key.public, now=NOW)
    store.append_many("people", [{"n": i} for i in range(5)], now=NOW)
    store.append("people", {"n": 22}, now=NOW + 1, supersedes=2)
    store.revoke(b"r" * 32, now=NOW)
    store.close()
    export_archive(tmp_path / "v", tmp_path / "a", key=key, passphrase=passphrase)
    return (tmp_path / "a").read_bytes()


def _drain(reader: ArchiveReader, check: ArchiveCheck) -> None:
    while (section := reader.next()) is not None:
        if section.type == 0xFF:
            check.finish(section.value, reader.digest)
        else:
            check.add(section)


def _check(data: bytes) -> ArchiveCheck:
    reader, check = ArchiveReader(), ArchiveCheck()
    reader.feed(data)
    _drain(reader, check)
    reader.end()
    return check


def test_every_truncation_and_every_flipped_byte_is_refused(tmp_path: Path) -> None:
    data = _small_archive(tmp_path)
    good = _check(data)
    assert good.signed and good.entries == 6 and good.identity is not None
    assert good.head == good.identity.head
    for n in range(len(data)):
        with pytest.raises(ArchiveError):
            _check(data[:n])
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[i] ^= bit
            with pytest.raises(ArchiveError):
                _check(bytes(damaged))
    with pytest.raises(ArchiveError, match="follow its trailer"):
        _check(data + b"\0")


def test_sections_arrive_in_any_pieces(tmp_path: Path) -> None:
    data = _small_archive(tmp_path)
    reader, check = ArchiveReader(), ArchiveCheck()
    for i in range(len(data)):  # one byte at a time
        reader.feed(data[i : i + 1])
        _drain(reader, check)
    reader.end()
    assert check.signed and check.head == _check(data).head


def test_the_sealed_key_opens_only_with_its_passphrase(tmp_path: Path) -> None:
    data = _small_archive(tmp_path, passphrase=b"pass")
    check = _check(data)
    assert check.sealed_key is not None and check.identity is not None
    seed = open_key(check.sealed_key, b"pass", check.identity.vault)
    assert IdentityKey.from_seed(seed).public == check.identity.vault
    with pytest.raises(KeyOpenError):
        open_key(check.sealed_key, b"Pass", check.identity.vault)
    with pytest.raises(KeyOpenError):  # the vault id is bound as associated data
        open_key(check.sealed_key, b"pass", b"x" * 32)
    assert b"k" * 32 not in data  # the seed is not in the file in clear


def test_a_signed_archive_cannot_make_restore_hash_for_hours(tmp_path: Path) -> None:
    """KDF parameters beyond the accepted range are refused before any hashing, even in an
    archive the vault key signed."""
    from psp._archive import ArchiveWriter, Identity, SectionType

    key = IdentityKey.from_seed(b"k" * 32)
    from psp._audit import GENESIS as AUDIT_GENESIS
    from psp._chain import GENESIS

    identity = Identity(
        vault=key.public,
        name="t",
        created=NOW,
        entries=0,
        head=GENESIS,
        audit=0,
        audit_head=AUDIT_GENESIS,
        sealed_key=True,
    )
    sealed = {
        "kdf": "argon2id",
        "ops": 3,
        "mem": 64 << 30,  # 64 GiB
        "salt": b"s" * 16,
        "aead": "xchacha20poly1305",
        "nonce": b"n" * 24,
        "ct": b"c" * 48,
    }
    w = ArchiveWriter()
    data = w.header() + w.section(SectionType.IDENTITY, identity.encode())
    data += w.section(SectionType.KEY, sealed) + w.trailer(key.sign)
    with pytest.raises(ArchiveError, match="KDF parameters"):
        _check(data)
    sealed["mem"] = 64 << 20
    w = ArchiveWriter()
    data = w.header() + w.section(SectionType.IDENTITY, identity.encode())
    data += w.section(SectionType.KEY, sealed) + w.trailer(key.sign)
    assert _check(data).sealed_key == sealed  # in range: accepted (and then opened, or not)
    forged = data[:-64] + IdentityKey.from_seed(b"o" * 32).sign(
        b"PSP-v1 archive\x00" + data[-96:-64]
    )
    with pytest.raises(ArchiveError, match="signature"):
        _check(forged)


# --- through the CLI ---------------------------------------------------------------------------


def _vault_state(d: Path, store: str) -> tuple[dict[str, object], dict[str, object]]:
    verify = json.loads(ppn("vault", "verify", "--store", store, "--json", cwd=d).stdout)
    audit = json.loads(ppn("vault", "audit", "--store", store, "--json", cwd=d).stdout)
    return verify, audit


def test_export_restore_verify_keeps_both_chain_heads_and_the_vault_serves(
    tmp_path: Path,
) -> None:
    d = tmp_path
    (d / "pass.txt").write_text(PASSPHRASE + "\n")
    holder = ppn("key", "new", "h.key", cwd=d).stdout.strip()
    with served_vault(d, records=3000) as addr:
        ppn("cap", "mint", "--store", "v", "--to", holder, "--out", "h.cap", cwd=d)
        base = ["query", "--key", "h.key", "--cap", "h.cap", "--vault", addr, "--json"]
        ppn(*base, "--collection", "people", "--count", cwd=d)
        ppn(*base, "--collection", "people", "--where", "age=7", cwd=d)
        ppn("key", "new", "x.key", cwd=d)
        x = ppn("key", "show", "x.key", cwd=d).stdout.strip()
        ppn("cap", "mint", "--store", "v", "--to", x, "--out", "x.cap", cwd=d)
        ppn("cap", "revoke", "--store", "v", "x.cap", cwd=d)  # every section type is present
        # exported while the vault serves: one snapshot
        exported = json.loads(
            ppn(
                "vault", "export", "--store", "v", "--out", "v.pspvault", "--with-key",
                "--passphrase-file", "pass.txt", "--json", cwd=d,
            ).stdout
        )  # fmt: skip
    assert exported["entries"] == 3000 and exported["audit_entries"] == 2 and exported["key"]
    assert os.stat(d / "v.pspvault").st_mode & 0o077 == 0
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []
    assert PASSPHRASE.encode() not in (d / "v.pspvault").read_bytes()

    restored = json.loads(
        ppn(
            "vault", "restore", "v.pspvault", "--store", "v2", "--passphrase-file", "pass.txt",
            "--vault-id", exported["vault_id"], "--json", cwd=d,
        ).stdout
    )  # fmt: skip
    assert restored["head"] == exported["head"] and restored["key"] is True
    (v_verify, v_audit), (r_verify, r_audit) = _vault_state(d, "v"), _vault_state(d, "v2")
    assert r_verify["ok"] is True and r_verify["head"] == v_verify["head"] == exported["head"]
    assert r_verify["audit"] == v_verify["audit"]
    assert r_audit == v_audit
    shown = ppn("key", "show", "v2/vault.key", cwd=d).stdout.strip()
    assert shown == exported["vault_id"]
    assert os.stat(d / "v2").st_mode & 0o077 == 0

    # The restored vault is the same vault: a capability the original minted works there.
    import re
    import signal
    import subprocess

    from ._vault_cli_kit import PPN

    proc = subprocess.Popen(
        [*PPN, "vault", "serve", "--store", "v2", "--listen", "127.0.0.1:0"],
        cwd=d,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"listening on (127\.0\.0\.1:\d+)", proc.stdout.readline())
        assert match
        base = ["query", "--key", "h.key", "--cap", "h.cap", "--vault", match.group(1), "--json"]
        counted = ppn(*base, "--collection", "people", "--count", cwd=d)
        assert json.loads(counted.stdout) == {"count": 3000}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _nothing_written(d: Path, target: str) -> None:
    assert not (d / target).exists()
    assert [p.name for p in d.iterdir() if p.name.startswith(f".{target}")] == []


def test_damaged_truncated_or_foreign_archives_write_nothing(tmp_path: Path) -> None:
    d = tmp_path
    make_vault(d, records=200)
    ppn("vault", "export", "--store", "v", "--out", "a.pspvault", cwd=d)
    data = (d / "a.pspvault").read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "no trailer": data[:-100],
        "flipped": data[:5000] + bytes([data[5000] ^ 0x20]) + data[5001:],
        "not an archive": b"SQLite format 3\0" + data[16:],
        "empty": b"",
    }
    for name, content in cases.items():
        (d / "bad.pspvault").write_bytes(content)
        result = ppn("vault", "restore", "bad.pspvault", "--store", "r", cwd=d, check=False)
        assert result.returncode == 53, (name, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "ppn: bad.pspvault is not a valid vault archive: "
        )
        assert "nothing was written" in lines[0] and "Traceback" not in result.stderr
        _nothing_written(d, "r")
    other = ppn("key", "new", "other.key", cwd=d).stdout.strip()
    pinned = ppn(
        "vault", "restore", "a.pspvault", "--store", "r", "--vault-id", other, cwd=d, check=False
    )
    assert pinned.returncode == 53 and "not of" in pinned.stderr
    _nothing_written(d, "r")


def test_wrong_passphrase_and_non_empty_target_write_nothing(tmp_path: Path) -> None:
    d = tmp_path
    make_vault(d, records=50)
    (d / "pass.txt").write_text(PASSPHRASE + "\n")
    (d / "wrong.txt").write_text("correct horse battery stapler\n")
    ppn(
        "vault", "export", "--store", "v", "--out", "k.pspvault", "--with-key",
        "--passphrase-file", "pass.txt", cwd=d,
    )  # fmt: skip
    wrong = ppn(
        "vault", "restore", "k.pspvault", "--store", "r", "--passphrase-file", "wrong.txt",
        cwd=d, check=False,
    )  # fmt: skip
    assert wrong.returncode == 54
    assert (
        wrong.stderr == "ppn: the passphrase does not open the archive's key; nothing was written\n"
    )
    _nothing_written(d, "r")
    # no terminal and no --passphrase-file: a usage error, not a hang
    no_tty = ppn("vault", "restore", "k.pspvault", "--store", "r", cwd=d, check=False, stdin="")
    assert no_tty.returncode == 2 and "--passphrase-file" in no_tty.stderr
    _nothing_written(d, "r")
    # --without-key restores the data only
    ppn("vault", "restore", "k.pspvault", "--store", "r", "--without-key", cwd=d)
    assert not (d / "r" / KEY_FILE).exists() and (d / "r" / "vault.sqlite").exists()
    again = ppn(
        "vault", "restore", "k.pspvault", "--store", "r", "--without-key", cwd=d, check=False
    )
    assert again.returncode == 46 and "not empty" in again.stderr
    (d / "empty").mkdir()
    ppn("vault", "restore", "k.pspvault", "--store", "empty", "--without-key", cwd=d)
    # export never overwrites
    clobber = ppn("vault", "export", "--store", "v", "--out", "k.pspvault", cwd=d, check=False)
    assert clobber.returncode == 53 and "never overwrites" in clobber.stderr


def test_full_disk_leaves_no_archive_and_no_store(tmp_path: Path) -> None:
    d = tmp_path
    make_vault(d, records=20_000)
    ppn("vault", "export", "--store", "v", "--out", "a.pspvault", cwd=d)
    with small_tmpfs("2m") as mnt:
        fill(mnt)
        (mnt / "filler").write_bytes(b"\0" * (1700 << 10))  # leave about 300 KiB
        out = ppn(
            "vault", "export", "--store", "v", "--out", str(mnt / "a.pspvault"), cwd=d, check=False
        )
        assert out.returncode == 53 and "disk is full" in out.stderr, out
        assert [p.name for p in mnt.iterdir()] == ["filler"]
        restored = ppn(
            "vault", "restore", "a.pspvault", "--store", str(mnt / "r"), cwd=d, check=False
        )
        assert restored.returncode == 46 and "nothing was written" in restored.stderr, restored
        assert [p.name for p in mnt.iterdir()] == ["filler"]


def test_export_refuses_a_store_whose_chain_is_broken(tmp_path: Path) -> None:
    import sqlite3

    d = tmp_path
    make_vault(d, records=100)
    db = sqlite3.connect(d / "v" / "vault.sqlite", isolation_level=None)
    db.execute("DROP TRIGGER entries_never_updated")
    db.execute("""UPDATE entries SET payload = '{"age":1,"name":"x"}' WHERE seq = 40""")
    db.close()
    result = ppn("vault", "export", "--store", "v", "--out", "a.pspvault", cwd=d, check=False)
    assert result.returncode == 46 and "broken at entry 40" in result.stderr
    assert not (d / "a.pspvault").exists()
    with pytest.raises(ArchiveError):
        check_archive(d / "a.pspvault")
