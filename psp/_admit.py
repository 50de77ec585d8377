"""Admission of one request at a vault: authorize the invocation, then decode and permit the query.

This is the whole decision a vault makes before touching its store, and what the attack sample
suite (tests/vectors/psp-attacks.json) exercises: bytes and a vault context in, an
:class:`Admitted` or a stable error code out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._query import Query, check_permitted, decode_query
from ._verifier import Authorization, Verifier

__all__ = ["Admitted", "admit"]


@dataclass(frozen=True, kw_only=True)
class Admitted:
    authorization: Authorization
    query: Query
    row_limit: int

    @property
    def query_id(self) -> bytes:
        """The invocation nonce: unique per accepted request at this vault."""
        return self.authorization.nonce


def admit(verifier: Verifier, envelope: bytes, query_bytes: bytes, *, now: int) -> Admitted:
    """Raise :class:`~psp.AuthorizationError` or :class:`~psp.QueryError`, or admit."""
    authorization = verifier.authorize(envelope, query_bytes, now=now)
    query = decode_query(query_bytes)
    return Admitted(
        authorization=authorization,
        query=query,
        row_limit=check_permitted(query, authorization.scope),
    )
