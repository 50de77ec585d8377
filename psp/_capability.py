"""Capability links, chains and invocations: their encodings, and how to make them (RFC-NOTES §9.2).

A *link* is a signed statement "``iss`` grants ``aud`` this scope from ``nbf`` to ``exp``",
chained to its parent by ``prf`` (the parent's link id). A *capability* is a chain of 1–5 links,
root first. An *invocation* is a request signed by the leaf's audience (the holder) naming the
target vaults, the leaf link id and the SHA-256 of the exact query bytes. The *envelope* a vault
receives holds the chain and the invocation together.

Decoding here checks everything that needs no signature work: size (8 KB), nesting, canonical
encoding, versions, algorithms, the fixed key sets, key validity, signature shapes, time ranges
and scope syntax. Chain semantics and signatures are the verifier's job (``_verifier``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ppn import IdentityKey
from ppn.wire import EncodingError, pack_canonical, unpack_canonical

from ._ed25519 import CONTEXT_INVOCATION, CONTEXT_LINK, public_key_ok, signature_shape_ok
from ._errors import AuthorizationError, ErrorCode, LocalProtocolError, VaultError
from ._scope import MAX_TIME, Scope

__all__ = [
    "ALGORITHM",
    "Capability",
    "Envelope",
    "Invocation",
    "Link",
    "MAX_CHAIN",
    "MAX_ENVELOPE_SIZE",
    "MAX_INVOCATION_LIFETIME",
    "VERSION",
    "decode_capability",
    "decode_envelope",
    "delegate",
    "invoke",
    "link_id",
    "mint",
    "query_hash",
]

VERSION = 1
ALGORITHM = "Ed25519"
MAX_ENVELOPE_SIZE = 8192
MAX_CHAIN = 5
MAX_INVOCATION_LIFETIME = 300  # seconds; also bounds how long a vault remembers a nonce
NONCE_SIZE = 16
_MAX_DEPTH = 4  # deepest legal value: envelope → chain → link → bytes; scope → time → int
_LINK_KEYS = frozenset({"v", "alg", "iss", "aud", "scope", "nbf", "exp", "prf", "nonce"})
_INVOCATION_KEYS = frozenset({"v", "alg", "iss", "aud", "cap", "q", "nonce", "iat", "exp"})
_ENVELOPE_KEYS = frozenset({"v", "chain", "inv"})
_CAPABILITY_KEYS = frozenset({"v", "chain"})
TEXT_PREFIX = "pspcap1."


def link_id(payload: bytes) -> bytes:
    """A link's id (and revocation id): SHA-256 of its canonical payload bytes."""
    return hashlib.sha256(payload).digest()


def query_hash(query_bytes: bytes) -> bytes:
    return hashlib.sha256(query_bytes).digest()


def _fail(code: ErrorCode) -> AuthorizationError:
    return AuthorizationError(code)


def _decode(data: bytes) -> Any:
    try:
        return unpack_canonical(data, max_depth=_MAX_DEPTH, max_size=MAX_ENVELOPE_SIZE)
    except EncodingError as exc:
        code = ErrorCode.TOO_DEEP if "deeper" in str(exc) else ErrorCode.MALFORMED
        raise _fail(code) from None
    except RecursionError:
        raise _fail(ErrorCode.TOO_DEEP) from None


def _header(value: object, keys: frozenset[str]) -> dict[str, Any]:
    """Version, then algorithm, then the exact key set: in that order, so a future version
    with other keys is reported as an unsupported version, not as unknown keys."""
    if not isinstance(value, dict) or "v" not in value:
        raise _fail(ErrorCode.MALFORMED)
    if value["v"] != VERSION or type(value["v"]) is not int:
        raise _fail(ErrorCode.UNSUPPORTED_VERSION)
    if "alg" in keys and value.get("alg") != ALGORITHM:
        if "alg" not in value:
            raise _fail(ErrorCode.MALFORMED)
        raise _fail(ErrorCode.UNSUPPORTED_ALGORITHM)
    if set(value) - keys:
        raise _fail(ErrorCode.UNKNOWN_KEY)
    if set(value) != keys:
        raise _fail(ErrorCode.MALFORMED)
    return value


def _key(value: object) -> bytes:
    if not isinstance(value, bytes) or not public_key_ok(value):
        raise _fail(ErrorCode.BAD_KEY)
    return value


def _time(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIME:
        raise _fail(ErrorCode.TIME_RANGE)
    return value


def _signed_pair(value: object) -> tuple[bytes, bytes]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], bytes)
        or not isinstance(value[1], bytes)
    ):
        raise _fail(ErrorCode.MALFORMED)
    if not signature_shape_ok(value[1]):
        raise _fail(ErrorCode.BAD_SIGNATURE)
    return value[0], value[1]


@dataclass(frozen=True, kw_only=True)
class Link:
    """One signed delegation step. ``payload`` is the exact signed bytes."""

    issuer: bytes
    audience: bytes
    scope: Scope
    not_before: int
    expires: int
    parent: bytes  # b"" for a root link, else the parent's link id
    nonce: bytes
    payload: bytes
    signature: bytes

    @cached_property
    def id(self) -> bytes:
        return link_id(self.payload)

    @classmethod
    def decode(cls, payload: bytes, signature: bytes) -> Link:
        m = _header(_decode(payload), _LINK_KEYS)
        issuer, audience = _key(m["iss"]), _key(m["aud"])
        nbf, exp = _time(m["nbf"]), _time(m["exp"])
        if nbf >= exp:
            raise _fail(ErrorCode.TIME_RANGE)
        prf, nonce = m["prf"], m["nonce"]
        if not isinstance(prf, bytes) or len(prf) not in (0, 32):
            raise _fail(ErrorCode.MALFORMED)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise _fail(ErrorCode.MALFORMED)
        return cls(
            issuer=issuer,
            audience=audience,
            scope=Scope.from_wire(m["scope"]),
            not_before=nbf,
            expires=exp,
            parent=prf,
            nonce=nonce,
            payload=payload,
            signature=signature,
        )


@dataclass(frozen=True, kw_only=True)
class Capability:
    """A chain of links, root first. ``holder`` is the key that may invoke it."""

    links: tuple[Link, ...]

    @property
    def leaf(self) -> Link:
        return self.links[-1]

    @property
    def holder(self) -> bytes:
        return self.leaf.audience

    @property
    def scope(self) -> Scope:
        return self.leaf.scope

    def chain_wire(self) -> list[list[bytes]]:
        return [[link.payload, link.signature] for link in self.links]

    def encode(self) -> bytes:
        return pack_canonical({"v": VERSION, "chain": self.chain_wire()})

    def to_text(self) -> str:
        """A one-line printable form for files and command lines."""
        return TEXT_PREFIX + base64.urlsafe_b64encode(self.encode()).decode("ascii").rstrip("=")

    @classmethod
    def from_text(cls, text: str) -> Capability:
        text = text.strip()
        if not text.startswith(TEXT_PREFIX):
            raise _fail(ErrorCode.MALFORMED)
        body = text[len(TEXT_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise _fail(ErrorCode.MALFORMED) from None
        return decode_capability(raw)


LinkCache = Mapping[bytes, "Link"]


def _decode_chain(value: object, known: LinkCache | None = None) -> tuple[Link, ...]:
    """Decode a chain. ``known`` maps ``payload + signature`` of links decoded (and verified)
    before to their :class:`Link`, so a warm vault skips re-parsing them."""
    if not isinstance(value, list) or not value:
        raise _fail(ErrorCode.MALFORMED)
    if len(value) > MAX_CHAIN:
        raise _fail(ErrorCode.TOO_DEEP)
    links = []
    for item in value:
        payload, signature = _signed_pair(item)
        cached = known.get(payload + signature) if known is not None else None
        links.append(cached if cached is not None else Link.decode(payload, signature))
    return tuple(links)


def decode_capability(data: bytes) -> Capability:
    if len(data) > MAX_ENVELOPE_SIZE:
        raise _fail(ErrorCode.TOO_LARGE)
    m = _header(_decode(data), _CAPABILITY_KEYS)
    return Capability(links=_decode_chain(m["chain"]))


@dataclass(frozen=True, kw_only=True)
class Invocation:
    """A holder's signed request: these vaults, under this capability leaf, this exact query."""

    issuer: bytes
    vaults: tuple[bytes, ...]
    capability: bytes  # the leaf link id
    query_hash: bytes
    nonce: bytes
    issued_at: int
    expires: int
    payload: bytes
    signature: bytes

    @classmethod
    def decode(cls, payload: bytes, signature: bytes) -> Invocation:
        m = _header(_decode(payload), _INVOCATION_KEYS)
        issuer = _key(m["iss"])
        iat, exp = _time(m["iat"]), _time(m["exp"])
        if iat >= exp or exp - iat > MAX_INVOCATION_LIFETIME:
            raise _fail(ErrorCode.TIME_RANGE)
        vaults, cap, q, nonce = m["aud"], m["cap"], m["q"], m["nonce"]
        if (
            not isinstance(vaults, list)
            or not 1 <= len(vaults) <= 64
            or not all(isinstance(v, bytes) and len(v) == 32 for v in vaults)
            or vaults != sorted(set(vaults))
        ):
            raise _fail(ErrorCode.MALFORMED)
        for item, size in ((cap, 32), (q, 32), (nonce, NONCE_SIZE)):
            if not isinstance(item, bytes) or len(item) != size:
                raise _fail(ErrorCode.MALFORMED)
        return cls(
            issuer=issuer,
            vaults=tuple(vaults),
            capability=cap,
            query_hash=q,
            nonce=nonce,
            issued_at=iat,
            expires=exp,
            payload=payload,
            signature=signature,
        )


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """What a vault receives with a query: the capability chain and the invocation of it."""

    capability: Capability
    invocation: Invocation
    raw: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        return pack_canonical(
            {
                "v": VERSION,
                "chain": self.capability.chain_wire(),
                "inv": [self.invocation.payload, self.invocation.signature],
            }
        )


def decode_envelope(data: bytes, known: LinkCache | None = None) -> Envelope:
    """Parse an envelope, doing every check that needs no signature verification."""
    if len(data) > MAX_ENVELOPE_SIZE:
        raise _fail(ErrorCode.TOO_LARGE)
    m = _header(_decode(data), _ENVELOPE_KEYS)
    links = _decode_chain(m["chain"], known)
    invocation = Invocation.decode(*_signed_pair(m["inv"]))
    return Envelope(capability=Capability(links=links), invocation=invocation, raw=data)


# --- making capabilities and invocations ----------------------------------------------------


def _sign_link(
    key: IdentityKey,
    *,
    audience: bytes,
    scope: Scope,
    not_before: int,
    expires: int,
    parent: bytes,
    nonce: bytes,
) -> Link:
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"a nonce is {NONCE_SIZE} bytes")
    if not 0 <= not_before < expires <= MAX_TIME:
        raise LocalProtocolError("validity must satisfy 0 <= not_before < expires <= 2**40")
    try:
        scope.validate()
    except AuthorizationError as exc:
        raise LocalProtocolError(f"invalid scope: {exc}") from None
    if not public_key_ok(audience):
        raise LocalProtocolError("the audience is not a valid Ed25519 public key")
    payload = pack_canonical(
        {
            "v": VERSION,
            "alg": ALGORITHM,
            "iss": key.public,
            "aud": audience,
            "scope": scope.to_wire(),
            "nbf": not_before,
            "exp": expires,
            "prf": parent,
            "nonce": nonce,
        }
    )
    return Link.decode(payload, key.sign(CONTEXT_LINK + payload))


def mint(
    root: IdentityKey,
    *,
    audience: bytes,
    scope: Scope,
    not_before: int,
    expires: int,
    nonce: bytes,
) -> Capability:
    """A new capability rooted in ``root`` (a vault key or a root the vault trusts)."""
    link = _sign_link(
        root,
        audience=audience,
        scope=scope,
        not_before=not_before,
        expires=expires,
        parent=b"",
        nonce=nonce,
    )
    return Capability(links=(link,))


def delegate(
    parent: Capability,
    holder: IdentityKey,
    *,
    audience: bytes,
    scope: Scope,
    not_before: int,
    expires: int,
    nonce: bytes,
) -> Capability:
    """Offline delegation of a narrower capability. Refuses to make one a vault would reject."""
    leaf = parent.leaf
    if holder.public != leaf.audience:
        raise LocalProtocolError("only the capability's holder can delegate it")
    if len(parent.links) >= MAX_CHAIN:
        raise LocalProtocolError(f"a chain has at most {MAX_CHAIN} links")
    if not scope.within(leaf.scope):
        raise LocalProtocolError("the delegated scope must be within the parent's")
    not_before = max(not_before, leaf.not_before)
    expires = min(expires, leaf.expires)
    link = _sign_link(
        holder,
        audience=audience,
        scope=scope,
        not_before=not_before,
        expires=expires,
        parent=leaf.id,
        nonce=nonce,
    )
    return Capability(links=(*parent.links, link))


def invoke(
    capability: Capability,
    holder: IdentityKey,
    *,
    vaults: tuple[bytes, ...] | list[bytes],
    query_bytes: bytes,
    now: int,
    nonce: bytes,
    lifetime: int = 120,
) -> Envelope:
    """Sign an invocation of ``capability`` for ``query_bytes`` at ``vaults``."""
    if holder.public != capability.holder:
        raise LocalProtocolError("only the capability's holder can invoke it")
    if not 0 < lifetime <= MAX_INVOCATION_LIFETIME:
        raise LocalProtocolError(f"lifetime must be 1..{MAX_INVOCATION_LIFETIME} seconds")
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"a nonce is {NONCE_SIZE} bytes")
    payload = pack_canonical(
        {
            "v": VERSION,
            "alg": ALGORITHM,
            "iss": holder.public,
            "aud": sorted(set(vaults)),
            "cap": capability.leaf.id,
            "q": query_hash(query_bytes),
            "nonce": nonce,
            "iat": now,
            "exp": now + lifetime,
        }
    )
    invocation = Invocation.decode(payload, holder.sign(CONTEXT_INVOCATION + payload))
    envelope = Envelope(capability=capability, invocation=invocation)
    return Envelope(capability=capability, invocation=invocation, raw=envelope.encode())


def invoke_for_vault(
    capability: Capability,
    holder: IdentityKey,
    vault: bytes,
    query_bytes: bytes,
    *,
    now: int,
    nonce: bytes,
) -> Envelope:
    """The invocation a direct client sends to one vault (``vault``: the id its hello gave).
    Refuses, before signing anything, a vault the capability does not name."""
    if vault not in capability.scope.vaults:
        raise VaultError(ErrorCode.WRONG_VAULT, "this vault is not one the capability names")
    return invoke(capability, holder, vaults=[vault], query_bytes=query_bytes, now=now, nonce=nonce)
