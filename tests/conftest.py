"""Shared test configuration.

Tests marked ``netns`` need root, iproute2 and wireguard-go. Where those are missing they skip,
unless PPN_REQUIRE_NETNS=1 (CI sets it), in which case they fail: CI must run them for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from interop.netns import Lab, netns_unavailable_reason

_REQUIRE = os.environ.get("PPN_REQUIRE_NETNS") == "1"
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
