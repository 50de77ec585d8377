"""Reconciler: pass after pass, each pass's writes verified by the read that starts the next."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppn.wg import (
    AddPeer,
    DeviceError,
    DeviceState,
    FakeBackend,
    PeerConfig,
    Reconciler,
    RemovePeer,
    UpdatePeer,
    VerifyError,
    plan,
    reconcile,
)
from tests.ppn.test_wg_plan import NOW, _peer_cfgs, desired, ep, key, peer


class CountingFake(FakeBackend):
    """A faithful fake that counts full reads (each costs a whole dump on a real device)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self) -> DeviceState:
        self.reads += 1
        return super().read()


class Deaf(CountingFake):
    """Acknowledges every write and keeps none (what the read-back exists to catch)."""

    def apply(self, ops: object) -> None:
        self.apply_calls += 1


def test_one_read_per_pass_and_the_next_read_verifies() -> None:
    fake = CountingFake()
    agent = Reconciler(fake)
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"), peer(2, "10.0.0.2/32"))
    first = agent.sync(cfg, now=NOW)
    assert first.applied and not first.verified
    assert agent.unverified is first.plan and fake.reads == 1
    second = agent.sync(cfg, now=NOW + 5)
    assert not second.plan and second.verified and agent.unverified is None
    assert fake.reads == 2 and fake.apply_calls == 1
    # reconcile() verifies at once instead: two reads for a pass that writes
    fake2 = CountingFake()
    assert reconcile(fake2, cfg, now=NOW).verified and fake2.reads == 2


def test_a_state_the_caller_just_read_is_not_read_again() -> None:
    fake = CountingFake()
    cfg = desired(peer(1, "10.0.0.1/32"))
    reconcile(fake, cfg, now=NOW, current=fake.read())
    assert fake.reads == 2  # the caller's read and the read-back, nothing else
    agent = Reconciler(fake)
    agent.sync(cfg, now=NOW, current=fake.read())
    assert fake.reads == 3


def test_writes_that_did_not_take_are_reported_once_then_planned_again() -> None:
    deaf = Deaf()
    agent = Reconciler(deaf)
    cfg = desired(peer(1, "10.0.0.1/32"))
    assert agent.sync(cfg, now=NOW).applied  # the device said yes
    with pytest.raises(VerifyError, match="differs from what the last pass wrote"):
        agent.sync(cfg, now=NOW + 5)
    assert agent.unverified is None
    again = agent.sync(cfg, now=NOW + 10)  # plans from the device as it is: writes again
    assert again.applied and len(again.plan) == 2 and deaf.apply_calls == 2


def test_a_removed_peer_that_is_back_is_reported() -> None:
    fake = CountingFake()
    agent = Reconciler(fake)
    agent.sync(desired(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32")), now=NOW)
    agent.sync(desired(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32")), now=NOW + 1)
    removed = agent.sync(desired(peer(1, "10.0.0.1/32")), now=NOW + 2)
    assert RemovePeer(public_key=key(2)) in removed.plan.operations
    fake.apply([AddPeer(peer=peer(2, "10.0.0.2/32"))])  # someone puts it back at once
    with pytest.raises(VerifyError, match="remove peer"):
        agent.sync(desired(peer(1, "10.0.0.1/32")), now=NOW + 3)


def test_changes_by_others_to_peers_not_written_are_not_blamed_on_the_write() -> None:
    fake = CountingFake()
    agent = Reconciler(fake)
    agent.sync(desired(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32")), now=NOW)
    agent.sync(desired(peer(1, "10.0.0.1/32"), peer(2, "10.0.0.2/32")), now=NOW + 1)
    wrote = agent.sync(
        desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"), peer(2, "10.0.0.2/32")),
        now=NOW + 2,
    )
    assert [type(op) for op in wrote.plan] == [UpdatePeer]
    # Between the passes: an operator adds a peer, removes peer 2, and peer 1 roams
    # (authenticated traffic from a new address, fresh handshake).
    fake.apply([AddPeer(peer=peer(9, "10.0.0.9/32")), RemovePeer(public_key=key(2))])
    fake.handshake(key(1), NOW + 3)
    fake.roam(key(1), ep("198.51.100.7:4"))
    cfg = desired(peer(1, "10.0.0.1/32", endpoint="192.0.2.1:1"), peer(2, "10.0.0.2/32"))
    report = agent.sync(cfg, now=NOW + 4)  # no VerifyError: those were not our writes failing
    assert set(report.plan.operations) == {
        RemovePeer(public_key=key(9)),
        AddPeer(peer=peer(2, "10.0.0.2/32")),
    }
    assert fake.state.peers[key(1)].endpoint == ep("198.51.100.7:4")  # the roam is kept


def test_an_apply_cut_short_leaves_nothing_pending_and_the_next_pass_converges() -> None:
    fake = CountingFake()
    agent = Reconciler(fake)
    cfg = desired(*(peer(n, f"10.0.{n}.0/24") for n in range(1, 9)))
    fake.fail_after = 3
    with pytest.raises(DeviceError):
        agent.sync(cfg, now=NOW)
    assert agent.unverified is None
    report = agent.sync(cfg, now=NOW + 1)
    assert report.applied and len(report.plan) == 9 - 3
    assert not agent.sync(cfg, now=NOW + 2).plan


@given(st.lists(_peer_cfgs(), min_size=1, max_size=5), st.sets(st.integers(1, 8)))
@settings(max_examples=150, deadline=None)
def test_on_a_faithful_device_passes_never_fail_verification_and_converge(
    states: list[list[PeerConfig]], live: set[int]
) -> None:
    fake = CountingFake()
    agent = Reconciler(fake)
    now = NOW
    for peers in states:
        cfg = desired(*peers)
        agent.sync(cfg, now=now)
        for n in live:  # traffic between passes: handshakes and roams to a new address
            if key(n) in fake.state.peers:
                fake.handshake(key(n), now + 1)
                fake.roam(key(n), ep(f"203.0.113.{n}:9"))
        now += 5
    last = desired(*states[-1])
    agent.sync(last, now=now)  # verifies the last writes; must not raise
    assert agent.unverified is None or agent.sync(last, now=now + 5).verified
    assert set(fake.state.peers) == {p.public_key for p in states[-1]}
    previous = {p.public_key: p.endpoint for p in states[-1]}
    assert not plan(last, fake.read(), now=now, previous=previous)
