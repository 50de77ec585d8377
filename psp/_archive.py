"""The vault archive (RFC-NOTES §9.4.6), free of I/O: one file holding a vault's identity, its
entries, audit log and bookkeeping, optionally its key sealed under a passphrase, and a trailer
with the SHA-256 of everything before it, signed by the vault key.

::

    archive  = magic(8) || u16(version = 1) || section* || trailer
    section  = u8(type) || u32(len) || payload(len)       payload: canonical msgpack (§2.2)
    trailer  = u8(0xFF) || u32(96) || digest(32) || signature(64)

:class:`ArchiveWriter` lays the bytes out; :class:`ArchiveReader` takes bytes in any pieces and
returns whole sections, checking the framing, the order and the encoding as they come;
:class:`ArchiveCheck` recomputes the data and audit chains from the sections and, at the
trailer, the digest and the signature. A restore writes nothing before the check passed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ppn.wire import EncodingError, pack_canonical, unpack_canonical

from ._audit import GENESIS as AUDIT_GENESIS
from ._audit import audit_hash, entry_from_row
from ._chain import GENESIS, RecordError, canonical_json, entry_hash
from ._ed25519 import verify_in_context

__all__ = [
    "MAGIC",
    "VERSION",
    "ArchiveCheck",
    "ArchiveError",
    "ArchiveReader",
    "ArchiveWriter",
    "Identity",
    "KeyOpenError",
    "Section",
    "SectionType",
    "open_key",
    "seal_key",
]

MAGIC = b"\x89PSPVLT\n"  # a high first byte and a newline: 7-bit or text-mode copies break it
VERSION = 1
_HEADER = struct.Struct(">8sH")
_SECTION = struct.Struct(">BI")
MAX_SECTION = 1 << 24  # 16 MiB: a chunk is at most 4096 rows or 4 MiB, plus one 256 KiB record
CHUNK_ROWS = 4096
CHUNK_BYTES = 4 << 20
CONTEXT_ARCHIVE = b"PSP-v1 archive\x00"
CONTEXT_KEY = b"PSP-v1 archive key\x00"
TRAILER = 0xFF
TRAILER_SIZE = 96

# The key's sealing (RFC-NOTES §9.4.6): Argon2id, then XChaCha20-Poly1305.
KDF_OPS = 3
KDF_MEM = 64 << 20
KDF_OPS_RANGE = (1, 16)
KDF_MEM_RANGE = (8 << 20, 1 << 30)
SALT_SIZE = 16
NONCE_SIZE = 24


class SectionType:
    IDENTITY = 0x01
    ENTRIES = 0x02
    REVOCATIONS = 0x03
    AUDIT = 0x04
    DENIALS = 0x05
    REPLAY = 0x06
    IMPORTS = 0x07
    KEY = 0x08


_ORDER = (
    SectionType.IDENTITY,
    SectionType.ENTRIES,
    SectionType.REVOCATIONS,
    SectionType.AUDIT,
    SectionType.DENIALS,
    SectionType.REPLAY,
    SectionType.IMPORTS,
    SectionType.KEY,
)
_REPEATABLE = {
    SectionType.ENTRIES,
    SectionType.REVOCATIONS,
    SectionType.AUDIT,
    SectionType.DENIALS,
    SectionType.REPLAY,
    SectionType.IMPORTS,
}


class ArchiveError(ValueError):
    """Not a valid archive: the message is one sentence saying what is wrong."""


class KeyOpenError(Exception):
    """The passphrase does not open the archive's key (deliberately without detail)."""


@dataclass(frozen=True, kw_only=True)
class Identity:
    vault: bytes
    name: str
    created: int
    entries: int
    head: bytes
    audit: int
    audit_head: bytes
    indexes: tuple[str, ...] = ()
    sealed_key: bool = False

    def encode(self) -> Any:
        return {
            "v": 1,
            "vault": self.vault,
            "name": self.name,
            "created": self.created,
            "entries": self.entries,
            "head": self.head,
            "audit": self.audit,
            "audit_head": self.audit_head,
            "indexes": list(self.indexes),
            "key": self.sealed_key,
        }

    @classmethod
    def decode(cls, value: Any) -> Identity:
        keys = {"v", "vault", "name", "created", "entries", "head", "audit", "audit_head"}
        keys |= {"indexes", "key"}
        if not isinstance(value, dict) or set(value) != keys or value["v"] != 1:
            raise ArchiveError("its identity section is not a version 1 identity")
        for name, size in (("vault", 32), ("head", 32), ("audit_head", 32)):
            if not isinstance(value[name], bytes) or len(value[name]) != size:
                raise ArchiveError(f"its identity's {name} is not {size} bytes")
        for name in ("created", "entries", "audit"):
            if not isinstance(value[name], int) or isinstance(value[name], bool) or value[name] < 0:
                raise ArchiveError(f"its identity's {name} is not a count")
        indexes = value["indexes"]
        if not isinstance(value["name"], str) or not isinstance(value["key"], bool):
            raise ArchiveError("its identity's name or key flag has the wrong type")
        if not isinstance(indexes, list) or not all(isinstance(i, str) for i in indexes):
            raise ArchiveError("its identity's index list has the wrong type")
        return cls(
            vault=value["vault"],
            name=value["name"],
            created=value["created"],
            entries=value["entries"],
            head=value["head"],
            audit=value["audit"],
            audit_head=value["audit_head"],
            indexes=tuple(indexes),
            sealed_key=value["key"],
        )


@dataclass(frozen=True, kw_only=True)
class Section:
    type: int
    value: Any  # the decoded payload (the trailer: its raw bytes)


class ArchiveWriter:
    """The bytes of an archive, in order: :meth:`header`, :meth:`section` for each section,
    :meth:`trailer` (which needs a signing function: the vault key's ``sign``)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._last = 0

    def _out(self, data: bytes) -> bytes:
        self._hash.update(data)
        return data

    def header(self) -> bytes:
        return self._out(_HEADER.pack(MAGIC, VERSION))

    def section(self, type_: int, value: Any) -> bytes:
        if type_ not in _ORDER or _ORDER.index(type_) < _ORDER.index(self._last or type_):
            raise ValueError(f"section {type_} out of order")
        if type_ == self._last and type_ not in _REPEATABLE:
            raise ValueError(f"section {type_} appears once")
        self._last = type_
        payload = pack_canonical(value, max_depth=4)
        if len(payload) > MAX_SECTION:
            raise ValueError("a section is at most 16 MiB")
        return self._out(_SECTION.pack(type_, len(payload)) + payload)

    def digest(self) -> bytes:
        return self._hash.digest()

    def trailer(self, sign: Callable[[bytes], bytes]) -> bytes:
        digest = self.digest()
        signature = sign(CONTEXT_ARCHIVE + digest)
        return _SECTION.pack(TRAILER, TRAILER_SIZE) + digest + signature


def chunks(rows: Iterator[list[Any]], *, size_of: int = 1) -> Iterator[list[list[Any]]]:
    """Rows grouped into section payloads of at most :data:`CHUNK_ROWS` rows and about
    :data:`CHUNK_BYTES` (``size_of``: the index of the row's largest field, for the estimate)."""
    chunk: list[list[Any]] = []
    size = 0
    for row in rows:
        chunk.append(row)
        value = row[size_of]
        size += len(value) if isinstance(value, (bytes, str)) else 8
        if len(chunk) >= CHUNK_ROWS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class ArchiveReader:
    """Bytes in (:meth:`feed`, any sizes; :meth:`end` at EOF), sections out (:meth:`next`).

    Checks the magic and version, each section's type order and length before reading its
    payload, and the canonical encoding of each payload. The digest of the bytes before the
    trailer is kept for :class:`ArchiveCheck`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._started = False
        self._last = 0
        self._announced = False  # the next section's header was checked
        self.finished = False  # the trailer was read
        self.digest = b""

    def feed(self, data: bytes) -> None:
        if self.finished and data:
            raise ArchiveError("bytes follow its trailer")
        self._buf += data

    def end(self) -> None:
        """EOF: anything but a complete archive is an error."""
        if not self.finished:
            raise ArchiveError("it is truncated (no trailer)")
        if self._buf:
            raise ArchiveError("bytes follow its trailer")

    def next(self) -> Section | None:
        """The next whole section, or None until more bytes arrive."""
        buf = self._buf
        if not self._started:
            if len(buf) < _HEADER.size:
                return None
            magic, version = _HEADER.unpack_from(buf)
            if magic != MAGIC:
                raise ArchiveError("it is not a PSP vault archive (wrong magic bytes)")
            if version != VERSION:
                raise ArchiveError(f"it is archive version {version}; this ppn reads version 1")
            self._hash.update(buf[: _HEADER.size])
            del buf[: _HEADER.size]
            self._started = True
        if self.finished or len(buf) < _SECTION.size:
            return None
        type_, length = _SECTION.unpack_from(buf)
        if not self._announced:  # checked once, as soon as its header is in
            self._check_order(type_, length)
            self._announced = True
        if len(buf) < _SECTION.size + length:
            return None
        self._announced = False
        whole = bytes(buf[: _SECTION.size + length])
        del buf[: _SECTION.size + length]
        payload = whole[_SECTION.size :]
        if type_ == TRAILER:
            self.digest = self._hash.digest()
            self.finished = True
            return Section(type=TRAILER, value=payload)
        self._hash.update(whole)
        try:
            value = unpack_canonical(payload, max_depth=4)
        except EncodingError:
            raise ArchiveError(f"its section of type {type_} is not canonical msgpack") from None
        return Section(type=type_, value=value)

    def _check_order(self, type_: int, length: int) -> None:
        if type_ == TRAILER:
            if length != TRAILER_SIZE:
                raise ArchiveError("its trailer has the wrong size")
            if self._last == 0:
                raise ArchiveError("it has no identity section")
            return
        if type_ not in _ORDER:
            raise ArchiveError(f"it holds a section of unknown type {type_}")
        if self._last == 0 and type_ != SectionType.IDENTITY:
            raise ArchiveError("it does not start with its identity section")
        if self._last and (
            _ORDER.index(type_) < _ORDER.index(self._last)
            or (type_ == self._last and type_ not in _REPEATABLE)
        ):
            raise ArchiveError(f"its section of type {type_} is out of order")
        if length > MAX_SECTION:
            raise ArchiveError("it announces a section larger than 16 MiB")
        self._last = type_


def _int(v: Any, bits: int = 64) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << bits


def _bin(v: Any, size: int) -> bool:
    return isinstance(v, bytes) and len(v) == size


@dataclass(kw_only=True)
class ArchiveCheck:
    """Everything :class:`ArchiveReader` yields, checked: the data chain and the audit chain
    recomputed and held to the identity's counts and heads, the rows of the other sections
    well-formed, and at the trailer the digest and the vault key's signature. Rows come back
    ready for the store (:meth:`add` returns them), so a restore writes what was checked."""

    identity: Identity | None = None
    sealed_key: dict[str, Any] | None = None
    entries: int = 0
    head: bytes = GENESIS
    audit: int = 0
    audit_head: bytes = AUDIT_GENESIS
    signed: bool = False
    seen: set[int] = field(default_factory=set)

    def add(self, section: Section) -> list[tuple[Any, ...]]:
        """Check one section; the rows it holds, as the store's table rows."""
        t, value = section.type, section.value
        self.seen.add(t)
        if t == SectionType.IDENTITY:
            self.identity = Identity.decode(value)
            return []
        if t == SectionType.KEY:
            self.sealed_key = _key_section(value)
            return []
        if not isinstance(value, list) or not all(isinstance(r, list) for r in value):
            raise ArchiveError(f"its section of type {t} is not a list of rows")
        if t == SectionType.ENTRIES:
            return [self._entry(r) for r in value]
        if t == SectionType.AUDIT:
            return [self._audit(r) for r in value]
        return [_row(t, r) for r in value]

    def _entry(self, r: list[Any]) -> tuple[Any, ...]:
        if len(r) != 5:
            raise ArchiveError(
                f"entry {self.entries + 1} is not [seq, collection, ts, supersedes, payload]"
            )
        seq, collection, ts, sup, payload = r
        if seq != self.entries + 1:
            raise ArchiveError(f"entry {self.entries + 1} is missing (found {seq!r} in its place)")
        if not (isinstance(collection, str) and _int(ts) and isinstance(payload, str)):
            raise ArchiveError(f"entry {seq} has a field of the wrong type")
        if sup is not None and not (_int(sup) and 0 < sup < seq):
            raise ArchiveError(f"entry {seq} supersedes no earlier entry")
        data = payload.encode("utf-8")
        try:
            if canonical_json(json.loads(payload)) != data:
                raise ArchiveError(f"entry {seq}'s record is not canonical JSON")
        except (ValueError, RecordError):
            raise ArchiveError(f"entry {seq}'s record is not canonical JSON") from None
        self.head = entry_hash(
            self.head, seq=seq, ts=ts, supersedes=sup, collection=collection, payload=data
        )
        self.entries = seq
        return (seq, collection, ts, sup, payload, self.head)

    def _audit(self, r: list[Any]) -> tuple[Any, ...]:
        n = self.audit + 1
        # The store's own row check (sizes and ranges), with no hash yet to compare.
        parsed = entry_from_row((*r, b"")) if len(r) == 9 and r[0] == n else "it is missing"
        if isinstance(parsed, str):
            raise ArchiveError(f"audit entry {n} is malformed: {parsed}")
        entry, _ = parsed
        self.audit_head = audit_hash(self.audit_head, entry)
        self.audit = n
        return entry.row(self.audit_head)

    def finish(self, trailer: bytes, digest: bytes) -> None:
        """At the trailer: the counts and heads against the identity, then the digest of every
        byte before the trailer, then the vault key's signature over it."""
        identity = self.identity
        if identity is None:
            raise ArchiveError("it has no identity section")
        if self.entries != identity.entries:
            raise ArchiveError(
                f"it holds {self.entries} entries where its identity names {identity.entries}"
            )
        if self.head != identity.head:
            raise ArchiveError("its entries do not hash to the chain head its identity names")
        if (self.audit, self.audit_head) != (identity.audit, identity.audit_head):
            raise ArchiveError("its audit entries do not end at the audit head its identity names")
        if identity.sealed_key != (self.sealed_key is not None):
            raise ArchiveError("its key section and its identity disagree")
        if trailer[:32] != digest:
            raise ArchiveError("its digest does not match its contents (damaged)")
        if not verify_in_context(identity.vault, CONTEXT_ARCHIVE, digest, trailer[32:]):
            raise ArchiveError("its signature is not the vault key's")
        self.signed = True


# Each row field: bytes of that size (a positive number), an integer of that many bits (a
# negative number), or text (0).
_ROW_SHAPES: dict[int, tuple[int, ...]] = {
    SectionType.REVOCATIONS: (32, -64),  # link id, time
    SectionType.DENIALS: (-16, -64, -64, -64),  # code, count, first, last
    SectionType.REPLAY: (16, -64),  # nonce, expires
    SectionType.IMPORTS: (32, 0, -64, -64, -64),  # digest, collection, lines, span, seq
}


def _field_ok(value: Any, shape: int) -> bool:
    if shape > 0:
        return _bin(value, shape)
    if shape < 0:
        return _int(value, -shape)
    return isinstance(value, str)


def _row(t: int, r: list[Any]) -> tuple[Any, ...]:
    shape = _ROW_SHAPES[t]
    if len(r) != len(shape) or not all(_field_ok(v, s) for v, s in zip(r, shape, strict=True)):
        raise ArchiveError(f"a row of its section of type {t} is malformed")
    return tuple(r)


def _key_section(value: Any) -> dict[str, Any]:
    keys = {"kdf", "ops", "mem", "salt", "aead", "nonce", "ct"}
    if not isinstance(value, dict) or set(value) != keys:
        raise ArchiveError("its key section is malformed")
    if value["kdf"] != "argon2id" or value["aead"] != "xchacha20poly1305":
        raise ArchiveError("its key is sealed with an algorithm this ppn does not know")
    if not (KDF_OPS_RANGE[0] <= value["ops"] <= KDF_OPS_RANGE[1]) or not (
        KDF_MEM_RANGE[0] <= value["mem"] <= KDF_MEM_RANGE[1]
    ):
        raise ArchiveError("its key's KDF parameters are out of the accepted range")
    if not (
        _bin(value["salt"], SALT_SIZE)
        and _bin(value["nonce"], NONCE_SIZE)
        and _bin(value["ct"], 48)
    ):
        raise ArchiveError("its key section is malformed")
    return dict(value)


def _kdf(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    from nacl.pwhash import argon2id

    return bytes(argon2id.kdf(32, passphrase, salt, opslimit=ops, memlimit=mem))


def seal_key(
    seed: bytes, passphrase: bytes, vault: bytes, *, salt: bytes, nonce: bytes
) -> dict[str, Any]:
    """The key section: the 32-byte seed under Argon2id(passphrase) with XChaCha20-Poly1305,
    the vault id as associated data (a sealed key cannot be moved to another vault's archive)."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    key = _kdf(passphrase, salt, KDF_OPS, KDF_MEM)
    ct = crypto_aead_xchacha20poly1305_ietf_encrypt(seed, CONTEXT_KEY + vault, nonce, key)
    return {
        "kdf": "argon2id",
        "ops": KDF_OPS,
        "mem": KDF_MEM,
        "salt": salt,
        "aead": "xchacha20poly1305",
        "nonce": nonce,
        "ct": ct,
    }


def open_key(section: dict[str, Any], passphrase: bytes, vault: bytes) -> bytes:
    """The seed, or :class:`KeyOpenError` (wrong passphrase or altered key: one error)."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
    from nacl.exceptions import CryptoError

    key = _kdf(passphrase, section["salt"], section["ops"], section["mem"])
    try:
        return bytes(
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                section["ct"], CONTEXT_KEY + vault, section["nonce"], key
            )
        )
    except CryptoError:
        raise KeyOpenError from None
