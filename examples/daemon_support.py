"""What the two example daemons share, none of it I/O-framework specific: options, the state
directory, the roster the agent starts from, a WireGuard stand-in, and JSON event lines.

The daemons (``trio_daemon.py``, ``asyncio_daemon.py``) differ only in the event loop that drives
the same sans-IO cores: the join client (:mod:`genesis`), the node agent (:mod:`ppn.mesh`) and the
PSP client (:mod:`psp`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import genesis
from ppn import IdentityKey, WireGuardKeyPair, decode_key, mesh, wire
from ppn.mesh import node_address6
from psp import Capability, Query


def parse_args(argv: list[str] | None, *, loop: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"An example node daemon on {loop}: joins a mesh by code (the SAS is shown "
        "as a JSON line; answer yes/no on stdin), runs the node agent (PPN control) and queries a "
        "vault with a capability, then serves until SIGTERM/SIGINT.",
    )
    parser.add_argument("--state", type=Path, required=True, help="this node's state directory")
    parser.add_argument("--name", default="example", help="this node's name in the mesh")
    parser.add_argument("--sponsor", help="HOST:PORT of the sponsor's join window")
    parser.add_argument("--code", help="the join code the sponsor's operator reads out")
    parser.add_argument("--endpoint", action="append", default=[], help="WireGuard HOST:PORT")
    parser.add_argument("--control-listen", default="127.0.0.1:0", help="PPN control HOST:PORT")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="where a member's PPN control listens (default: its control address, port 9206)",
    )
    parser.add_argument("--vault", help="HOST:PORT of a vault to query")
    parser.add_argument("--key", type=Path, help="the holder key file the capability names")
    parser.add_argument("--cap", type=Path, help="the capability file")
    parser.add_argument("--collection", default="visits")
    return parser.parse_args(argv)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def new_node(args: argparse.Namespace) -> genesis.NodeState:
    """Fresh keys for a node that has not joined yet (written only once the join succeeds)."""
    return genesis.NodeState(
        name=args.name,
        identity=IdentityKey.generate(),
        wg=WireGuardKeyPair.generate(),
        endpoints=tuple(args.endpoint),
    )


def party(node: genesis.NodeState) -> genesis.PartyInfo:
    return genesis.PartyInfo(name=node.name, identity=node.identity.public, wg=node.wg.public)


def persist(directory: Path, node: genesis.NodeState, joined: genesis.Joined) -> None:
    state = genesis.MeshState(
        mesh_id=joined.mesh_id,
        cidr=joined.cidr,
        address=joined.member.address,
        sponsor=joined.sponsor,
        roster=joined.roster,
    )
    genesis.write_membership(directory, node, state)


@dataclass
class Membership:
    node: genesis.NodeState
    state: genesis.MeshState
    roster: mesh.Roster
    bootstrap: list[str]


def load_membership(directory: Path) -> Membership:
    node = genesis.load_node(directory)
    state = genesis.load_mesh(directory)
    if node is None or state is None:
        raise SystemExit(f"{directory} is not a mesh member")
    saved = directory / "example-roster.bin"
    records: list[mesh.Record] = []
    if saved.exists():
        records = [mesh.record_from_bytes(r) for r in wire.unpack_canonical(saved.read_bytes())]
    roster = mesh.Roster(mesh=state.mesh_id, network=state.cidr, records=records)
    others = [m.address for m in state.roster if m.identity != node.identity.public]
    return Membership(node=node, state=state, roster=roster, bootstrap=others)


def save_roster(directory: Path, roster: mesh.Roster) -> None:
    path = directory / "example-roster.bin"
    path.write_bytes(wire.pack_canonical([r.encoded for r in roster.records()]))


def control_resolver(
    peers: list[str], state: genesis.MeshState
) -> Callable[[str], tuple[str, int]]:
    """``--peer NAME=HOST:PORT``: where a member's PPN control listens (a loopback demo has no
    mesh addresses). The agent names members by their control address (RFC-NOTES §7.1) or, while
    bootstrapping, by their mesh address; both are recognised for members of the ceremony."""
    by_name = {}
    for item in peers:
        name, _, hostport = item.partition("=")
        by_name[name] = split_hostport(hostport)
    names = {}
    for m in state.roster:
        names[m.address] = m.name
        names[node_address6(state.mesh_id, m.identity)] = m.name

    def resolve(address: str) -> tuple[str, int]:
        name = names.get(address)
        if name is not None and name in by_name:
            return by_name[name]
        return address, mesh.CONTROL_PORT

    return resolve


@dataclass
class PlannedWireGuard:
    """A WireGuard stand-in: plans the peers a device would get from the roster and reports
    them. A daemon with a device reconciles it here instead (a ``ppn.wg.Reconciler`` kept for the
    daemon's life: one device read per pass)."""

    identity: bytes
    peers: list[str] = field(default_factory=list)

    def plan(self, roster: mesh.Roster) -> None:
        topology = mesh.plan_topology(
            roster.view(),
            network=roster.network,
            self_identity=self.identity,
            observations={},
            now=int(time.time()),
        )
        config = topology.config  # None until the roster lists this node
        peers = sorted(p.allowed_ips[0] for p in config.peers) if config is not None else []
        if peers != self.peers:
            self.peers = peers
            emit("wireguard", peers=peers)


def load_holder(args: argparse.Namespace) -> tuple[IdentityKey, Capability]:
    assert args.key is not None and args.cap is not None
    key = IdentityKey.from_seed(decode_key(args.key.read_text().strip()))
    return key, Capability.from_text(args.cap.read_text())


def count_query(collection: str) -> Query:
    return Query(collection=collection, op="count")


def fail(message: str) -> None:
    print(f"daemon: {message}", file=sys.stderr, flush=True)


__all__ = [
    "Membership",
    "PlannedWireGuard",
    "control_resolver",
    "count_query",
    "emit",
    "load_holder",
    "load_membership",
    "new_node",
    "parse_args",
    "party",
    "persist",
    "save_roster",
    "split_hostport",
]
