"""PSP, the PointSav Protocol: capability-based queries to per-entity WORM vaults (VM-Toteboxes),
fanned out by a stateless aggregator (VM-Orchestration).

Capabilities (``mint``, ``delegate``, ``invoke``), the vault's check (``Verifier``, ``admit``),
queries (``Query``), and the wire protocol cores (``ClientConnection``, ``ServerConnection``).
The trio adapter is ``psp._trio`` (imported on demand so ``import psp`` stays light); the asyncio
client is ``psp._asyncio``, exported as :class:`AsyncioVaultClient` and :func:`query_vault_asyncio`
(loaded on first use; RFC-NOTES §12). Aggregation, the fan-out through VM-Orchestration, is
``psp.aggregation``; its core names are exported here too, loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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
    ReplicaMark,
    Request,
    RowBatch,
    RowDigest,
    ServerHello,
    decode_message,
    encode_message,
)
from ._query import Aggregate, Filter, Query, check_permitted, decode_query
from ._replication import ReplicaChain, ReplicateQuery, ReplicationError
from ._scope import ANY, OPERATIONS, Scope
from ._verifier import Authorization, ReplaySet, Verifier

if TYPE_CHECKING:
    from ._asyncio import (
        AsyncioVaultClient,
        AsyncioVaultServer,
        query_vault_asyncio,
        serve_vault_asyncio,
    )
    from ._capability import invoke_for_vault
    from ._io_vault import Vault
    from ._trio import QueryResult, Response, VaultClient, query_vault, serve_vault
    from ._trio_replica import ReplicaFollower
    from .aggregation import (
        AggregateCursor,
        Aggregation,
        AggregatorConnection,
        Mode,
        OrchestrationClientConnection,
        TargetStatus,
        VaultAddress,
        VaultStatus,
        plan_targets,
    )

# Loaded on first use, so ``import psp`` loads neither asyncio nor the aggregation package.
_LAZY = {
    "AsyncioVaultClient": "psp._asyncio",
    "query_vault_asyncio": "psp._asyncio",
    # The embedding API (issue 20; RFC-NOTES §12): serve and query a vault under either loop.
    "serve_vault_asyncio": "psp._asyncio",
    "AsyncioVaultServer": "psp._asyncio",
    "Vault": "psp._io_vault",
    "invoke_for_vault": "psp._capability",
    "serve_vault": "psp._trio",
    "query_vault": "psp._trio",
    "VaultClient": "psp._trio",
    "QueryResult": "psp._trio",
    "Response": "psp._trio",
    "ReplicaFollower": "psp._trio_replica",
    "AggregateCursor": "psp.aggregation",
    "Aggregation": "psp.aggregation",
    "AggregatorConnection": "psp.aggregation",
    "Mode": "psp.aggregation",
    "OrchestrationClientConnection": "psp.aggregation",
    "TargetStatus": "psp.aggregation",
    "VaultAddress": "psp.aggregation",
    "VaultStatus": "psp.aggregation",
    "plan_targets": "psp.aggregation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'psp' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ANY",
    "AsyncioVaultClient",
    "AsyncioVaultServer",
    "QueryResult",
    "ReplicaFollower",
    "Response",
    "Vault",
    "VaultClient",
    "invoke_for_vault",
    "query_vault",
    "query_vault_asyncio",
    "serve_vault",
    "serve_vault_asyncio",
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
    "ReplicaMark",
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
    "ReplicaChain",
    "ReplicateQuery",
    "ReplicationError",
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

# PSP aggregation (RFC-NOTES §10): the merge, the client's plan and cursor, the wire cores; the
# whole aggregation API, the trio server, client and pool included, is psp.aggregation.
__all__ += [
    "AggregateCursor",
    "Aggregation",
    "AggregatorConnection",
    "Mode",
    "OrchestrationClientConnection",
    "TargetStatus",
    "VaultAddress",
    "VaultStatus",
    "plan_targets",
]
