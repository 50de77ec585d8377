"""The reconcile planner over the in-memory fake device (RFC-NOTES §6.4–§6.5)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn.wg import (
    AddPeer,
    DesiredStateError,
    DeviceError,
    DeviceState,
    Endpoint,
    FakeBackend,
    InterfaceConfig,
    PeerConfig,
    RemovePeer,
    SetInterface,
    UpdatePeer,
    VerifyError,
    describe,
    operation_to_json,
    plan,
    public_key_of,
    reconcile,
)

NOW = 1_800_000_000.0
PRIV = bytes(range(1, 33))


def key(n: int) -> bytes:
    return bytes([n]) * 32


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


def peer(n: int, *nets: str, endpoint: str | None = None, **kw: object) -> PeerConfig:
    return PeerConfig(
        public_key=key(n),
        allowed_ips=tuple(net(x) for x in nets),
        endpoint=None if endpoint is None else ep(endpoint),
        **kw,  # type: ignore[arg-type]
    )


def desired(*peers: PeerConfig, **kw: object) -> InterfaceConfig:
    return InterfaceConfig(private_key=PRIV, listen_port=51820, peers=peers, **kw)  # type: ignore[arg-type]


def synced(cfg: InterfaceConfig) -> FakeBackend:
    fake = FakeBackend()
    reconcile(fake, cfg, now=NOW)
    return fake


def test_bootstrap_then_second_pass_is_empty() -> None:
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:51820"), peer(2, "10.0.0.2/32"))
    fake = FakeBackend()
    report = reconcile(fake, cfg, now=NOW)
    assert report.applied and report.verified
    assert [type(op) for op in report.plan] == [SetInterface, AddPeer, AddPeer]
    assert fake.state.public_key == public_key_of(PRIV)
    writes = fake.writes
    again = reconcile(fake, cfg, now=NOW + 1)
    assert len(again.plan) == 0 and not again.applied
    assert fake.writes == writes and fake.apply_calls == 1


def test_unchanged_peers_get_no_operation_and_keep_their_session() -> None:
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"), peer(2, "10.0.0.2/32"))
    fake = synced(cfg)
    fake.handshake(key(1), NOW - 5, rx=1000, tx=2000)
    before = fake.state.peers[key(1)]
    changed = desired(
        peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"), peer(2, "10.0.0.2/32", "10.0.1.0/24")
    )
    report = reconcile(fake, changed, now=NOW)
    assert report.plan.operations == (
        UpdatePeer(public_key=key(2), allowed_ips=(net("10.0.0.2/32"), net("10.0.1.0/24"))),
    )
    assert fake.state.peers[key(1)] == before  # handshake, counters, endpoint untouched


def test_update_carries_only_what_changed() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1")))
    ops = plan(
        desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1", persistent_keepalive=25)),
        fake.read(),
        now=NOW,
    ).operations
    assert ops == (UpdatePeer(public_key=key(1), persistent_keepalive=25),)


def test_never_replaces_all_peers_removes_only_the_missing() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32"), peer(3, "10.0.0.3/32")))
    ops = plan(desired(peer(1, "10.0.0.1/32"), peer(3, "10.0.0.3/32")), fake.read(), now=NOW)
    assert ops.operations == (RemovePeer(public_key=key(2)),)


def test_roamed_endpoint_of_a_live_peer_is_kept() -> None:
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:51820"))
    fake = synced(cfg)
    fake.roam(key(1), ep("198.51.100.7:40000"))
    fake.handshake(key(1), NOW - 30)
    result = plan(cfg, fake.read(), now=NOW, previous={key(1): ep("192.0.2.1:51820")})
    assert not result and result.kept_endpoints == (key(1),)
    # without any history the same holds: a live peer is followed, not the file
    assert not plan(cfg, fake.read(), now=NOW)


def test_roamed_endpoint_is_overwritten_when_stale() -> None:
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:51820"))
    fake = synced(cfg)
    fake.roam(key(1), ep("198.51.100.7:40000"))
    fake.handshake(key(1), NOW - 181)
    ops = plan(cfg, fake.read(), now=NOW).operations
    assert ops == (UpdatePeer(public_key=key(1), endpoint=ep("192.0.2.1:51820")),)
    # the threshold is configurable
    assert not plan(cfg, fake.read(), now=NOW, stale_after=600)


def test_roamed_endpoint_is_overwritten_when_never_handshaken() -> None:
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:51820"))
    fake = synced(cfg)
    fake.roam(key(1), ep("198.51.100.7:40000"))
    assert plan(cfg, fake.read(), now=NOW).operations == (
        UpdatePeer(public_key=key(1), endpoint=ep("192.0.2.1:51820")),
    )


def test_roamed_endpoint_is_overwritten_when_the_desired_one_changed() -> None:
    old = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:51820"))
    fake = synced(old)
    fake.roam(key(1), ep("198.51.100.7:40000"))
    fake.handshake(key(1), NOW - 1)
    new = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.99:51820"))
    ops = plan(new, fake.read(), now=NOW, previous={key(1): ep("192.0.2.1:51820")}).operations
    assert ops == (UpdatePeer(public_key=key(1), endpoint=ep("192.0.2.99:51820")),)


def test_no_desired_endpoint_leaves_the_current_one() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1")))
    assert not plan(desired(peer(1, "10.0.0.1/32")), fake.read(), now=NOW)


def test_foreign_peers_are_reported_and_left_alone() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32"), peer(9, "10.0.0.9/32")))
    cfg = desired(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32"))
    result = plan(cfg, fake.read(), now=NOW, owned={key(1), key(2)})
    assert result.operations == (AddPeer(peer=peer(2, "10.0.0.2/32")),)
    assert result.foreign_peers == (key(9),)
    # a predicate works too, and an owned peer not desired is removed
    result = plan(cfg, fake.read(), now=NOW, owned=lambda k: k != key(7))
    assert RemovePeer(public_key=key(9)) in result.operations


def test_desired_peer_not_owned_is_rejected() -> None:
    with pytest.raises(DesiredStateError):
        plan(desired(peer(1, "10.0.0.1/32")), DeviceState(name="x"), now=NOW, owned=set())


def test_own_key_as_a_peer_is_rejected() -> None:
    me = PeerConfig(public_key=public_key_of(PRIV))
    with pytest.raises(DesiredStateError, match="own key"):
        plan(desired(me), DeviceState(name="x"), now=NOW)


def test_duplicate_prefix_is_rejected_before_touching_the_device() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32")))
    writes = fake.writes
    bad = desired(peer(1, "10.0.0.0/24"), peer(2, "10.0.0.0/24"))
    with pytest.raises(DesiredStateError, match="claimed by two peers"):
        reconcile(fake, bad, now=NOW)
    assert fake.writes == writes


def test_prefix_of_a_foreign_peer_is_rejected() -> None:
    fake = synced(desired(peer(9, "10.9.0.0/16")))
    with pytest.raises(DesiredStateError, match="does not manage"):
        plan(desired(peer(1, "10.9.0.0/16")), fake.read(), now=NOW, owned={key(1)})


def test_prefix_moves_between_owned_peers() -> None:
    fake = synced(desired(peer(1, "10.0.0.0/24"), peer(2, "10.0.1.0/24")))
    moved = desired(peer(1, "10.0.1.0/24"), peer(2, "10.0.0.0/24"))
    reconcile(fake, moved, now=NOW)
    assert fake.state.peers[key(1)].allowed_ips == (net("10.0.1.0/24"),)
    assert fake.state.peers[key(2)].allowed_ips == (net("10.0.0.0/24"),)


def test_partial_failure_converges_without_teardown() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1")))
    fake.handshake(key(1), NOW - 3)
    live = fake.state.peers[key(1)]
    big = desired(
        peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"),
        *(peer(n, f"10.0.{n}.0/24") for n in range(2, 12)),
    )
    fake.fail_after = 4
    with pytest.raises(DeviceError):
        reconcile(fake, big, now=NOW)
    assert 1 < len(fake.state.peers) < 11
    report = reconcile(fake, big, now=NOW)
    assert report.verified and all(isinstance(op, AddPeer) for op in report.plan)
    assert len(report.plan) == 10 - 4  # the new peers the first pass did not get to
    assert fake.state.peers[key(1)] == live
    assert not reconcile(fake, big, now=NOW).plan


def test_interface_fields() -> None:
    fake = synced(desired())
    assert not plan(desired(), fake.read(), now=NOW)
    other = InterfaceConfig(private_key=key(5), listen_port=51821, fwmark=7)
    (op,) = plan(other, fake.read(), now=NOW).operations
    assert op == SetInterface(private_key=key(5), listen_port=51821, fwmark=7)
    # None leaves the device's value, port 0 accepts any port
    assert not plan(InterfaceConfig(listen_port=0), fake.read(), now=NOW)


def test_preshared_key_set_and_removed() -> None:
    fake = synced(desired(peer(1, "10.0.0.1/32")))
    with_psk = desired(peer(1, "10.0.0.1/32", preshared_key=key(42)))
    (op,) = plan(with_psk, fake.read(), now=NOW).operations
    assert op == UpdatePeer(public_key=key(1), preshared_key=key(42))
    reconcile(fake, with_psk, now=NOW)
    assert not plan(with_psk, fake.read(), now=NOW)
    (op,) = plan(desired(peer(1, "10.0.0.1/32")), fake.read(), now=NOW).operations
    assert op == UpdatePeer(public_key=key(1), preshared_key=bytes(32))
    assert "removed" in describe(op)


def test_descriptions_and_json_never_show_secrets() -> None:
    ops = plan(
        desired(peer(1, "10.0.0.1/32", preshared_key=key(42), endpoint="[fd00::1]:5")),
        DeviceState(name="x"),
        now=NOW,
    ).operations
    text = (
        " ".join(describe(op) for op in ops) + repr(ops) + repr([operation_to_json(o) for o in ops])
    )
    for secret in (PRIV, key(42)):
        assert secret.hex() not in text
        assert repr(secret) not in text
        import base64

        assert base64.b64encode(secret).decode() not in text
    assert "[fd00::1]:5" in text


def test_verify_catches_a_device_that_ignores_writes() -> None:
    class Deaf(FakeBackend):
        def apply(self, ops: object) -> None:
            self.apply_calls += 1

    with pytest.raises(VerifyError):
        reconcile(Deaf(), desired(peer(1, "10.0.0.1/32")), now=NOW)


def test_dry_run_changes_nothing() -> None:
    fake = FakeBackend()
    report = reconcile(fake, desired(peer(1, "10.0.0.1/32")), now=NOW, dry_run=True)
    assert len(report.plan) == 2 and not report.applied and fake.writes == 0


# Property: from any device state, applying the plan reaches the desired state and the next
# plan is empty; peers with no operation are untouched.

_nets = st.sampled_from(["10.0.0.0/24", "10.0.1.0/24", "10.0.2.5/32", "fd00::/64", "fd00:1::/64"])
_eps = st.sampled_from([None, "192.0.2.1:1", "192.0.2.2:2", "[2001:db8::1]:3"])


@st.composite
def _peer_cfgs(draw: st.DrawFn) -> list[PeerConfig]:
    keys = draw(st.lists(st.integers(1, 8), unique=True, max_size=6))
    pool = draw(
        st.permutations(
            ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.5/32", "fd00::/64", "fd00:1::/64", "10.7.0.0/16"]
        )
    )
    out = []
    for i, n in enumerate(keys):
        nets = pool[i : i + 1] if i < len(pool) else []
        out.append(
            peer(
                n,
                *nets,
                endpoint=draw(_eps),
                persistent_keepalive=draw(st.sampled_from([0, 25])),
                preshared_key=draw(st.sampled_from([None, key(99)])),
            )
        )
    return out


@given(_peer_cfgs(), _peer_cfgs(), st.sets(st.integers(1, 8)), st.floats(0, 400))
@settings(max_examples=200, deadline=None)
def test_plan_converges_from_any_state(
    before: list[PeerConfig], after: list[PeerConfig], live: set[int], age: float
) -> None:
    fake = synced(desired(*before))
    for n in live:
        if key(n) in fake.state.peers:
            fake.handshake(key(n), NOW - age)
    untouched = dict(fake.state.peers)
    cfg = desired(*after)
    report = reconcile(fake, cfg, now=NOW)
    assert report.verified
    assert not plan(cfg, fake.read(), now=NOW, previous={p.public_key: p.endpoint for p in after})
    assert set(fake.state.peers) == {p.public_key for p in after}
    touched = {getattr(op, "public_key", None) for op in report.plan} | {
        op.peer.public_key for op in report.plan if isinstance(op, AddPeer)
    }
    for k, state in untouched.items():
        if k not in touched and k in fake.state.peers:
            assert fake.state.peers[k] == state
    for p in after:
        got = fake.state.peers[p.public_key]
        assert set(got.allowed_ips) == set(p.allowed_ips)
        assert got.persistent_keepalive == p.persistent_keepalive
        if p.endpoint is not None and got.endpoint != p.endpoint:
            # only a live peer may keep an endpoint other than the desired one
            assert got.last_handshake is not None and NOW - got.last_handshake <= 180
        assert dataclasses.replace(got).public_key == p.public_key
