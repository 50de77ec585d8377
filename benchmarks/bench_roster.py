"""Roster merge of 1,000 entries (goal: under 50 ms), side by side with its floors.

Peers, measured in the same run:

* merge of 1,000 checked records vs. a plain ``dict.update`` of 1,000 (identity → bytes)
  entries — the cost floor of any map merge in Python;
* the view (chain walk, conflict rules) over 1,000 members;
* ingest of 1,000 records off the wire (decode, canonical check, two Ed25519 verifications
  each) vs. the bare 2,000 PyNaCl verifications it cannot avoid;
* anti-entropy between two 990-record rosters that differ in 20 records, through the sans-IO
  control cores, pulled until the digests agree: both chained (what members hold) converge in
  one pull; when one side holds its 990 records in quarantine (it lacks genesis and the first
  sponsors), that side stores them during the first pull and they go across in the second
  (RFC-NOTES §7.3, §7.6), so it takes two. The rounds are printed with the time.

With root and wireguard-go (``PPN_BENCH_NETNS=1``) it also times the namespace scenario: from the
cloud node's ``Joined`` to it being pingable from genesis (through the hub).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Callable

from nacl.signing import VerifyKey

from ppn import IdentityKey, WireGuardKeyPair, wire
from ppn.mesh._control import ControlConnection, Pull, Role
from ppn.mesh._records import Record, sign_admission, sign_member
from ppn.mesh._roster import Roster

N = 1000
CIDR = "10.8.0.0/22"


def _best(fn: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def build(n: int = N) -> tuple[Roster, list[Record]]:
    genesis = IdentityKey.from_seed(bytes(32))
    roster = Roster.found(
        genesis,
        name="genesis",
        wg_key=WireGuardKeyPair.from_private(bytes(32)).public,
        now=1000,
        network=CIDR,
    )
    records: list[Record] = list(roster.records())
    sponsors = [genesis]
    for i in range(1, n):
        key = IdentityKey.from_seed(i.to_bytes(32, "big"))
        sponsor = sponsors[i % len(sponsors)]
        adm = sign_admission(
            sponsor, mesh=roster.mesh, identity=key.public, name=f"n{i}", admitted_at=1000 + i
        )
        records.append(
            sign_member(
                sponsor,
                admission=adm,
                wg_key=WireGuardKeyPair.from_private(hashlib.sha256(b"wg%d" % i).digest()).public,
                address=f"10.8.{i // 250}.{i % 250 + 2}",
                endpoints=(f"192.0.2.{i % 250 + 1}:51820",),
                roles=(),
                version=1,
            )
        )
        if i < 20:
            sponsors.append(key)
    return roster, records


def _pull(left: Roster, right: Roster) -> None:
    """One pull of ``left`` (client) from ``right`` (server), through the control cores."""
    client, server = (
        ControlConnection(left, role=Role.CLIENT),
        ControlConnection(right, role=Role.SERVER),
    )
    client.send(Pull())
    while True:
        a, b = client.data_to_send(), server.data_to_send()
        if not a and not b:
            return
        if a:
            server.receive_data(a)
        if b:
            client.receive_data(b)


def _pull_until_converged(left: Roster, right: Roster, *, max_rounds: int = 10) -> int:
    """Pull until both digests agree; how many pulls it took. A record one side holds in
    quarantine goes across only in the pull after the one that brought its admitter (§7.6),
    so one pull is not always enough; failing to converge at all is an error."""
    for rounds in range(1, max_rounds + 1):
        _pull(left, right)
        if left.digest() == right.digest():
            return rounds
    raise AssertionError(f"rosters did not converge in {max_rounds} pulls")


def main() -> None:
    roster, records = build()
    mesh, net = roster.mesh, roster.network
    ids = {r.identity: r.encoded for r in records}

    merge_ms = _best(lambda: Roster(mesh=mesh, network=net).merge(records))
    dict_ms = _best(lambda: {}.update(ids))
    full = Roster(mesh=mesh, network=net, records=records)

    def view() -> None:
        full._view = None
        full.view()

    view_ms = _best(view)
    assert len(full.view().members) == N and not full.view().problems

    values = [wire.unpack_canonical(r.encoded) for r in records]
    ingest_ms = _best(lambda: Roster(mesh=mesh, network=net).ingest(values), repeat=3)
    pairs = [(VerifyKey(r.admission.admitter), r.admission.signature) for r in records]
    from ppn.mesh._records import ADMISSION_LABEL

    msgs = [ADMISSION_LABEL + wire.pack_canonical(r.admission.signed_fields()) for r in records]

    def bare_verify() -> None:
        for _ in range(2):
            for (vk, sig), msg in zip(pairs, msgs, strict=True):
                vk.verify(msg, sig)

    verify_ms = _best(bare_verify, repeat=3)

    # Both sides chained (every record's admitter held), as every member's stored roster is:
    # left lacks the last 10 members, right 10 others; none of the 20 admitted anyone.
    left = Roster(mesh=mesh, network=net, records=records[:-10])
    right = Roster(mesh=mesh, network=net, records=records[:20] + records[30:])
    # Right lacks genesis and the first 9 sponsors: it stores nothing and holds 990 records in
    # quarantine until the pull brings their admitters.
    unchained = Roster(mesh=mesh, network=net, records=records[10:])
    assert len(left) == len(right) == N - 10 and not left.quarantined and not right.quarantined
    assert len(unchained) == 0 and unchained.quarantined == N - 10

    def exchange(server: Roster) -> Callable[[], int]:
        def run() -> int:
            return _pull_until_converged(left.copy(), server.copy())

        return run

    chained_rounds = exchange(right)()
    assert chained_rounds == 1, f"two chained rosters took {chained_rounds} pulls (RFC-NOTES §7.6)"
    chained_ms = _best(exchange(right), repeat=5)
    unchained_rounds = exchange(unchained)()
    unchained_ms = _best(exchange(unchained), repeat=5)

    print(f"roster merge of {N} checked records: {merge_ms:8.2f} ms  (goal < 50 ms)")
    print(
        f"  peer: dict.update of {N} entries:  {dict_ms:8.3f} ms  -> merge/dict = {merge_ms / dict_ms:,.0f}x"
    )
    print(f"roster view over {N} members:        {view_ms:8.2f} ms  (chains, conflicts, names)")
    print(f"merge + view:                         {merge_ms + view_ms:8.2f} ms")
    print(f"ingest of {N} records off the wire:   {ingest_ms:8.2f} ms  (decode + 2 verifies each)")
    print(
        f"  peer: {2 * N} bare PyNaCl verifies:   {verify_ms:8.2f} ms  -> ingest/verify = {ingest_ms / verify_ms:.2f}x"
    )
    print(
        f"anti-entropy, 2x{N - 10} chained records, 20 differ (core only): "
        f"{chained_ms:8.2f} ms, converged in {chained_rounds} pull(s)"
    )
    print(
        f"anti-entropy, {N - 10} chained vs {N - 10} quarantined (core only): "
        f"{unchained_ms:8.2f} ms, converged in {unchained_rounds} pull(s)"
    )
    if os.environ.get("PPN_BENCH_NETNS") == "1":
        _join_to_ping()


def _join_to_ping() -> None:
    import tempfile
    from pathlib import Path

    from interop.mesh_platform import form_mesh, stop_agent
    from interop.netns import Lab, netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason:
        print(f"namespace scenario skipped: {reason}")
        return
    runs = []
    for _ in range(3):
        with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
            nodes, timings = form_mesh(lab, Path(tmp))
            runs.append(timings)
            for node in nodes.values():
                stop_agent(node)
    for key in ("joined_to_up", "up_to_pingable", "joined_to_pingable"):
        values = [t[key] for t in runs if key in t]
        if values:
            print(
                f"namespace scenario {key}: median {statistics.median(values):.2f} s over {len(values)} runs {[f'{v:.2f}' for v in values]}"
            )
