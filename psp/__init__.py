"""PSP, the PointSav Protocol: capability-based queries to per-entity WORM vaults (VM-Toteboxes),
fanned out by a stateless aggregator (VM-Orchestration).

Capabilities (``mint``, ``delegate``, ``invoke``), the vault's check (``Verifier``, ``admit``),
queries (``Query``), and the wire protocol cores (``ClientConnection``, ``ServerConnection``).
The trio adapter is ``psp._trio`` (imported on demand so ``import psp`` stays light).
"""

from __future__ import annotations

from ._admit import Admitted, admit
from ._capability import (
    Capability,
    Envelope,
    Invocation,
    Link,
    decode_capability,
    decode_envelope,
    delegate,
    invoke,
    link_id,
    mint,
    query_hash,
)
from ._connection import ClientConnection, ConnectionClosed, ServerConnection, State
from ._errors import (
    AuthorizationError,
    ErrorCode,
    LocalProtocolError,
    PSPError,
    QueryError,
    RemoteProtocolError,
    VaultError,
)
from ._messages import (
    MAX_FRAME,
    PROTOCOL_VERSIONS,
    Cancel,
    ClientHello,
    Credit,
    Cursor,
    End,
    Error,
    Header,
    Request,
    RowBatch,
    RowDigest,
    ServerHello,
    decode_message,
    encode_message,
)
from ._query import Aggregate, Filter, Query, check_permitted, decode_query
from ._scope import ANY, OPERATIONS, Scope
from ._verifier import Authorization, ReplaySet, Verifier

__all__ = [
    "ANY",
    "MAX_FRAME",
    "PROTOCOL_VERSIONS",
    "Cancel",
    "ClientConnection",
    "ClientHello",
    "ConnectionClosed",
    "Credit",
    "Cursor",
    "End",
    "Error",
    "Header",
    "Request",
    "RowBatch",
    "RowDigest",
    "ServerConnection",
    "ServerHello",
    "State",
    "decode_message",
    "encode_message",
    "OPERATIONS",
    "Admitted",
    "Aggregate",
    "Authorization",
    "AuthorizationError",
    "Capability",
    "Envelope",
    "ErrorCode",
    "Filter",
    "Invocation",
    "Link",
    "LocalProtocolError",
    "PSPError",
    "Query",
    "QueryError",
    "RemoteProtocolError",
    "ReplaySet",
    "Scope",
    "VaultError",
    "Verifier",
    "admit",
    "check_permitted",
    "decode_capability",
    "decode_envelope",
    "decode_query",
    "delegate",
    "invoke",
    "link_id",
    "mint",
    "query_hash",
]
