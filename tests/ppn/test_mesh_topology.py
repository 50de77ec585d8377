"""Topology: full mesh without a hub; with a relay hub, direct routes only where handshakes are
fresh, everything else through the hub's mesh-CIDR route; keepalives; names and hosts file."""

from __future__ import annotations

from ppn.mesh._addressing import parse_cidr
from ppn.mesh._ids import control_network, node_address6
from ppn.mesh._names import hosts_fragment, replace_hosts_block, resolve
from ppn.mesh._topology import KEEPALIVE, DesiredConfig, Observation, PathKind, plan_topology
from tests.ppn._mesh_support import CIDR, Fleet, wg

NET = parse_cidr(CIDR)
NOW = 100_000


def platform_fleet() -> Fleet:
    """genesis (laptop A), relay (laptop B, the hub), cloud — A and cloud on different nets."""
    fleet = Fleet()  # genesis endpoint 192.0.2.1:51820
    fleet.admit("relay", roles=("relay",), endpoints=("192.0.2.2:51820", "198.51.100.2:51820"))
    fleet.admit("cloud", roles=("cloud",), endpoints=("198.51.100.3:51820",), now=1002)
    return fleet


def peers_by_name(fleet: Fleet, me: str, observations: dict[bytes, Observation] | None = None):  # type: ignore[no-untyped-def]
    topo = plan_topology(
        fleet.roster.view(),
        network=NET,
        self_identity=fleet.keys[me].public,
        observations=observations or {},
        now=NOW,
    )
    assert topo.config is not None
    names = {wg(n).public: n for n in fleet.keys}
    return topo, {names[p.wg_key]: p for p in topo.config.peers}


def v6(fleet: Fleet, name: str) -> str:
    return f"{node_address6(fleet.mesh, fleet.keys[name].public)}/128"


def fresh(name: str, endpoint: str | None = None, age: int = 10) -> tuple[bytes, Observation]:
    key = wg(name).public
    return key, Observation(wg_key=key, endpoint=endpoint, last_handshake=NOW - age)


def test_without_a_hub_everyone_peers_directly() -> None:
    fleet = Fleet()
    fleet.admit("alpha", endpoints=("192.0.2.5:51820",))
    fleet.admit("nat")  # no endpoint
    topo, peers = peers_by_name(fleet, "genesis")
    assert peers["alpha"].allowed_ips == ("10.8.0.2/32", v6(fleet, "alpha"))
    assert peers["alpha"].persistent_keepalive == 0
    assert peers["nat"].persistent_keepalive == KEEPALIVE  # toward NATed members
    assert peers["nat"].endpoint is None
    assert topo.config is not None and not topo.config.forwarding
    assert topo.config.address == "10.8.0.1/24"
    assert {p.kind for p in topo.paths} == {PathKind.SELF, PathKind.DIRECT}


def test_the_hub_routes_each_member_and_forwards() -> None:
    fleet = platform_fleet()
    topo, peers = peers_by_name(fleet, "relay")
    assert topo.config is not None and topo.config.forwarding
    assert peers["genesis"].allowed_ips == ("10.8.0.1/32", v6(fleet, "genesis"))
    assert peers["cloud"].allowed_ips == ("10.8.0.3/32", v6(fleet, "cloud"))
    assert peers["cloud"].endpoint == "198.51.100.3:51820"


def test_members_route_the_mesh_cidr_through_the_hub_until_a_direct_handshake() -> None:
    fleet = platform_fleet()
    topo, peers = peers_by_name(fleet, "genesis")
    assert peers["relay"].allowed_ips == (
        "10.8.0.2/32",
        CIDR,
        v6(fleet, "relay"),
        control_network(fleet.mesh),
    )
    assert peers["relay"].persistent_keepalive == KEEPALIVE
    # cloud is probed (endpoint + keepalive) but not routed directly: via hub.
    assert peers["cloud"].allowed_ips == ()
    assert peers["cloud"].persistent_keepalive == KEEPALIVE
    assert peers["cloud"].endpoint == "198.51.100.3:51820"
    paths = {p.member.name: p for p in topo.paths}
    assert paths["cloud"].kind is PathKind.VIA_HUB and not paths["cloud"].reachable
    # Once the hub and cloud have fresh handshakes, cloud is reachable via the hub…
    obs = dict([fresh("relay", "192.0.2.2:51820")])
    topo, peers = peers_by_name(fleet, "genesis", obs)
    paths = {p.member.name: p for p in topo.paths}
    assert paths["cloud"].kind is PathKind.VIA_HUB and paths["cloud"].reachable
    assert paths["relay"].kind is PathKind.DIRECT and paths["relay"].handshake_age == 10
    # …and a direct handshake with cloud turns its /32 on.
    obs.update([fresh("cloud", "198.51.100.3:51820")])
    topo, peers = peers_by_name(fleet, "genesis", obs)
    assert peers["cloud"].allowed_ips == ("10.8.0.3/32", v6(fleet, "cloud"))
    assert {p.member.name: p.kind for p in topo.paths}["cloud"] is PathKind.DIRECT
    # A handshake older than 180 s no longer counts.
    obs.update([fresh("cloud", "198.51.100.3:51820", age=181)])
    _, peers = peers_by_name(fleet, "genesis", obs)
    assert peers["cloud"].allowed_ips == ()


def test_no_prefix_is_claimed_twice() -> None:
    fleet = platform_fleet()
    obs = dict([fresh("relay"), fresh("cloud"), fresh("genesis")])
    for me in ("genesis", "relay", "cloud"):
        topo, _ = peers_by_name(fleet, me, obs)
        assert topo.config is not None
        prefixes = [ip for p in topo.config.peers for ip in p.allowed_ips]
        assert len(prefixes) == len(set(prefixes))


def test_endpoints_are_tried_in_turn_and_a_working_roamed_one_is_kept() -> None:
    fleet = platform_fleet()
    seen = set()
    for t in range(NOW, NOW + 40, 5):
        topo = plan_topology(
            fleet.roster.view(),
            network=NET,
            self_identity=fleet.keys["cloud"].public,
            observations={},
            now=t,
        )
        assert topo.config is not None
        relay = next(p for p in topo.config.peers if p.wg_key == wg("relay").public)
        seen.add(relay.endpoint)
    assert seen == {"192.0.2.2:51820", "198.51.100.2:51820"}
    obs = dict([fresh("relay", "203.0.113.9:4444")])
    _, peers = peers_by_name(fleet, "cloud", obs)
    assert peers["relay"].endpoint == "203.0.113.9:4444"


def test_a_removed_node_configures_nothing() -> None:
    fleet = platform_fleet()
    fleet.roster.remove(fleet.genesis, fleet.keys["cloud"].public, now=5000)
    topo = plan_topology(
        fleet.roster.view(),
        network=NET,
        self_identity=fleet.keys["cloud"].public,
        observations={},
        now=NOW,
    )
    assert topo.config is None
    assert all(p.kind is PathKind.UNREACHABLE for p in topo.paths)


def test_two_natted_members_go_through_the_hub_without_a_peer_entry() -> None:
    fleet = Fleet()
    fleet.admit("hub", roles=("relay",), endpoints=("192.0.2.7:51820",))
    fleet.admit("n1")
    fleet.admit("n2")
    topo, peers = peers_by_name(fleet, "n1")
    assert "n2" not in peers
    assert peers["hub"].allowed_ips[:2] == ("10.8.0.2/32", CIDR)
    assert {p.member.name: p.kind for p in topo.paths}["n2"] is PathKind.VIA_HUB


def test_resolve_and_hosts_fragment() -> None:
    fleet = platform_fleet()
    view = fleet.roster.view()
    found = resolve(view, "cloud")
    assert found is not None and found.address == "10.8.0.3"
    assert found.endpoints == ("198.51.100.3:51820",)
    assert resolve(view, "CLOUD.ppn.") == found
    assert resolve(view, found.node_id.hex()[:8]) == found
    assert resolve(view, "nobody") is None
    fragment = hosts_fragment(view, mesh=fleet.mesh)
    lines = fragment.splitlines()
    assert lines[1:-1] == [
        "10.8.0.1\tgenesis.ppn genesis",
        "10.8.0.2\trelay.ppn relay",
        "10.8.0.3\tcloud.ppn cloud",
    ]
    original = "127.0.0.1 localhost\n::1 localhost\n"
    once = replace_hosts_block(original, fragment, mesh=fleet.mesh)
    assert once.startswith(original)
    fleet.admit("extra", now=1003)
    newer = hosts_fragment(fleet.roster.view(), mesh=fleet.mesh)
    twice = replace_hosts_block(once + "10.0.0.1 other\n", newer, mesh=fleet.mesh)
    assert twice == original + newer + "10.0.0.1 other\n"


def test_endpoints_on_an_attached_network_are_preferred() -> None:
    import ipaddress

    fleet = platform_fleet()
    local = [ipaddress.ip_network("198.51.100.0/24")]
    for t in range(NOW, NOW + 40, 5):
        topo = plan_topology(
            fleet.roster.view(),
            network=NET,
            self_identity=fleet.keys["cloud"].public,
            observations={},
            now=t,
            local_networks=local,
        )
        assert topo.config is not None
        relay = next(p for p in topo.config.peers if p.wg_key == wg("relay").public)
        assert relay.endpoint == "198.51.100.2:51820"


def test_bootstrap_peers_fill_in_what_the_signed_roster_lacks() -> None:
    from ppn.mesh._bootstrap import PreliminaryMember, with_bootstrap_peers
    from ppn.mesh._roster import Roster

    fleet = platform_fleet()
    genesis_record = fleet.roster.get(fleet.genesis.public)
    assert genesis_record is not None
    partial = Roster(mesh=fleet.mesh, network=CIDR, records=[genesis_record])
    prelim = [
        PreliminaryMember(
            name="genesis",
            identity=fleet.genesis.public,
            wg_key=wg("genesis").public,
            address="10.8.0.1",
            endpoints=("192.0.2.1:51820",),
        ),
        PreliminaryMember(
            name="relay",
            identity=fleet.keys["relay"].public,
            wg_key=wg("relay").public,
            address="10.8.0.2",
            endpoints=("192.0.2.2:51820", "198.51.100.2:51820"),
        ),
        PreliminaryMember(
            name="cloud",
            identity=fleet.keys["cloud"].public,
            wg_key=wg("cloud").public,
            address="10.8.0.3",
        ),
    ]
    import ipaddress

    config = with_bootstrap_peers(
        None,
        roster=partial,
        preliminary=prelim,
        self_identity=fleet.keys["cloud"].public,
        fallback_address="10.8.0.3/24",
        fallback_control_address="fd00::3/64",
        now=NOW,
        local_networks=[ipaddress.ip_network("198.51.100.0/24")],
    )
    assert config.address == "10.8.0.3/24"
    # cloud (us) is not on the signed roster yet, so the topology configures nobody: every
    # preliminary member is a bootstrap peer, genesis from its signed record.
    peers = {p.wg_key: p for p in config.peers}
    assert set(peers) == {wg("genesis").public, wg("relay").public}
    relay = peers[wg("relay").public]
    assert relay.allowed_ips == ("10.8.0.2/32", v6(fleet, "relay"))
    assert relay.endpoint == "198.51.100.2:51820"
    assert relay.persistent_keepalive == KEEPALIVE
    assert peers[wg("genesis").public].allowed_ips == ("10.8.0.1/32", v6(fleet, "genesis"))

    # Once we are on the signed roster, signed members are the topology's job: only the
    # unsigned relay is added to the configuration it planned.
    base = DesiredConfig(
        address="10.8.0.3/24", control_address="fd00::3/64", peers=(), forwarding=False
    )
    config = with_bootstrap_peers(
        base,
        roster=partial,
        preliminary=prelim,
        self_identity=fleet.keys["cloud"].public,
        fallback_address="10.8.0.3/24",
        fallback_control_address="fd00::3/64",
        now=NOW,
    )
    assert [p.wg_key for p in config.peers] == [wg("relay").public]
    # Removed: no bootstrap peers at all.
    removed = partial.copy()
    removed.merge([fleet.roster.remove(fleet.genesis, fleet.keys["cloud"].public, now=5000)])
    assert not with_bootstrap_peers(
        None,
        roster=removed,
        preliminary=prelim,
        self_identity=fleet.keys["cloud"].public,
        fallback_address="10.8.0.3/24",
        fallback_control_address="fd00::3/64",
    ).peers


def test_a_member_that_lost_its_address_keeps_its_control_route() -> None:
    fleet = platform_fleet()
    loser = fleet.admit("loser", endpoints=("198.51.100.9:51820",), now=1003, address="10.8.0.3")
    view = fleet.roster.view()
    assert not view.member(loser.identity).routed  # type: ignore[union-attr]
    # On the hub: the loser's control /128, never the contested IPv4 address.
    _, peers = peers_by_name(fleet, "relay")
    assert peers["loser"].allowed_ips == (v6(fleet, "loser"),)
    assert peers["cloud"].allowed_ips == ("10.8.0.3/32", v6(fleet, "cloud"))
    # The loser itself still gets a configuration, so it can pull the roster and move.
    topo, peers = peers_by_name(fleet, "loser")
    assert topo.config is not None and topo.config.address == "10.8.0.3/24"
    assert control_network(fleet.mesh) in peers["relay"].allowed_ips
