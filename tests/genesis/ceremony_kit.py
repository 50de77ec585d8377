"""Shared helpers for the ceremony tests: parties, codes, and two cores wired in memory."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from genesis import (
    AcceptWindow,
    ConfirmSas,
    Grant,
    JoinCode,
    Joiner,
    MemberRecord,
    PartyInfo,
    Sponsor,
    make_code,
    mesh_id_for,
)
from ppn import IdentityKey, WireGuardKeyPair


def party(name: str) -> PartyInfo:
    return PartyInfo(
        name=name, identity=IdentityKey.generate().public, wg=WireGuardKeyPair.generate().public
    )


def record(info: PartyInfo, address: str, roles: tuple[str, ...] = ()) -> MemberRecord:
    return MemberRecord(
        name=info.name,
        identity=info.identity,
        wg=info.wg,
        address=address,
        endpoints=("192.0.2.1:51820",),
        roles=roles,
    )


def new_code(window: int = 1) -> JoinCode:
    return make_code(window, secrets.token_bytes(5))


@dataclass
class Pair:
    """A sponsor and a joiner core wired together in memory; ``frames`` counts deliveries."""

    sponsor: Sponsor
    joiner: Joiner
    code: JoinCode
    sponsor_info: PartyInfo
    joiner_info: PartyInfo
    now: float = 0.0
    deliveries: int = 0
    sponsor_events: list[Any] = field(default_factory=list)
    joiner_events: list[Any] = field(default_factory=list)

    def pump(self) -> None:
        """Deliver bytes both ways until quiet, collecting events."""
        while True:
            moved = False
            data = self.joiner.data_to_send()
            if data:
                self.deliveries += 1
                self.sponsor.receive_data(data, self.now)
                moved = True
            data = self.sponsor.data_to_send()
            if data:
                self.deliveries += 1
                self.joiner.receive_data(data, self.now)
                moved = True
            self.collect()
            if not moved:
                return

    def collect(self) -> None:
        while (event := self.sponsor.next_event()) is not None:
            self.sponsor_events.append(event)
        while (event := self.joiner.next_event()) is not None:
            self.joiner_events.append(event)

    def grant(self) -> Grant:
        return Grant(
            cidr="10.8.0.0/24",
            address="10.8.0.2",
            roster=(record(self.sponsor_info, "10.8.0.1", ("genesis",)),),
        )

    def to_sas(self) -> None:
        """Run until both show the SAS."""
        self.pump()
        self.sponsor.send(AcceptWindow(code=self.code), self.now)
        self.pump()

    def confirm_both(self) -> None:
        self.joiner.send(ConfirmSas(accept=True), self.now)
        self.sponsor.send(ConfirmSas(accept=True, grant=self.grant()), self.now)
        self.pump()


def make_pair(
    *,
    joiner_code: JoinCode | None = None,
    sas_digits: int = 7,
    sas_modulus: int | None = None,
    sponsor_info: PartyInfo | None = None,
    joiner_info: PartyInfo | None = None,
) -> Pair:
    code = new_code()
    sponsor_info = sponsor_info or party("alpha")
    joiner_info = joiner_info or party("beta")
    sponsor = Sponsor(
        me=sponsor_info,
        mesh_id=mesh_id_for(sponsor_info.identity),
        nonce=secrets.token_bytes(16),
        now=0.0,
        sas_digits=sas_digits,
        sas_modulus=sas_modulus,
    )
    joiner = Joiner(
        me=joiner_info,
        code=joiner_code or code,
        endpoints=("192.0.2.2:51820",),
        nonce=secrets.token_bytes(16),
        now=0.0,
        sas_digits=sas_digits,
        sas_modulus=sas_modulus,
    )
    return Pair(
        sponsor=sponsor,
        joiner=joiner,
        code=code,
        sponsor_info=sponsor_info,
        joiner_info=joiner_info,
    )
