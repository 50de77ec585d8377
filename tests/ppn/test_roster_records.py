"""Record encoding, signatures (with domain separation), authority rules, and chain checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn import LocalProtocolError, RemoteProtocolError, wire
from ppn.mesh._ids import mesh_id, node_id
from ppn.mesh._records import (
    ADMISSION_LABEL,
    MEMBER_LABEL,
    InvalidRecord,
    MemberRecord,
    decode_record,
    parse_endpoint,
    record_from_bytes,
    sign_admission,
    sign_member,
    sign_tombstone,
)
from ppn.mesh._roster import Roster
from tests.ppn._mesh_support import CIDR, Fleet, identity, record_pool, wg

POOL = record_pool()


def test_ids_are_domain_separated_and_match_the_ceremony() -> None:
    key = identity("x").public
    assert len(node_id(key)) == len(mesh_id(key)) == 16
    assert node_id(key) != mesh_id(key)
    from genesis._derive import mesh_id_for

    assert mesh_id(key) == mesh_id_for(key)


@pytest.mark.parametrize("record", POOL, ids=lambda r: f"{type(r).__name__}-{r.name}")
def test_every_record_round_trips(record: Any) -> None:
    again = record_from_bytes(record.encoded)
    assert again == record and again.encoded == record.encoded and again.digest == record.digest


def test_signature_covers_every_field() -> None:
    record = next(r for r in POOL if isinstance(r, MemberRecord) and r.version == 3)
    value = record.to_value()
    tampered: list[dict[str, Any]] = []
    for key, new in [
        ("address", "10.8.0.77"),
        ("endpoints", ["192.0.2.99:1"]),
        ("roles", ["relay"]),
        ("version", 4),
        ("wg_key", bytes(32)),
    ]:
        tampered.append({**value, key: new})
    tampered.append({**value, "admission": {**value["admission"], "name": "mallory"}})
    tampered.append({**value, "admission": {**value["admission"], "admitted_at": 1}})
    tampered.append({**value, "sig": bytes(64)})
    for bad in tampered:
        with pytest.raises(InvalidRecord, match="did not verify"):
            decode_record(bad)


def test_a_signature_for_one_record_type_does_not_verify_as_another() -> None:
    # Same bytes signed under the admission label must not pass as a member record.
    fleet = Fleet()
    key = identity("sigx")
    adm = sign_admission(
        fleet.genesis, mesh=fleet.mesh, identity=key.public, name="sigx", admitted_at=5
    )
    rec = sign_member(
        key,
        admission=adm,
        wg_key=wg("sigx").public,
        address="10.8.0.9",
        endpoints=(),
        roles=(),
        version=2,
    )
    body = wire.pack_canonical(rec.signed_fields())
    wrong = key.sign(ADMISSION_LABEL + body)
    assert key.sign(MEMBER_LABEL + body) == rec.signature
    with pytest.raises(InvalidRecord):
        decode_record({**rec.to_value(), "sig": wrong})


def test_authority_rules() -> None:
    fleet = Fleet()
    member = fleet.admit("alpha")
    key = fleet.keys["alpha"]
    other = identity("mallory")
    # The admitter may sign only version 1.
    with pytest.raises(LocalProtocolError, match="only version 1"):
        sign_member(
            fleet.genesis,
            admission=member.admission,
            wg_key=bytes(32),
            address="10.8.0.5",
            endpoints=(),
            roles=(),
            version=2,
        )
    # A stranger may sign no version.
    with pytest.raises(LocalProtocolError, match="signed by the member or its admitter"):
        sign_member(
            other,
            admission=member.admission,
            wg_key=bytes(32),
            address="10.8.0.5",
            endpoints=(),
            roles=(),
            version=7,
        )
    # Tombstones: the member itself or genesis; not its admitter unless genesis, not others.
    charlie = fleet.admit("charlie", by="alpha")
    with pytest.raises(LocalProtocolError, match="tombstone"):
        sign_tombstone(key, admission=charlie.admission, removed_at=9)
    sign_tombstone(fleet.genesis, admission=charlie.admission, removed_at=9)
    # Only genesis admits itself, and genesis is admitted by nobody else.
    with pytest.raises(LocalProtocolError, match="genesis"):
        sign_admission(key, mesh=fleet.mesh, identity=key.public, name="alpha", admitted_at=1)
    with pytest.raises(LocalProtocolError, match="genesis"):
        sign_admission(key, mesh=fleet.mesh, identity=fleet.genesis.public, name="g", admitted_at=1)


def test_tombstone_beats_any_version_and_is_final() -> None:
    fleet = Fleet()
    fleet.admit("alpha")
    key = fleet.keys["alpha"]
    stone = fleet.roster.remove(fleet.genesis, key.public, now=5000)
    later = sign_member(
        key,
        admission=stone.admission,
        wg_key=wg("alpha").public,
        address="10.8.0.2",
        endpoints=(),
        roles=(),
        version=99,
    )
    assert not fleet.roster.merge([later]).changed
    assert fleet.roster.view().member(key.public) is None
    assert [t.identity for t in fleet.roster.view().removed] == [key.public]


def test_ingest_reports_bad_records_and_keeps_state() -> None:
    fleet = Fleet()
    good = fleet.admit("alpha")
    receiver = Roster(mesh=fleet.mesh, network=CIDR)
    values = [r.to_value() for r in fleet.roster.records()]
    forged = {**good.to_value(), "address": "10.8.0.200"}
    result = receiver.ingest([forged, {"type": "nonsense"}, 7, *values])
    assert len(result.changed) == 2
    assert len(result.rejected) == 3
    assert any("did not verify" in r.detail for r in result.rejected)
    assert receiver.get(good.identity) == good


def test_records_of_another_mesh_are_refused() -> None:
    a, b = Fleet(), Fleet(genesis=identity("other-genesis"))
    result = a.roster.ingest([r.to_value() for r in b.roster.records()])
    assert not result.changed and result.rejected
    assert "another mesh" in result.rejected[0].detail


def test_broken_chain_heals_when_the_admitter_arrives() -> None:
    fleet = Fleet()
    alpha = fleet.admit("alpha")
    charlie = fleet.admit("charlie", by="alpha")
    genesis_record = fleet.roster.get(fleet.genesis.public)
    assert genesis_record is not None
    partial = Roster(mesh=fleet.mesh, network=CIDR, records=[genesis_record, charlie])
    # Its admitter is not held: charlie waits in the quarantine, neither stored nor summarised.
    assert charlie.identity not in partial and partial.quarantined == 1
    assert [k for k, _ in partial.summary()] == [fleet.genesis.public]
    assert partial.view().member(charlie.identity) is None and not partial.view().problems
    result = partial.merge([alpha])
    assert {r.identity for r in result.changed} == {alpha.identity, charlie.identity}
    assert partial.view().member(charlie.identity) is not None
    assert not partial.view().problems and partial.quarantined == 0


def test_admission_before_the_admitter_is_a_broken_chain() -> None:
    fleet = Fleet()
    fleet.admit("alpha", now=2000)
    key = fleet.keys["alpha"]
    early = sign_admission(
        key, mesh=fleet.mesh, identity=identity("e").public, name="e", admitted_at=1500
    )
    record = sign_member(
        key,
        admission=early,
        wg_key=wg("e").public,
        address="10.8.0.50",
        endpoints=(),
        roles=(),
        version=1,
    )
    fleet.roster.merge([record])
    problems = fleet.roster.view().problems_of(record.identity)
    assert problems and "before its admitter" in problems[0].detail


def test_long_chains_need_no_recursion() -> None:
    fleet = Fleet()
    previous = "genesis"
    # Build a 1,200-deep chain directly (admit() would recompute the view every step).
    records = list(fleet.roster.records())
    keys = {"genesis": fleet.genesis}
    for i in range(1200):
        name = f"n{i}"
        keys[name] = identity(name)
        adm = sign_admission(
            keys[previous],
            mesh=fleet.mesh,
            identity=keys[name].public,
            name=name,
            admitted_at=1000 + i,
        )
        records.append(
            sign_member(
                keys[previous],
                admission=adm,
                wg_key=wg(name).public,
                address=f"10.{20 + i // 250}.{i % 250}.1",
                endpoints=(),
                roles=(),
                version=1,
            )
        )
        previous = name
    view = Roster(mesh=fleet.mesh, network="10.0.0.0/8", records=records).view()
    assert len(view.members) == 1201 and not view.problems


@pytest.mark.parametrize("text", ["1.2.3.4:51820", "[fd00::1]:51820", "relay.example.net:51820"])
def test_good_endpoints(text: str) -> None:
    parse_endpoint(text)


@pytest.mark.parametrize(
    "text", ["1.2.3.4", "1.2.3.4:0", "1.2.3.4:070", "[fd00::1:51820", "01.2.3.4:1", "a b:1", ":1"]
)
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(InvalidRecord):
        parse_endpoint(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_remote_errors(data: bytes) -> None:
    try:
        record_from_bytes(data)
    except RemoteProtocolError:
        pass


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 2**40)
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "admission",
                    "address",
                    "endpoints",
                    "roles",
                    "signer",
                    "sig",
                    "version",
                    "wg_key",
                    "removed_at",
                    "mesh",
                    "identity",
                    "name",
                    "admitter",
                    "admitted_at",
                ]
            ),
            inner,
            max_size=10,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_arbitrary_values_only_raise_invalid_record(value: Any) -> None:
    try:
        decode_record(value)
    except InvalidRecord:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(POOL), st.data())
def test_mutated_real_records_are_rejected_or_identical(record: Any, data: st.DataObject) -> None:
    encoded = bytearray(record.encoded)
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    try:
        again = record_from_bytes(bytes(encoded))
    except InvalidRecord:
        return
    assert again.encoded == bytes(encoded)
    assert again == record  # pragma: no cover - a successful forgery would fail here
