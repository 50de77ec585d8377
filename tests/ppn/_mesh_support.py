"""Shared builders for the mesh and roster tests: deterministic keys and a pool of records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ppn import IdentityKey, WireGuardKeyPair
from ppn.mesh._records import Record, sign_admission, sign_member, sign_tombstone
from ppn.mesh._roster import Roster

CIDR = "10.8.0.0/24"


def identity(label: str) -> IdentityKey:
    return IdentityKey.from_seed(hashlib.sha256(b"identity " + label.encode()).digest())


def wg(label: str) -> WireGuardKeyPair:
    return WireGuardKeyPair.from_private(hashlib.sha256(b"wg " + label.encode()).digest())


@dataclass
class Fleet:
    """A genesis node plus helpers to admit members into a reference roster."""

    genesis: IdentityKey = field(default_factory=lambda: identity("genesis"))
    roster: Roster = field(init=False)
    keys: dict[str, IdentityKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.roster = Roster.found(
            self.genesis,
            name="genesis",
            wg_key=wg("genesis").public,
            now=1000,
            endpoints=["192.0.2.1:51820"],
            network=CIDR,
        )
        self.keys["genesis"] = self.genesis

    def admit(
        self,
        name: str,
        *,
        by: str = "genesis",
        now: int = 1001,
        endpoints: tuple[str, ...] = (),
        roles: tuple[str, ...] = (),
        address: str | None = None,
    ) -> Record:
        key = identity(name)
        self.keys[name] = key
        return self.roster.admit(
            self.keys[by],
            name=name,
            identity=key.public,
            wg_key=wg(name).public,
            now=now,
            endpoints=endpoints,
            roles=roles,
            address=address,
        )

    @property
    def mesh(self) -> bytes:
        return self.roster.mesh


def record_pool() -> list[Record]:
    """Records covering every rule: versions, admitter- and self-signed, tombstones by self and
    by genesis, a chain two deep, an address conflict, a name conflict, a broken chain, an
    admission after the admitter's removal."""
    fleet = Fleet()
    pool: list[Record] = list(fleet.roster.records())
    pool.append(fleet.admit("alpha", now=1001, endpoints=("192.0.2.2:51820",)))
    pool.append(fleet.admit("bravo", now=1002, roles=("relay",)))
    pool.append(fleet.admit("charlie", by="alpha", now=1003))
    alpha = fleet.keys["alpha"]
    pool.append(fleet.roster.update_self(alpha, endpoints=["192.0.2.20:51820"]))
    pool.append(fleet.roster.update_self(alpha, roles=["cloud"]))
    # delta: admitted by bravo at the same address charlie holds (concurrent sponsors).
    delta_key = identity("delta")
    fleet.keys["delta"] = delta_key
    delta_adm = sign_admission(
        fleet.keys["bravo"],
        mesh=fleet.mesh,
        identity=delta_key.public,
        name="delta",
        admitted_at=1004,
    )
    charlie_address = fleet.roster.get(fleet.keys["charlie"].public).address  # type: ignore[union-attr]
    pool.append(
        sign_member(
            fleet.keys["bravo"],
            admission=delta_adm,
            wg_key=wg("delta").public,
            address=charlie_address,
            endpoints=(),
            roles=(),
            version=1,
        )
    )
    # echo: same name as alpha, admitted later by charlie.
    echo_key = identity("echo")
    echo_adm = sign_admission(
        fleet.keys["charlie"],
        mesh=fleet.mesh,
        identity=echo_key.public,
        name="alpha",
        admitted_at=1005,
    )
    pool.append(
        sign_member(
            fleet.keys["charlie"],
            admission=echo_adm,
            wg_key=wg("echo").public,
            address="10.8.0.99",
            endpoints=(),
            roles=(),
            version=1,
        )
    )
    # foxtrot: admitted by an outsider (never on this roster): broken chain.
    outsider = identity("outsider")
    fox_adm = sign_admission(
        outsider,
        mesh=fleet.mesh,
        identity=identity("foxtrot").public,
        name="foxtrot",
        admitted_at=1006,
    )
    pool.append(
        sign_member(
            outsider,
            admission=fox_adm,
            wg_key=wg("foxtrot").public,
            address="10.8.0.98",
            endpoints=(),
            roles=(),
            version=1,
        )
    )
    # bravo removed by genesis at 2000; golf admitted by bravo at 2500 (after removal).
    bravo = fleet.roster.get(fleet.keys["bravo"].public)
    assert bravo is not None
    pool.append(sign_tombstone(fleet.genesis, admission=bravo.admission, removed_at=2000))
    golf_adm = sign_admission(
        fleet.keys["bravo"],
        mesh=fleet.mesh,
        identity=identity("golf").public,
        name="golf",
        admitted_at=2500,
    )
    pool.append(
        sign_member(
            fleet.keys["bravo"],
            admission=golf_adm,
            wg_key=wg("golf").public,
            address="10.8.0.97",
            endpoints=(),
            roles=(),
            version=1,
        )
    )
    # charlie removes itself.
    charlie = fleet.roster.get(fleet.keys["charlie"].public)
    assert charlie is not None
    pool.append(sign_tombstone(fleet.keys["charlie"], admission=charlie.admission, removed_at=3000))
    return pool


def roster_of(records: list[Record], mesh: bytes) -> Roster:
    roster = Roster(mesh=mesh, network=CIDR)
    roster.merge(records)
    return roster
