"""An in-memory WireGuard device with the semantics of the real ones, for unit tests.

It applies operations the way wireguard-go and the kernel do (update-only never creates a peer,
allowed IPs move to the peer written last, remove of a missing peer is a no-op), counts writes,
can fail after N operations (a partial apply, like ``kill -9`` mid-request), and lets a test
simulate traffic: handshakes and roaming.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ._model import (
    DeviceError,
    DeviceState,
    Endpoint,
    InterfaceConfig,
    IPNetwork,
    PeerState,
    key_fingerprint,
    public_key_of,
)
from ._plan import AddPeer, Operation, RemovePeer, SetInterface, UpdatePeer

__all__ = ["FakeBackend", "apply_to_config", "apply_to_state"]


def _take_prefixes(peers: dict[bytes, PeerState], owner: bytes, nets: Sequence[IPNetwork]) -> None:
    taken = set(nets)
    for key, state in list(peers.items()):
        if key != owner and taken.intersection(state.allowed_ips):
            kept = tuple(n for n in state.allowed_ips if n not in taken)
            peers[key] = dataclasses.replace(state, allowed_ips=kept)


def apply_to_state(state: DeviceState, op: Operation) -> DeviceState:
    """The device after one operation (pure)."""
    peers = dict(state.peers)
    if isinstance(op, SetInterface):
        return dataclasses.replace(
            state,
            public_key=state.public_key
            if op.private_key is None
            else public_key_of(op.private_key),
            listen_port=state.listen_port if op.listen_port is None else op.listen_port,
            fwmark=state.fwmark if op.fwmark is None else op.fwmark,
        )
    if isinstance(op, RemovePeer):
        peers.pop(op.public_key, None)
    elif isinstance(op, AddPeer):
        p = op.peer
        old = peers.get(p.public_key) or PeerState(public_key=p.public_key)
        _take_prefixes(peers, p.public_key, p.allowed_ips)
        peers[p.public_key] = dataclasses.replace(
            old,
            preshared_fingerprint=p.preshared_fingerprint
            if p.preshared_key is not None
            else old.preshared_fingerprint,
            endpoint=p.endpoint or old.endpoint,
            persistent_keepalive=p.persistent_keepalive or old.persistent_keepalive,
            allowed_ips=p.allowed_ips,
        )
    else:
        assert isinstance(op, UpdatePeer)
        old_state = peers.get(op.public_key)
        if old_state is None:
            return state  # update_only: never creates a peer
        changes: dict[str, object] = {}
        if op.endpoint is not None:
            changes["endpoint"] = op.endpoint
        if op.preshared_key is not None:
            psk = op.preshared_key
            changes["preshared_fingerprint"] = key_fingerprint(psk) if any(psk) else None
        if op.persistent_keepalive is not None:
            changes["persistent_keepalive"] = op.persistent_keepalive
        if op.allowed_ips is not None:
            _take_prefixes(peers, op.public_key, op.allowed_ips)
            changes["allowed_ips"] = op.allowed_ips
        peers[op.public_key] = dataclasses.replace(old_state, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(state, peers=peers)


def apply_to_config(config: InterfaceConfig, op: Operation) -> InterfaceConfig:
    """The configuration after one operation (pure): what a config-only backend writes."""
    if isinstance(op, SetInterface):
        return dataclasses.replace(
            config,
            private_key=config.private_key if op.private_key is None else op.private_key,
            listen_port=config.listen_port if op.listen_port is None else op.listen_port,
            fwmark=config.fwmark if op.fwmark is None else op.fwmark,
        )
    peers = {p.public_key: p for p in config.peers}
    if isinstance(op, RemovePeer):
        peers.pop(op.public_key, None)
    elif isinstance(op, AddPeer):
        peers[op.peer.public_key] = op.peer
    else:
        assert isinstance(op, UpdatePeer)
        old = peers.get(op.public_key)
        if old is None:
            return config
        changes: dict[str, object] = {}
        if op.endpoint is not None:
            changes["endpoint"] = op.endpoint
        if op.preshared_key is not None:
            changes["preshared_key"] = op.preshared_key if any(op.preshared_key) else None
        if op.persistent_keepalive is not None:
            changes["persistent_keepalive"] = op.persistent_keepalive
        if op.allowed_ips is not None:
            changes["allowed_ips"] = op.allowed_ips
        peers[op.public_key] = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(config, peers=tuple(peers.values()))


class FakeBackend:
    """An in-memory device. ``writes`` counts applied operations; ``fail_after`` makes the
    next :meth:`apply` stop with :class:`DeviceError` after that many operations."""

    kind = "fake"
    description = "in-memory fake device (tests)"

    def __init__(self, state: DeviceState | None = None, *, name: str = "fake0") -> None:
        self.state = state or DeviceState(name=name)
        self.writes = 0
        self.apply_calls = 0
        self.fail_after: int | None = None

    def read(self) -> DeviceState:
        return self.state

    def apply(self, ops: Sequence[Operation]) -> None:
        self.apply_calls += 1
        for index, op in enumerate(ops):
            if self.fail_after is not None and index >= self.fail_after:
                self.fail_after = None
                raise DeviceError("fake device failed mid-apply", 5)
            self.state = apply_to_state(self.state, op)
            self.writes += 1

    # Traffic simulation -------------------------------------------------------------------

    def handshake(self, public_key: bytes, at: float, *, rx: int = 92, tx: int = 148) -> None:
        """Pretend the peer completed a handshake at ``at`` and moved some bytes."""
        peer = self.state.peers[public_key]
        self._put(
            dataclasses.replace(
                peer, last_handshake=at, rx_bytes=peer.rx_bytes + rx, tx_bytes=peer.tx_bytes + tx
            )
        )

    def roam(self, public_key: bytes, endpoint: Endpoint) -> None:
        """Pretend an authenticated packet from the peer arrived from ``endpoint``."""
        self._put(dataclasses.replace(self.state.peers[public_key], endpoint=endpoint))

    def _put(self, peer: PeerState) -> None:
        peers = dict(self.state.peers)
        peers[peer.public_key] = peer
        self.state = dataclasses.replace(self.state, peers=peers)
