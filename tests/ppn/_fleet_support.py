"""Shared builders for the fleet tests: members, directories and heartbeats."""

from __future__ import annotations

from dataclasses import replace

from ppn import IdentityKey
from ppn.fleet import Heartbeat, Member, StaticDirectory, derive_node_id


def make_key(n: int) -> IdentityKey:
    return IdentityKey.from_seed(bytes([n]) * 32)


def make_member(n: int, name: str, *, roles: frozenset[str] = frozenset()) -> Member:
    key = make_key(n)
    return Member(
        node_id=derive_node_id(key.public),
        name=name,
        identity=key.public,
        mesh_address=f"10.8.0.{n}",
        roles=roles,
    )


def fleet_directory() -> StaticDirectory:
    """cloud (1, controller), a (2), b (3), c (4)."""
    return StaticDirectory(
        [
            make_member(1, "cloud", roles=frozenset({"cloud"})),
            make_member(2, "a"),
            make_member(3, "b"),
            make_member(4, "c"),
        ]
    )


def make_heartbeat(n: int, *, seq: int = 1, boot: int = 1, **changes: object) -> Heartbeat:
    member = make_member(n, "x")
    hb = Heartbeat(
        node_id=member.node_id,
        mesh_address=member.mesh_address,
        hostname=f"host{n}",
        ram_total_mb=8192,
        ram_available_mb=4096,
        cpu_cores=4,
        load_milli=250,
        kvm=True,
        reserved=False,
        vms=(),
        boot_id=bytes([boot]) * 16,
        seq=seq,
    )
    return replace(hb, **changes)  # type: ignore[arg-type]
