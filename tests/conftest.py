"""Shared test configuration.

Tests marked ``netns`` need root, iproute2 and wireguard-go. Where those are missing they skip,
unless PPN_REQUIRE_NETNS=1 (CI sets it), in which case they fail: CI must run them for real.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

from interop.netns import Lab, netns_unavailable_reason

_REQUIRE = os.environ.get("PPN_REQUIRE_NETNS") == "1"

# Hypothesis's deadline (200 ms per example) and its too_slow health check are timing asserts,
# and the suite makes none (ARCHITECTURE §3.9: speed claims live in benchmarks/): on a loaded
# 2-core CI box an example of a correct property took 267 ms and failed the run. A test's own
# @settings still sets its example count; it inherits these two from this profile.
settings.register_profile("ppn", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ppn")
_reason_cache: dict[str, str | None] = {}


def _unavailable() -> str | None:
    if "r" not in _reason_cache:
        _reason_cache["r"] = netns_unavailable_reason(need_wireguard=True)
    return _reason_cache["r"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is None:
        return
    reason = _unavailable()
    if reason is None:
        return
    if _REQUIRE:
        pytest.fail(f"PPN_REQUIRE_NETNS=1 but namespace tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh set of network namespaces, removed after the test (use with @pytest.mark.netns)."""
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def autojump_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """pytest-trio's ``autojump_clock``, except that virtual time stands still while a worker
    thread runs (``trio.to_thread.run_sync``).

    The plain autojump clock jumps to the next deadline whenever no task is runnable, and a task
    waiting for a thread is not runnable: a vault query moved to a worker (psp/_trio.py), a
    roster check off the loop (ppn/mesh/_trio.py) or a DNS lookup then "took" as long as the next
    deadline — under load, often enough to time out a vault that was merely computing. Work on
    the loop already costs no virtual time; this makes work on a thread cost none either. The
    threads are real; only the clock waits for them."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    original = trio.to_thread.run_sync
    busy = 0

    async def run_sync(*args: Any, **kwargs: Any) -> Any:
        nonlocal busy
        busy += 1
        clock.autojump_threshold = math.inf
        try:
            return await original(*args, **kwargs)
        finally:
            busy -= 1
            if busy == 0:
                clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    return clock
