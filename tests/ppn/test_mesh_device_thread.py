"""The agent reconciles WireGuard in a worker thread while the event loop merges records."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import pytest
import trio

from ppn.mesh import _roster as _roster
from ppn.mesh._addressing import MeshNetwork
from ppn.mesh._io_wg import DeviceWireGuard
from ppn.mesh._records import Record
from ppn.mesh._view import RosterView, compute_view
from ppn.wg import FakeBackend
from tests.ppn._mesh_support import Fleet, wg


async def test_a_merge_during_a_threaded_reconcile_does_not_break_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = Fleet()
    for name in ("alpha", "bravo", "charlie"):
        fleet.admit(name, endpoints=("192.0.2.9:51820",))
    live = fleet.roster.copy()
    late = fleet.admit("delta")  # merged into the live roster while the thread reads it
    iterating, merged = threading.Event(), threading.Event()
    real_compute_view = compute_view

    def slow_compute_view(records: Iterable[Record], network: MeshNetwork) -> RosterView:
        def walk() -> Iterator[Record]:
            for index, record in enumerate(records):
                if index == 1:  # part way through the roster's own dict: let the loop merge
                    iterating.set()
                    assert merged.wait(5)
                yield record

        return real_compute_view(walk(), network)

    monkeypatch.setattr(_roster, "compute_view", slow_compute_view)
    me = fleet.keys["genesis"].public
    device = DeviceWireGuard(
        interface="ppnfake0",
        backend=FakeBackend(name="ppnfake0"),
        private_key=wg("genesis").private,
        self_identity=me,
        listen_port=51820,
        fallback_address="10.8.0.1/24",
        fallback_control_address="fd00::1",
        preliminary=lambda: [],
        plumb=False,
    )

    async def merge_when_iterating() -> None:
        await trio.to_thread.run_sync(iterating.wait, 5)
        live.merge([late])
        merged.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(merge_when_iterating)
        await device.reconcile(live)
    assert live.get(late.identity) is not None  # the merge went into the live roster
    report = device.last_report
    assert report is not None and report.applied  # the pass finished on what it had read
