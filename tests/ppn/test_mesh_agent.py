"""The agent core's decisions: pull schedule with jitter, push fan-out, self-publication."""

from __future__ import annotations

from ppn.mesh._agent import MeshAgent, PullFrom, PushTo, Reconcile, SaveState
from ppn.mesh._ids import node_address6
from ppn.mesh._roster import MergeResult
from tests.ppn._mesh_support import Fleet, identity


def ctl(fleet: Fleet, name: str) -> str:
    return node_address6(fleet.mesh, fleet.keys[name].public)


def drain(agent: MeshAgent) -> list[object]:
    out = []
    while (action := agent.next_action()) is not None:
        out.append(action)
    return out


def fleet3() -> Fleet:
    fleet = Fleet()
    fleet.admit("relay", roles=("relay",))
    fleet.admit("cloud", now=1002)
    return fleet


def test_start_pulls_everyone_and_republishes_an_admitter_signed_entry() -> None:
    fleet = fleet3()
    agent = MeshAgent(
        fleet.roster, identity=fleet.keys["cloud"], now=100.0, endpoints=["198.51.100.3:51820"]
    )
    record = fleet.roster.get(fleet.keys["cloud"].public)
    assert record is not None and record.signer == fleet.keys["cloud"].public
    assert record.version == 2 and record.endpoints == ("198.51.100.3:51820",)  # type: ignore[union-attr]
    actions = drain(agent)
    assert SaveState() in actions and Reconcile() in actions
    pushes = [a for a in actions if isinstance(a, PushTo)]
    assert sorted(p.address for p in pushes) == sorted([ctl(fleet, "genesis"), ctl(fleet, "relay")])
    assert agent.get_timer() == 100.0
    agent.handle_timer(100.0)
    pulls = [a for a in drain(agent) if isinstance(a, PullFrom)]
    assert sorted(p.address for p in pulls) == sorted([ctl(fleet, "genesis"), ctl(fleet, "relay")])


def test_pull_period_is_30_seconds_with_bounded_jitter() -> None:
    for r, expected in ((0.0, 127.0), (0.5, 130.0), (1.0, 133.0)):
        fleet = fleet3()
        agent = MeshAgent(fleet.roster, identity=fleet.genesis, now=100.0, rng=lambda r=r: r)
        agent.handle_timer(100.0)
        drain(agent)
        agent.handle_timer(105.0)  # a reconcile tick, no pull
        assert not [a for a in drain(agent) if isinstance(a, PullFrom)]
        assert agent.get_timer() == 110.0
        agent.handle_timer(expected - 0.01)
        assert not [a for a in drain(agent) if isinstance(a, PullFrom)]
        agent.handle_timer(expected)
        assert [a for a in drain(agent) if isinstance(a, PullFrom)]


def test_changes_are_pushed_to_everyone_but_their_source_and_coalesced() -> None:
    fleet = fleet3()
    agent = MeshAgent(fleet.roster, identity=fleet.genesis, now=0.0)
    drain(agent)
    one = fleet.admit("delta", now=1500)
    two = fleet.admit("echo", now=1501)
    agent.roster_changed(MergeResult(changed=(one,)), source=ctl(fleet, "relay"))
    agent.roster_changed(MergeResult(changed=(two,)), source=ctl(fleet, "relay"))
    pushes = {a.address: a.records for a in drain(agent) if isinstance(a, PushTo)}
    assert ctl(fleet, "relay") not in pushes
    assert set(pushes[ctl(fleet, "cloud")]) == {one, two}  # one push carrying both
    assert ctl(fleet, "delta") in pushes and ctl(fleet, "echo") in pushes  # the new members too
    agent.roster_changed(MergeResult())
    assert drain(agent) == []


def test_a_joiner_pulls_from_bootstrap_addresses_until_it_knows_members() -> None:
    fleet = fleet3()
    from ppn.mesh._roster import Roster

    empty = Roster(mesh=fleet.mesh, network=fleet.roster.network)
    sponsor = ctl(fleet, "genesis")
    agent = MeshAgent(empty, identity=identity("newbie"), now=0.0, bootstrap=[sponsor])
    agent.handle_timer(0.0)
    assert PullFrom(address=sponsor) in drain(agent)
    empty.merge(fleet.roster.records())
    assert sorted(agent.control_targets()) == sorted(
        ctl(fleet, n) for n in ("genesis", "relay", "cloud")
    )


def test_failed_pulls_are_retried_soon_until_one_succeeds() -> None:
    fleet = fleet3()
    agent = MeshAgent(fleet.roster, identity=fleet.genesis, now=0.0)
    agent.handle_timer(0.0)
    drain(agent)
    assert agent.get_timer() == 5.0  # the reconcile tick; the next pull is at 30 s
    agent.pull_finished(ok=False, now=1.0)
    agent.handle_timer(4.0)
    assert [a for a in drain(agent) if isinstance(a, PullFrom)]  # retried at 1 + 3 s
    agent.pull_finished(ok=True, now=4.5)
    agent.pull_finished(ok=False, now=5.0)
    agent.handle_timer(9.0)
    assert not [a for a in drain(agent) if isinstance(a, PullFrom)]  # synced: normal period


def test_a_joiner_keeps_pulling_soon_until_its_own_record_arrives() -> None:
    # The first answer brought the others' records but not ours (the sponsor had not signed us
    # yet): retry after 3 s instead of a whole period.
    fleet = fleet3()
    joiner = identity("joiner")
    agent = MeshAgent(fleet.roster, identity=joiner, now=0.0, bootstrap=[ctl(fleet, "relay")])
    agent.handle_timer(0.0)
    drain(agent)
    agent.pull_finished(ok=True, now=1.0)
    agent.handle_timer(4.0)
    assert [a for a in drain(agent) if isinstance(a, PullFrom)]
    fleet.roster.admit(
        fleet.keys["relay"], name="joiner", identity=joiner.public, wg_key=b"j" * 32, now=1003
    )
    agent.pull_finished(ok=True, now=4.5)
    agent.pull_finished(ok=False, now=5.0)
    agent.handle_timer(9.0)
    assert not [a for a in drain(agent) if isinstance(a, PullFrom)]  # synced: normal period
