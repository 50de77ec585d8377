"""The kernel-WireGuard suite: tests marked ``kernel`` need the real module.

They run where a WireGuard link can be created (root, iproute2, the module loaded or loadable):
inside the VM that ``make test-kernel`` boots (interop/kernel_vm.py), or on a host that has the
module. Elsewhere they skip, unless PPN_REQUIRE_KERNEL=1 (the VM run in CI sets it): then they
fail, so a module that does not load cannot pass as a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from interop.netns import run_suffix

_REQUIRE = os.environ.get("PPN_REQUIRE_KERNEL") == "1"
_reason_cache: dict[str, str | None] = {}


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("wg") is None:
        return "needs iproute2 and wireguard-tools"
    ns = f"ppn-kprobe-{run_suffix()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return "cannot create network namespaces"
    try:
        made = subprocess.run(
            ["ip", "-n", ns, "link", "add", "wgprobe", "type", "wireguard"],
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if made.returncode != 0:
        return (
            "no WireGuard kernel module here (`make test-kernel` boots a kernel that has one): "
            + made.stderr.strip()
        )
    return None


def kernel_unavailable_reason() -> str | None:
    if "r" not in _reason_cache:
        _reason_cache["r"] = _probe()
    return _reason_cache["r"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable_reason()
    if reason is None:
        return
    if _REQUIRE:
        pytest.fail(f"PPN_REQUIRE_KERNEL=1 but the kernel suite cannot run: {reason}")
    pytest.skip(reason)
