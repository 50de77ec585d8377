"""One interface for every WireGuard backend, and the read → plan → apply → verify loop.

A backend reads a :class:`DeviceState` and applies a list of operations; kernel (netlink),
userspace (UAPI socket), config-only (a file) and the in-memory fake all look the same to
:func:`reconcile`, which is what ``ppn wg sync`` and the mesh agent call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._wg_model import (
    DEFAULT_STALE_AFTER,
    DeviceState,
    Endpoint,
    InterfaceConfig,
    VerifyError,
    gc_paused,
)
from ._wg_plan import Operation, Ownership, Plan, check_applied, describe, plan

__all__ = ["Backend", "SyncReport", "reconcile"]


class Backend(Protocol):
    """What every backend offers. ``kind`` is a short name (``kernel``, ``userspace``...)."""

    @property
    def kind(self) -> str: ...

    @property
    def description(self) -> str: ...

    def read(self) -> DeviceState:
        """The device as it is now (private keys already redacted)."""
        ...

    def apply(self, ops: Sequence[Operation]) -> None:
        """Apply ``ops`` in order. May be interrupted half way; re-planning converges."""
        ...


@dataclass(frozen=True, kw_only=True)
class SyncReport:
    """What :func:`reconcile` did."""

    interface: str
    backend: str
    plan: Plan
    applied: bool
    verified: bool


def reconcile(
    backend: Backend,
    desired: InterfaceConfig,
    *,
    now: float,
    owned: Ownership = None,
    previous: Mapping[bytes, Endpoint | None] | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SyncReport:
    """Read the device, plan, apply (unless ``dry_run`` or nothing to do) and read back.

    Read-back (:func:`check_applied`) compares the device's whole peer set and, field by field,
    the interface and every peer that was written; a difference is :class:`VerifyError`.
    ``progress`` is told, in a few words, about each step that may take a while.
    """
    # A pass allocates tens of thousands of small acyclic objects (peer states, operations,
    # texts); the cyclic collector's passes over a large heap would cost as much as the work.
    with gc_paused():
        return _reconcile(
            backend,
            desired,
            now=now,
            owned=owned,
            previous=previous,
            stale_after=stale_after,
            dry_run=dry_run,
            progress=progress,
        )


def _reconcile(
    backend: Backend,
    desired: InterfaceConfig,
    *,
    now: float,
    owned: Ownership,
    previous: Mapping[bytes, Endpoint | None] | None,
    stale_after: float,
    dry_run: bool,
    progress: Callable[[str], None] | None,
) -> SyncReport:
    say = progress or (lambda _text: None)
    current = backend.read()
    the_plan = plan(
        desired, current, now=now, owned=owned, previous=previous, stale_after=stale_after
    )
    if dry_run or not the_plan:
        return SyncReport(
            interface=current.name,
            backend=backend.kind,
            plan=the_plan,
            applied=False,
            verified=not the_plan,
        )
    say(f"applying {len(the_plan)} operation(s) to {current.name}")
    backend.apply(the_plan.operations)
    say(f"reading {current.name} back")
    after = backend.read()
    remaining = check_applied(
        desired, after, the_plan, now=now, owned=owned, stale_after=stale_after
    )
    if remaining:
        first = describe(remaining[0])
        raise VerifyError(
            f"read-back of {current.name} differs from the desired state in "
            f"{len(remaining)} place(s), first: {first}"
        )
    return SyncReport(
        interface=current.name, backend=backend.kind, plan=the_plan, applied=True, verified=True
    )
