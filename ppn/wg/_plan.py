"""Reconcile planning: desired config + device state → the fewest operations, as plain data.

:func:`plan` is pure (time comes in as ``now``). Its guarantees (RFC-NOTES §6.5):

* a device that already matches yields zero operations, so a second pass writes nothing;
* a peer that did not change gets no operation at all, so its session, handshake, counters
  and endpoint are untouched; peers that did change get an *update-only* operation carrying just
  the fields that differ; the device's peer list is never replaced wholesale;
* an endpoint the peer has roamed to is kept unless the desired endpoint itself changed since
  the last pass (``previous``) or the peer has had no handshake for ``stale_after`` seconds;
* only peers for which ``owned`` says yes are added, changed or removed; the others are
  reported in :attr:`Plan.foreign_peers` and left alone;
* a desired state where one prefix belongs to two peers (or to a peer this node does not own)
  raises :class:`DesiredStateError` before anything is planned, so nothing is touched;
* every operation is idempotent, so re-planning after a partial apply (or ``kill -9``)
  converges without tearing anything down.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

from ._model import (
    DEFAULT_STALE_AFTER,
    DesiredStateError,
    DeviceState,
    Endpoint,
    InterfaceConfig,
    IPNetwork,
    PeerConfig,
    PeerState,
    key_text,
    network_text,
    public_key_of,
    short_key,
)

__all__ = [
    "KnownUnchanged",
    "QuickCheck",
    "AddPeer",
    "Operation",
    "Ownership",
    "Plan",
    "RemovePeer",
    "SetInterface",
    "UpdatePeer",
    "check_applied",
    "check_prefixes",
    "describe",
    "operation_to_json",
    "plan",
]


@dataclass(frozen=True, kw_only=True)
class SetInterface:
    """Change interface fields; ``None`` means leave that field alone."""

    private_key: bytes | None = field(default=None, repr=False)
    listen_port: int | None = None
    fwmark: int | None = None


@dataclass(frozen=True, kw_only=True)
class AddPeer:
    """Create a peer with all its settings (idempotent: allowed IPs are replaced, not added)."""

    peer: PeerConfig


@dataclass(frozen=True, kw_only=True)
class UpdatePeer:
    """Change an existing peer (update-only: never creates it). ``None`` fields stay as they are;
    ``allowed_ips`` replaces the whole list; ``preshared_key`` all-zero removes the key."""

    public_key: bytes
    endpoint: Endpoint | None = None
    preshared_key: bytes | None = field(default=None, repr=False)
    persistent_keepalive: int | None = None
    allowed_ips: tuple[IPNetwork, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class RemovePeer:
    public_key: bytes


Operation = Union[SetInterface, AddPeer, UpdatePeer, RemovePeer]  # noqa: UP007 (runtime alias)

# Who this node manages: a set of public keys, a predicate, or None for "every peer".
Ownership = Union[Collection[bytes], Callable[[bytes], bool], None]  # noqa: UP007


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The result of :func:`plan`. Iterating or ``len()`` goes over the operations."""

    operations: tuple[Operation, ...]
    foreign_peers: tuple[bytes, ...] = ()  # on the device, not ours: reported, left alone
    kept_endpoints: tuple[bytes, ...] = ()  # peers whose roamed endpoint was preserved

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def __len__(self) -> int:
        return len(self.operations)

    def __bool__(self) -> bool:
        return bool(self.operations)


def _owner_predicate(owned: Ownership) -> Callable[[bytes], bool]:
    if owned is None:
        return lambda _key: True
    if callable(owned):
        return owned
    keys = owned if isinstance(owned, (set, frozenset)) else frozenset(owned)
    return keys.__contains__


@runtime_checkable
class QuickCheck(Protocol):
    """What a device state's peer mapping may offer the planner: a cheap, exact test that the
    device already has ``peer`` configured as desired (the UAPI reader compares text). False
    only means "compare field by field"."""

    def unchanged(self, peer: PeerConfig) -> bool: ...


def _quick_check(peers: Mapping[bytes, PeerState]) -> Callable[[PeerConfig], bool] | None:
    return peers.unchanged if isinstance(peers, QuickCheck) else None


@runtime_checkable
class KnownUnchanged(Protocol):
    """What a device state's peer mapping may also offer: the peers its read already found
    configured exactly as a given desired object (the kernel reader compares each nest on
    bytes with what the backend remembers, ARCHITECTURE §8.1). A desired peer that *is* the
    object mapped to its key needs no further look; any other is asked :class:`QuickCheck`."""

    @property
    def known_unchanged(self) -> Mapping[bytes, PeerConfig]: ...


def _known_unchanged(peers: Mapping[bytes, PeerState]) -> Mapping[bytes, PeerConfig]:
    return peers.known_unchanged if isinstance(peers, KnownUnchanged) else {}


def check_prefixes(
    desired: InterfaceConfig,
    foreign: Mapping[bytes, PeerState] | None = None,
    *,
    checked: bool = False,
) -> None:
    """Reject a prefix claimed by two desired peers, or by a desired and a foreign peer.

    WireGuard would silently move the prefix to whichever peer was written last. ``checked``
    says ``desired`` itself was found free of duplicates before (a long-lived caller re-plans
    the same frozen state pass after pass: :class:`~ppn.wg.Reconciler` remembers it).
    """
    # A frozen state found free of duplicates stays so: the mark is kept on the object itself
    # (a long-lived caller re-plans one state pass after pass, whichever Reconciler runs it).
    checked = checked or desired.__dict__.get("_prefixes_distinct", False)
    # Keyed by canonical text: equal prefixes have equal texts, and a parsed peer's texts
    # come without building network objects.
    owner: dict[str, bytes] = {}
    if not checked and not foreign:
        # The common case at C speed: no text twice. Otherwise the loop below names the peers
        # (a peer that lists one prefix twice is not a conflict, only slower).
        texts = [net for peer in desired.peers for net in peer.prefix_texts()]
        if len(set(texts)) == len(texts):
            object.__setattr__(desired, "_prefixes_distinct", True)
            return
    if not checked or foreign:
        for peer in desired.peers:
            for net in peer.prefix_texts():
                other = owner.setdefault(net, peer.public_key)
                if other != peer.public_key:
                    raise DesiredStateError(
                        f"prefix {net} is claimed by two peers ({short_key(other)} and "
                        f"{short_key(peer.public_key)}); nothing was changed"
                    )
        object.__setattr__(desired, "_prefixes_distinct", True)
    for state in (foreign or {}).values():
        for net in map(network_text, state.allowed_ips):
            if net in owner:
                raise DesiredStateError(
                    f"prefix {net} of peer {short_key(owner[net])} belongs to peer "
                    f"{short_key(state.public_key)} which this node does not manage; "
                    "nothing was changed"
                )


def plan(
    desired: InterfaceConfig,
    current: DeviceState,
    *,
    now: float,
    owned: Ownership = None,
    previous: Mapping[bytes, Endpoint | None] | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
    prefixes_checked: bool = False,
) -> Plan:
    """The operations that make ``current`` match ``desired`` (see the module docstring).

    ``previous`` maps public keys to the endpoint desired on the last successful pass (the
    roam rule needs to know whether the *desired* endpoint changed); without it, a peer with a
    fresh handshake keeps whatever endpoint it has. Endpoints must be IP literals here
    (resolve host names first). ``prefixes_checked``: see :func:`check_prefixes`.
    """
    is_owned = _owner_predicate(owned)
    wanted = desired.peer_map()
    peers = current.peers
    # Membership through the keys view: a backend's lazy mapping offers its index's own.
    present = peers.keys()
    extra = [k for k in present if k not in wanted]
    if owned is None:
        foreign: dict[bytes, PeerState] = {}
    else:
        foreign = {k: peers[k] for k in extra if not is_owned(k)}
        for key in wanted:
            if not is_owned(key):
                raise DesiredStateError(
                    f"peer {short_key(key)} is in the desired state but not owned by this node"
                )
    check_prefixes(desired, foreign, checked=prefixes_checked)
    own_key = current.public_key if desired.private_key is None else desired.public_key
    if own_key is not None and own_key in wanted:
        # WireGuard silently ignores such a peer, so it could never be verified.
        raise DesiredStateError(f"peer {short_key(own_key)} is this interface's own key")

    ops: list[Operation] = []
    iface = _interface_op(desired, current)
    if iface is not None:
        ops.append(iface)
    # Removals first: they free prefixes that later additions may take over.
    ops.extend(RemovePeer(public_key=key) for key in extra if key not in foreign)
    kept: list[bytes] = []
    # A backend may offer a cheap exact "already configured like this" test (the UAPI reader
    # compares text); a miss only means the full comparison below decides.
    unchanged = _quick_check(peers)
    known = _known_unchanged(peers).get
    for key, peer in wanted.items():
        if known(key) is peer:
            continue
        if key not in present:
            ops.append(AddPeer(peer=peer))
            continue
        if unchanged is not None and unchanged(peer):
            continue
        state = peers[key]
        op, kept_endpoint = _peer_update(peer, state, now, previous, stale_after)
        if op is not None:
            ops.append(op)
        if kept_endpoint:
            kept.append(key)
    return Plan(operations=tuple(ops), foreign_peers=tuple(foreign), kept_endpoints=tuple(kept))


def check_applied(
    desired: InterfaceConfig,
    after: DeviceState,
    applied: Plan,
    *,
    now: float,
    owned: Ownership = None,
    stale_after: float = DEFAULT_STALE_AFTER,
    whole_set: bool = True,
) -> tuple[Operation, ...]:
    """Verify a read-back after ``applied`` was written: the operations still missing (empty =
    verified). The rule (RFC-NOTES §6.5):

    * the device's peer *set* is compared in full: every desired peer is present and no owned
      peer outside the desired state is left (with ``whole_set=False``, only the writes are:
      every peer the plan added or updated is present and every peer it removed is gone, so a
      read taken a while after the apply does not blame the apply for peers others changed);
    * every peer the plan wrote (added or updated) and the interface are compared field by
      field, with the endpoints just written counting as the desired ones;
    * a peer the plan did not write is not compared again: it matched on the read just
      before the apply and nothing sent touches it (update-only operations, never
      ``replace_peers``). Re-comparing it would cost a full decode for no information.
    """
    is_owned = _owner_predicate(owned)
    wanted = desired.peer_map()
    peers = after.peers
    missing: list[Operation] = []
    iface = _interface_op(desired, after)
    if iface is not None:
        missing.append(iface)
    written = dict.fromkeys(  # a set in the plan's order
        op.peer.public_key if isinstance(op, AddPeer) else op.public_key
        for op in applied.operations
        if isinstance(op, (AddPeer, UpdatePeer))
    )
    if whole_set:
        missing.extend(
            RemovePeer(public_key=key) for key in peers if key not in wanted and is_owned(key)
        )
    else:
        missing.extend(
            op for op in applied.operations if isinstance(op, RemovePeer) and op.public_key in peers
        )
    unchanged = _quick_check(peers)
    present = peers.keys()  # a lazy mapping's own index view, as in plan()
    # Only the desired peers the plan wrote need a look, and unless the whole set is checked,
    # only they are looked at (in the plan's order): a pass that wrote a few peers of many
    # does not walk them all.
    looked_at = wanted.items() if whole_set else ((k, wanted[k]) for k in written if k in wanted)
    for key, peer in looked_at:
        if key not in present:
            if whole_set or key in written:
                missing.append(AddPeer(peer=peer))
        elif key in written and not (unchanged is not None and unchanged(peer)):
            # The endpoint just applied counts as the desired one (a live peer that roamed
            # between the write and the read-back is not a failure), as on the next pass.
            op, _kept = _peer_update(peer, peers[key], now, {key: peer.endpoint}, stale_after)
            if op is not None:
                missing.append(op)
    return tuple(missing)


def _interface_op(desired: InterfaceConfig, current: DeviceState) -> SetInterface | None:
    private_key = None
    if desired.private_key is not None and desired.public_key != current.public_key:
        private_key = desired.private_key
    listen_port = None
    # Port 0 asks for a random port: a device that already has one satisfies it.
    if desired.listen_port and desired.listen_port != current.listen_port:
        listen_port = desired.listen_port
    fwmark = None
    if desired.fwmark is not None and desired.fwmark != current.fwmark:
        fwmark = desired.fwmark
    if private_key is None and listen_port is None and fwmark is None:
        return None
    return SetInterface(private_key=private_key, listen_port=listen_port, fwmark=fwmark)


def _peer_update(
    peer: PeerConfig,
    state: PeerState,
    now: float,
    previous: Mapping[bytes, Endpoint | None] | None,
    stale_after: float,
) -> tuple[UpdatePeer | None, bool]:
    changes: dict[str, Any] = {}
    kept = False
    if peer.endpoint is not None and peer.endpoint != state.endpoint:
        # Unknown history (no record of this peer) counts as "not changed": the safe side.
        desired_changed = (
            previous is not None
            and peer.public_key in previous
            and previous[peer.public_key] != peer.endpoint
        )
        if state.endpoint is None or desired_changed or state.is_stale(now, stale_after):
            changes["endpoint"] = peer.endpoint
        else:
            kept = True  # the peer roamed and the session works: follow the peer, not the file
    if peer.preshared_fingerprint != state.preshared_fingerprint:
        changes["preshared_key"] = peer.preshared_key or bytes(32)
    if peer.persistent_keepalive != state.persistent_keepalive:
        changes["persistent_keepalive"] = peer.persistent_keepalive
    # Same order is the common case (and, with shared parsed objects, an identity check).
    if peer.allowed_ips != state.allowed_ips and (
        len(peer.allowed_ips) != len(state.allowed_ips)
        or set(peer.allowed_ips) != set(state.allowed_ips)
    ):
        changes["allowed_ips"] = peer.allowed_ips
    if not changes:
        return None, kept
    return UpdatePeer(public_key=peer.public_key, **changes), kept


def describe(op: Operation) -> str:
    """One line for humans (``--dry-run``); never shows a secret."""
    if isinstance(op, SetInterface):
        parts = []
        if op.private_key is not None:
            parts.append(f"private key (public {key_text(public_key_of(op.private_key))})")
        if op.listen_port is not None:
            parts.append(f"listen port {op.listen_port}")
        if op.fwmark is not None:
            parts.append(f"fwmark {hex(op.fwmark) if op.fwmark else 'off'}")
        return "set interface " + ", ".join(parts)
    if isinstance(op, AddPeer):
        p = op.peer
        nets = ",".join(p.prefix_texts()) or "(none)"
        text = f"add peer {key_text(p.public_key)} allowed-ips {nets}"
        if p.endpoint is not None:
            text += f" endpoint {p.endpoint}"
        if p.preshared_key is not None:
            text += " preshared-key (set)"
        if p.persistent_keepalive:
            text += f" keepalive {p.persistent_keepalive}"
        return text
    if isinstance(op, UpdatePeer):
        parts = []
        if op.endpoint is not None:
            parts.append(f"endpoint {op.endpoint}")
        if op.allowed_ips is not None:
            parts.append(f"allowed-ips {_nets(op.allowed_ips)}")
        if op.preshared_key is not None:
            parts.append("preshared-key " + ("(removed)" if not any(op.preshared_key) else "(set)"))
        if op.persistent_keepalive is not None:
            parts.append(f"keepalive {op.persistent_keepalive or 'off'}")
        return f"update peer {key_text(op.public_key)} " + ", ".join(parts)
    return f"remove peer {key_text(op.public_key)}"


def _nets(nets: tuple[IPNetwork, ...]) -> str:
    return ",".join(str(n) for n in nets) or "(none)"


def operation_to_json(op: Operation) -> dict[str, Any]:
    """A JSON-ready dict for ``--json``; secrets appear only as ``"set"``/``"removed"``."""
    if isinstance(op, SetInterface):
        out: dict[str, Any] = {"op": "set_interface"}
        if op.private_key is not None:
            out["public_key"] = key_text(public_key_of(op.private_key))
        if op.listen_port is not None:
            out["listen_port"] = op.listen_port
        if op.fwmark is not None:
            out["fwmark"] = op.fwmark
        return out
    if isinstance(op, AddPeer):
        p = op.peer
        return {
            "op": "add_peer",
            "public_key": key_text(p.public_key),
            "endpoint": None if p.endpoint is None else str(p.endpoint),
            "allowed_ips": list(p.prefix_texts()),
            "preshared_key": "set" if p.preshared_key is not None else None,
            "persistent_keepalive": p.persistent_keepalive,
        }
    if isinstance(op, UpdatePeer):
        out = {"op": "update_peer", "public_key": key_text(op.public_key)}
        if op.endpoint is not None:
            out["endpoint"] = str(op.endpoint)
        if op.allowed_ips is not None:
            out["allowed_ips"] = [str(n) for n in op.allowed_ips]
        if op.preshared_key is not None:
            out["preshared_key"] = "removed" if not any(op.preshared_key) else "set"
        if op.persistent_keepalive is not None:
            out["persistent_keepalive"] = op.persistent_keepalive
        return out
    return {"op": "remove_peer", "public_key": key_text(op.public_key)}
