"""What a client sends through an aggregator, without I/O (RFC-NOTES §10.4): one signed
invocation per target vault, and the resume cursor that lives with the client.

The aggregator holds no key and no state, so everything it relays is made here: for each
target, the capability that names the vault, the query (with that vault's ``as_of`` and
``offset`` when resuming) and an invocation addressed to that vault alone — so a vault that
receives it cannot replay it elsewhere, and a resumed page re-pins each vault where it stopped.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ppn import IdentityKey
from ppn.wire import EncodingError, pack_canonical, unpack_canonical

from .._capability import Capability, invoke
from .._errors import LocalProtocolError
from .._query import Query
from ._connection import Target

__all__ = ["AggregateCursor", "VaultAddress", "plan_targets", "query_for_ordering"]

CURSOR_PREFIX = "pspagg1."


@dataclass(frozen=True, kw_only=True)
class VaultAddress:
    """A target: the vault's id (its public key) and where it listens."""

    vault: bytes
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class AggregateCursor:
    """Where each unfinished vault resumes: vault id → ``(as_of, offset)`` (``as_of`` 0: not
    pinned yet). Vaults that are not listed are done."""

    positions: tuple[tuple[bytes, int, int], ...]

    def get(self, vault: bytes) -> tuple[int, int] | None:
        for v, as_of, offset in self.positions:
            if v == vault:
                return as_of, offset
        return None

    def to_text(self) -> str:
        raw = pack_canonical([[v, a, o] for v, a, o in self.positions])
        return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def from_text(cls, text: str) -> AggregateCursor:
        text = text.strip()
        if not text.startswith(CURSOR_PREFIX):
            raise ValueError("an aggregate cursor starts with 'pspagg1.'")
        body = text[len(CURSOR_PREFIX) :]
        try:
            value = unpack_canonical(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError, EncodingError):
            raise ValueError("not a valid aggregate cursor") from None
        if not isinstance(value, list) or not all(
            isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], bytes)
            and len(e[0]) == 32
            and all(type(x) is int and 0 <= x < 2**63 for x in e[1:])
            for e in value
        ):
            raise ValueError("not a valid aggregate cursor")
        return cls(positions=tuple((e[0], e[1], e[2]) for e in value))


def query_for_ordering(query: Query) -> Query:
    """An ordered merge needs each row's order field: add it to ``select`` if missing."""
    if query.order is not None and query.select and query.order[0] not in query.select:
        return replace(query, select=(*query.select, query.order[0]))
    return query


def _capability_for(vault: bytes, capabilities: Sequence[Capability]) -> Capability:
    for cap in capabilities:
        if vault in cap.scope.vaults:
            return cap
    raise LocalProtocolError(f"no capability names vault {base64.b64encode(vault).decode()}")


def plan_targets(
    key: IdentityKey,
    capabilities: Sequence[Capability],
    vaults: Iterable[VaultAddress],
    query: Query,
    *,
    request_id: int,
    now: int,
    rng: Callable[[int], bytes],
    cursor: AggregateCursor | None = None,
    lifetime: int = 120,
) -> tuple[list[VaultAddress], list[Target]]:
    """Sign one invocation per vault (only the cursor's vaults when resuming). Returns the
    vaults in target order and the ``tgt`` frames for them."""
    query = query_for_ordering(query)
    chosen: list[VaultAddress] = []
    targets: list[Target] = []
    seen: set[bytes] = set()
    for va in vaults:
        if va.vault in seen:
            raise LocalProtocolError("a vault is listed twice")
        seen.add(va.vault)
        q = query
        if cursor is not None:
            position = cursor.get(va.vault)
            if position is None:
                continue
            q = replace(query, as_of=position[0], offset=position[1])
        q_bytes = q.encode()
        envelope = invoke(
            _capability_for(va.vault, capabilities),
            key,
            vaults=[va.vault],
            query_bytes=q_bytes,
            now=now,
            nonce=rng(16),
            lifetime=lifetime,
        )
        targets.append(
            Target(
                request_id=request_id,
                index=len(targets),
                vault=va.vault,
                address=va.address,
                envelope=envelope.raw,
                query=q_bytes,
            )
        )
        chosen.append(va)
    return chosen, targets
