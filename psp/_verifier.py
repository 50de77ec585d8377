"""The vault's authorization check: an envelope and query bytes in, an :class:`Authorization` out.

Order (RFC-NOTES §9.2.5): decode and every structural check first (no signature work), then
authority (trusted root, chain links, scope narrowing), revocation, time, vault, query hash,
replay, and only then signatures. A nonce enters the replay set only once everything passed, so
unsigned garbage cannot fill it. Link signatures already verified are cached by the hash of the
signed bytes (bounded), so a warm request costs one signature verification.

The clock is injected: every call takes ``now`` (integer seconds).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._capability import (
    MAX_CHAIN,
    Capability,
    Link,
    decode_envelope,
    query_hash,
)
from ._ed25519 import CONTEXT_INVOCATION, CONTEXT_LINK, verify_in_context
from ._errors import AuthorizationError, ErrorCode
from ._scope import Scope

if TYPE_CHECKING:
    from ._query import Query
    from ._replication import ReplicateQuery

__all__ = ["Authorization", "Replay", "ReplaySet", "Verifier", "CLOCK_SKEW"]

CLOCK_SKEW = 30  # seconds an invocation's iat may lie in the vault's future


@dataclass(frozen=True, kw_only=True)
class Authorization:
    """What an accepted invocation grants: the leaf scope, for the holder, for one query."""

    holder: bytes
    scope: Scope
    chain: tuple[bytes, ...]  # link ids, root first
    nonce: bytes
    expires: int


class Replay(Protocol):
    """What the verifier needs of a replay set (the vault's keeps it in its store)."""

    def __contains__(self, nonce: object) -> bool: ...
    def __len__(self) -> int: ...
    def add(self, nonce: bytes, expires: int) -> None: ...
    def prune(self, now: int) -> None: ...


class ReplaySet:
    """Nonces of accepted invocations, each kept until its invocation expires."""

    def __init__(self) -> None:
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: bytes, expires: int) -> None:
        self._expiry[nonce] = expires
        heapq.heappush(self._heap, (expires, nonce))

    def prune(self, now: int) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, nonce = heapq.heappop(self._heap)
            self._expiry.pop(nonce, None)


class Verifier:
    """Authorizes invocations for one vault.

    ``trusted_roots`` are the keys a chain may start at (the vault's own key is always one).
    ``revoked`` is the set of revoked link ids (the vault adds to it as revocations arrive).
    """

    def __init__(
        self,
        vault_id: bytes,
        *,
        trusted_roots: Iterable[bytes] = (),
        revoked: Iterable[bytes] = (),
        cache_size: int = 4096,
        replay: Replay | None = None,
    ) -> None:
        self.vault_id = vault_id
        self.trusted_roots = frozenset({vault_id, *trusted_roots})
        self.revoked: set[bytes] = set(revoked)
        self.replay: Replay = ReplaySet() if replay is None else replay
        self._verified: OrderedDict[bytes, Link] = OrderedDict()
        # Chains (by link ids) whose structure and every signature already checked out.
        self._chains: OrderedDict[tuple[tuple[bytes, bytes], ...], None] = OrderedDict()
        self._cache_size = cache_size
        # Query bytes and chain link ids -> (decoded query, row limit): filled by ``admit``.
        self.permits: dict[tuple[bytes, tuple[bytes, ...]], tuple[Query | ReplicateQuery, int]] = {}

    @property
    def cache_size(self) -> int:
        return self._cache_size

    def revoke(self, link: bytes) -> None:
        self.revoked.add(link)

    def authorize(self, envelope_bytes: bytes, query_bytes: bytes, *, now: int) -> Authorization:
        """Accept or raise :class:`AuthorizationError` with a stable code."""
        envelope = decode_envelope(envelope_bytes, self._verified)
        capability, invocation = envelope.capability, envelope.invocation
        # Keyed by the exact signed bytes (payload and signature), never by ids alone.
        signed = tuple((link.payload, link.signature) for link in capability.links)
        known_chain = signed in self._chains
        if not known_chain:
            self._check_chain(capability)
        if invocation.capability != capability.leaf.id:
            raise AuthorizationError(ErrorCode.BROKEN_CHAIN)
        if invocation.issuer != capability.holder:
            raise AuthorizationError(ErrorCode.HOLDER_MISMATCH)
        if any(link.id in self.revoked for link in capability.links):
            raise AuthorizationError(ErrorCode.REVOKED)
        for link in capability.links:
            if now < link.not_before:
                raise AuthorizationError(ErrorCode.NOT_YET_VALID)
            if now >= link.expires:
                raise AuthorizationError(ErrorCode.EXPIRED)
        if invocation.issued_at > now + CLOCK_SKEW:
            raise AuthorizationError(ErrorCode.NOT_YET_VALID)
        if now >= invocation.expires:
            raise AuthorizationError(ErrorCode.EXPIRED)
        if self.vault_id not in invocation.vaults or any(
            self.vault_id not in link.scope.vaults for link in capability.links
        ):
            raise AuthorizationError(ErrorCode.WRONG_VAULT)
        if query_hash(query_bytes) != invocation.query_hash:
            raise AuthorizationError(ErrorCode.QUERY_MISMATCH)
        self.replay.prune(now)
        if invocation.nonce in self.replay:
            raise AuthorizationError(ErrorCode.REPLAYED)
        # Signatures last: everything above is cheap and needs no secret-dependent work.
        if not known_chain:
            for link in capability.links:
                self._verify_link(link)
        if not verify_in_context(
            invocation.issuer, CONTEXT_INVOCATION, invocation.payload, invocation.signature
        ):
            raise AuthorizationError(ErrorCode.BAD_SIGNATURE)
        self.replay.add(invocation.nonce, invocation.expires)
        if not known_chain:
            self._chains[signed] = None
            if len(self._chains) > self._cache_size:
                self._chains.popitem(last=False)
        return Authorization(
            holder=invocation.issuer,
            scope=capability.scope,
            chain=tuple(link.id for link in capability.links),
            nonce=invocation.nonce,
            expires=invocation.expires,
        )

    def _check_chain(self, capability: Capability) -> None:
        links = capability.links
        if len(links) > MAX_CHAIN:
            raise AuthorizationError(ErrorCode.TOO_DEEP)
        root = links[0]
        if root.parent != b"":
            raise AuthorizationError(ErrorCode.BROKEN_CHAIN)
        if root.issuer not in self.trusted_roots:
            raise AuthorizationError(ErrorCode.UNTRUSTED_ROOT)
        for parent, child in itertools.pairwise(links):
            if child.parent != parent.id or child.issuer != parent.audience:
                raise AuthorizationError(ErrorCode.BROKEN_CHAIN)
            if (
                not child.scope.within(parent.scope)
                or child.not_before < parent.not_before
                or child.expires > parent.expires
            ):
                raise AuthorizationError(ErrorCode.SCOPE_WIDENED)

    def _verify_link(self, link: Link) -> None:
        # Keyed by the exact signed bytes: the issuer key is inside the payload.
        key = link.payload + link.signature
        if self._verified.get(key) is link:
            self._verified.move_to_end(key)
            return
        if not verify_in_context(link.issuer, CONTEXT_LINK, link.payload, link.signature):
            raise AuthorizationError(ErrorCode.BAD_SIGNATURE)
        self._verified[key] = link
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
