"""PSP aggregation: the protocol VM-Orchestration speaks, fanning one holder's invocations out to
many vaults and merging the answers (RFC-NOTES §10). It holds no data and no authority.

The public API, each name loaded on first use (``import psp.aggregation`` loads nothing else):

- the sans-IO cores: :class:`AggregatorConnection` (the aggregator's side of a client
  connection), :class:`OrchestrationClientConnection` (the client's), and their events;
- the merge and the plan: :class:`Aggregation`, :class:`Mode`, :class:`VaultStatus`,
  :class:`TargetStatus`, :func:`plan_targets`, :class:`VaultAddress`, :class:`AggregateCursor`;
- the trio adapter: :func:`serve_orchestration` / :func:`handle_client` (the server, whose
  ``fanout`` is ``"epoll"`` or ``"tasks"``), :class:`VaultPool` (its vault connections),
  :class:`OrchestrationClient` / :func:`query_via` (the client) and their results.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._asyncio import (
        AsyncioAggregatorServer,
        AsyncioVaultPool,
        serve_orchestration_asyncio,
    )
    from ._connection import (
        AggregateRequest,
        AggregatorConnection,
        AggregatorHello,
        Done,
        MergedRows,
        OrchestrationClientConnection,
        Phase,
        Target,
        TargetReport,
    )
    from ._merge import Aggregation, Mode, TargetStatus, VaultStatus, default_mode
    from ._plan import AggregateCursor, VaultAddress, plan_targets
    from ._trio_client import AggregateResult, AggregationFailed, OrchestrationClient, query_via
    from ._trio_pool import VaultPool
    from ._trio_server import AllowList, Fanout, RequestLimits, handle_client, serve_orchestration

_LAZY = {
    "AggregateRequest": "_connection",
    "AggregatorConnection": "_connection",
    "AggregatorHello": "_connection",
    "Done": "_connection",
    "MergedRows": "_connection",
    "OrchestrationClientConnection": "_connection",
    "Phase": "_connection",
    "Target": "_connection",
    "TargetReport": "_connection",
    "Aggregation": "_merge",
    "Mode": "_merge",
    "TargetStatus": "_merge",
    "VaultStatus": "_merge",
    "default_mode": "_merge",
    "AggregateCursor": "_plan",
    "VaultAddress": "_plan",
    "plan_targets": "_plan",
    "AggregateResult": "_trio_client",
    "AggregationFailed": "_trio_client",
    "OrchestrationClient": "_trio_client",
    "query_via": "_trio_client",
    "VaultPool": "_trio_pool",
    "Fanout": "_trio_server",
    "handle_client": "_trio_server",
    "serve_orchestration": "_trio_server",
    # The embedding API (issue 20; RFC-NOTES §12): the aggregator under asyncio, and the
    # server options both loops take.
    "AsyncioAggregatorServer": "_asyncio",
    "AsyncioVaultPool": "_asyncio",
    "serve_orchestration_asyncio": "_asyncio",
    "AllowList": "_trio_server",
    "RequestLimits": "_trio_server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'psp.aggregation' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AllowList",
    "AsyncioAggregatorServer",
    "AsyncioVaultPool",
    "RequestLimits",
    "serve_orchestration_asyncio",
    "AggregateCursor",
    "AggregateRequest",
    "AggregateResult",
    "Aggregation",
    "AggregationFailed",
    "AggregatorConnection",
    "AggregatorHello",
    "Done",
    "Fanout",
    "MergedRows",
    "Mode",
    "OrchestrationClient",
    "OrchestrationClientConnection",
    "Phase",
    "Target",
    "TargetReport",
    "TargetStatus",
    "VaultAddress",
    "VaultPool",
    "VaultStatus",
    "default_mode",
    "handle_client",
    "plan_targets",
    "query_via",
    "serve_orchestration",
]
