"""Admission of one request at a vault: authorize the invocation, then decode and permit the query.

This is the whole decision a vault makes before touching its store, and what the attack sample
suite (tests/vectors/psp-attacks.json) exercises: bytes and a vault context in, an
:class:`Admitted` or a stable error code out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._query import Query, check_permitted
from ._replication import ReplicateQuery, decode_request_query, permit_replicate
from ._verifier import Authorization, Verifier

__all__ = ["Admitted", "admit"]


@dataclass(frozen=True, kw_only=True)
class Admitted:
    authorization: Authorization
    query: Query | ReplicateQuery
    row_limit: int  # for a replicate query: the most entries in the answer

    @property
    def query_id(self) -> bytes:
        """The invocation nonce: unique per accepted request at this vault."""
        return self.authorization.nonce


def admit(verifier: Verifier, envelope: bytes, query_bytes: bytes, *, now: int) -> Admitted:
    """Raise :class:`~psp.AuthorizationError` or :class:`~psp.QueryError`, or admit.

    The query's decode and scope check depend only on the exact query bytes and the chain's link
    ids (which fix the leaf scope), so a success is remembered under that pair: a holder repeating
    a query under the same capability pays neither again. Failures are never remembered, and the
    invocation itself (signature, time, replay) is checked on every request.
    """
    authorization = verifier.authorize(envelope, query_bytes, now=now)
    cache = verifier.permits
    key = (query_bytes, authorization.chain)
    permit = cache.get(key)
    if permit is None:
        query = decode_request_query(query_bytes)
        if isinstance(query, ReplicateQuery):
            permit = (query, permit_replicate(query, authorization.scope))
        else:
            permit = (query, check_permitted(query, authorization.scope))
        cache[key] = permit
        if len(cache) > verifier.cache_size:
            del cache[next(iter(cache))]  # oldest first: insertion order
    return Admitted(authorization=authorization, query=permit[0], row_limit=permit[1])
